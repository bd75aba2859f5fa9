"""The dashboard over a real run store: its JSON API, auth, the live feed, and the pages in headless Chromium.

The store is a real SQLite + Parquet run store written through `RunStore` the way the round loop writes
it (tests/dashboard_helpers.py); the server is the real uvicorn app; the browser is Debian's Chromium.
The dashboard as the controller serves it, during a real run, is tested in test_controller_service.py.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, expect
from prometheus_client import CollectorRegistry

from mpo.config import ControllerConfig, DashboardConfig
from mpo.net import free_port
from mpo.services.controller.metrics import RoundGauges
from mpo.services.controller.retry import ServiceClients
from mpo.services.controller.runs import RunManager
from mpo.services.controller.store import RunStore
from mpo.services.dashboard import views
from mpo.services.dashboard.server import DashboardServer, start_dashboard
from mpo.services.dashboard.sources import ControllerSource, StoreSource, UnknownRun
from mpo.serving.clients import RewardClient, RolloutClient, TrainerClient
from mpo.v1 import controller_pb2
from tests.browser_helpers import chromium, screenshot
from tests.dashboard_helpers import png, record_round, start_run

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-dashboard-token"


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """Three runs: finished (3 rounds, evaluated in rounds 1 and 3), failed (1 round), running (2 rounds)."""
    store = RunStore(tmp_path / "store")
    start_run(store, "finished-run")
    for index in (1, 2, 3):
        record_round(store, "finished-run", index, evaluate=index != 2)
    run = store.get_run("finished-run")
    assert run is not None
    run.state, run.best_eval_accuracy, run.best_round = controller_pb2.RUN_STATE_COMPLETED, 0.405, 3
    store.put_run(run)
    start_run(store, "failed-run")
    record_round(store, "failed-run", 1)
    failed = store.get_run("failed-run")
    assert failed is not None
    failed.state, failed.error = controller_pb2.RUN_STATE_FAILED, "trainer: CUDA out of memory in round 2"
    store.put_run(failed)
    start_run(store, "live-run")
    for index in (1, 2):
        record_round(store, "live-run", index)
    return store.root


@pytest_asyncio.fixture
async def dashboard(store_dir: Path) -> AsyncIterator[DashboardServer]:
    server = await start_dashboard(StoreSource(store_dir), DashboardConfig(port=0))
    yield server
    await server.stop()


@pytest_asyncio.fixture
async def api(dashboard: DashboardServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=10) as client:
        yield client


# --- JSON API -------------------------------------------------------------------------------------------------


async def test_runs_and_rounds_endpoints_return_the_stored_records(api: httpx.AsyncClient) -> None:
    runs = {run["run_id"]: run for run in (await api.get("/api/runs")).json()["runs"]}
    assert set(runs) == {"finished-run", "failed-run", "live-run"}
    assert runs["finished-run"]["state"] == "completed" and runs["finished-run"]["current_round"] == 3
    assert runs["failed-run"]["error"] == "trainer: CUDA out of memory in round 2"
    assert runs["live-run"]["active"] is True and runs["finished-run"]["active"] is False

    detail = (await api.get("/api/runs/finished-run")).json()
    assert detail["run"]["best_round"] == 3 and detail["config_yaml"] == "rounds: {}\n"

    rounds = (await api.get("/api/runs/finished-run/rounds")).json()["rounds"]
    assert [row["round"] for row in rounds] == [1, 2, 3]
    assert rounds[0]["eval_accuracy.arith"] == pytest.approx(0.26) and "eval_accuracy.arith" not in rounds[1]
    assert rounds[0]["eval_degenerate.arith"] == pytest.approx(0.18) and "eval_degenerate.arith" not in rounds[1]
    assert rounds[0]["eval_hallucination.describe.rate"] == pytest.approx(0.35)
    assert rounds[0]["eval_hallucination.describe.descriptions"] == 12
    assert "eval_hallucination.describe.rate" not in rounds[1]
    assert detail["run"]["base_eval_hallucination.describe.recall"] == pytest.approx(0.5)
    assert rounds[2]["train.loss"] == pytest.approx(0.75) and rounds[2]["pairs"] == 3
    later = (await api.get("/api/runs/finished-run/rounds", params={"from_round": 2})).json()["rounds"]
    assert [row["round"] for row in later] == [2, 3]


async def test_rounds_csv_has_every_round_and_column(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/runs/finished-run/rounds.csv")
    assert response.headers["content-type"].startswith("text/csv")
    assert "finished-run-rounds.csv" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["round"] for row in rows] == ["1", "2", "3"]
    assert rows[1]["eval_accuracy.arith"] == "" and float(rows[2]["eval_accuracy.arith"]) == pytest.approx(0.28)
    assert {"timings.generate", "labels.pairs_dropout_ntp", "train.reward_shift", "staleness_max"} <= set(rows[0])
    assert float(rows[2]["eval_hallucination.describe.recall"]) == pytest.approx(0.65)


async def test_pairs_filter_page_and_serve_their_images(api: httpx.AsyncClient) -> None:
    everything = (await api.get("/api/runs/finished-run/pairs", params={"limit": 200})).json()
    assert everything["total"] == 9 and everything["rounds"] == [1, 2, 3]
    round_two = (await api.get("/api/runs/finished-run/pairs", params={"round": 2})).json()
    assert {pair["round"] for pair in round_two["pairs"]} == {2} and round_two["total"] == 3
    dropout = (await api.get("/api/runs/finished-run/pairs", params={"source": "PAIR_SOURCE_DROPOUT_NTP"})).json()
    assert dropout["total"] == 3 and all(pair["images"] == 1 for pair in dropout["pairs"])
    arith = (await api.get("/api/runs/finished-run/pairs", params={"task": "arith", "offset": 4, "limit": 5})).json()
    assert arith["total"] == 6 and len(arith["pairs"]) == 2
    pair = round_two["pairs"][0]
    assert pair["question"] == "What is 2 + 0?" and pair["ground_truth"] == "2" and pair["verifier"] == "numeric"
    assert pair["chosen_answer"] == "2" and pair["rejected_answer"] == "99"

    image = await api.get(f"/api/runs/finished-run/pairs/{dropout['pairs'][0]['id']}/images/0")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == png((200, 0, 0))


async def test_a_page_of_pairs_reads_texts_and_images_only_from_its_own_shards(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real Parquet reader, watched: which columns each request reads from which round's shard."""
    reads: list[tuple[str, frozenset[str]]] = []
    real_read_table = views.pq.read_table

    def watched(source: Path, *, columns: list[str], **kwargs: object) -> object:
        reads.append((Path(source).name, frozenset(columns)))
        return real_read_table(source, columns=columns, **kwargs)

    monkeypatch.setattr(views.pq, "read_table", watched)
    first = (await api.get("/api/runs/finished-run/pairs", params={"limit": 2})).json()
    assert first["total"] == 9 and [pair["round"] for pair in first["pairs"]] == [1, 1]
    heavy = {name for name, columns in reads if "images" in columns}
    assert heavy == {"round-000001.parquet"}, "the page lies in round 1: no other shard's images are read"
    assert {name for name, _ in reads} == {f"round-00000{i}.parquet" for i in (1, 2, 3)}, "all are counted"
    reads.clear()
    across = (await api.get("/api/runs/finished-run/pairs", params={"offset": 2, "limit": 2})).json()
    assert [pair["round"] for pair in across["pairs"]] == [1, 2]
    assert {name for name, columns in reads if "images" in columns} == {"round-000001.parquet", "round-000002.parquet"}
    everything = (await api.get("/api/runs/finished-run/pairs", params={"limit": 200})).json()["pairs"]
    assert [pair["id"] for pair in everything[2:4]] == [pair["id"] for pair in across["pairs"]], "same order"


@pytest.mark.parametrize(
    ("path", "params", "status", "names"),
    [
        ("/api/runs/no-such-run", {}, 404, "run_id"),
        ("/api/runs/no-such-run/rounds", {}, 404, "run_id"),
        ("/api/runs/no-such-run/pairs", {}, 404, "run_id"),
        ("/api/runs/no-such-run/events", {}, 404, "run_id"),
        ("/api/runs/finished-run/rounds", {"from_round": -1}, 400, "from_round"),
        ("/api/runs/finished-run/rounds", {"from_round": "three"}, 400, "from_round"),
        ("/api/runs/finished-run/pairs", {"source": "PAIR_SOURCE_MAGIC"}, 400, "source"),
        ("/api/runs/finished-run/pairs", {"limit": 0}, 400, "limit"),
        ("/api/runs/finished-run/pairs", {"round": 0}, 400, "round"),
        ("/api/runs/finished-run/pairs/finished-run-r1-c0/images/0", {}, 404, "pair_id"),
        ("/api/runs/finished-run/pairs/no-such-pair/images/0", {}, 404, "pair_id"),
    ],
)
async def test_bad_parameters_get_an_error_naming_them(
    api: httpx.AsyncClient, path: str, params: dict[str, object], status: int, names: str
) -> None:
    response = await api.get(path, params=params)
    assert response.status_code == status
    assert response.json()["error"].startswith(names) or f"{names}:" in response.json()["error"]


async def test_event_stream_follows_an_active_run_and_ends_with_it(store_dir: Path, api: httpx.AsyncClient) -> None:
    events: list[tuple[str, dict[str, object]]] = []

    async def listen() -> None:
        async with api.stream("GET", "/api/runs/live-run/events", params={"from_round": 2}) as response:
            name = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((name, json.loads(line.removeprefix("data: "))))

    listener = asyncio.create_task(listen())
    store = RunStore(store_dir)
    while not any(name == "round" for name, _ in events):
        await asyncio.sleep(0.1)
    record_round(store, "live-run", 3)  # the controller stores a new round...
    while sum(name == "round" for name, _ in events) < 2:
        await asyncio.sleep(0.1)
    run = store.get_run("live-run")
    assert run is not None
    run.state = controller_pb2.RUN_STATE_COMPLETED  # ...and then finishes the run: the stream ends
    store.put_run(run)
    await asyncio.wait_for(listener, timeout=15)
    assert [row["round"] for name, row in events if name == "round"] == [2, 3]
    assert events[-1][0] == "end" and events[-1][1]["state"] == "completed"


async def test_token_is_required_as_bearer_or_basic_password(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPO_USER_TOKEN", TOKEN)
    server = await start_dashboard(StoreSource(store_dir), DashboardConfig(port=0))
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            refused = await client.get("/api/runs")
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
            assert (await client.get("/", headers={"Authorization": "Bearer wrong"})).status_code == 401
            assert (await client.get("/api/runs", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200
            assert (await client.get("/api/runs", auth=("anyone", TOKEN))).status_code == 200
            assert (await client.get("/api/runs", auth=("anyone", "nope"))).status_code == 401
            garbled = {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe").decode()}
            assert (await client.get("/api/runs", headers=garbled)).status_code == 401
            assert (await client.get("/healthz")).text == "ok"  # probes need no token
    finally:
        await server.stop()


async def test_without_a_token_the_dashboard_serves_only_loopback(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MPO_USER_TOKEN", raising=False)
    with pytest.raises(ValueError, match="is not a loopback address"):
        await start_dashboard(StoreSource(store_dir), DashboardConfig(host="0.0.0.0", port=0))
    server = await start_dashboard(StoreSource(store_dir), DashboardConfig(host="0.0.0.0", port=0, open=True))
    try:  # explicitly open: anyone who reaches the port reads the runs
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (await client.get("/api/runs")).status_code == 200
    finally:
        await server.stop()


async def test_pages_include_the_vendored_chart_library_from_npm() -> None:
    """The uPlot copy the package serves is the one package-lock.json pins (node_modules from `npm ci`)."""
    vendored = ROOT / "services" / "dashboard" / "static" / "vendor"
    installed = ROOT / "node_modules" / "uplot"
    assert installed.is_dir(), "node_modules/uplot missing: run `npm ci` (deploy/install.sh does, with dev)"
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert (
        lock["packages"]["node_modules/uplot"]["version"]
        == json.loads((installed / "package.json").read_text())["version"]
    )
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        assert (vendored / name).read_bytes() == (installed / "dist" / name).read_bytes(), name


async def test_controller_source_reports_unreachable_services_and_unknown_runs(store_dir: Path) -> None:
    """The controller's own source, over its RunManager, with services that do not answer (a closed port)."""
    closed = f"127.0.0.1:{free_port()}"
    clients = ServiceClients(RolloutClient(closed), RewardClient(closed), TrainerClient(closed))
    runs = RunManager(RunStore(store_dir), clients, ControllerConfig(), RoundGauges(CollectorRegistry()))
    source = ControllerSource(runs, clients)
    try:
        services = await source.services()
        assert services is not None and [row["service"] for row in services] == ["rollout", "reward", "trainer"]
        assert all(row["health"] == "unreachable" and row["error"].startswith("UNAVAILABLE") for row in services)
        assert [run.run_id for run in source.runs()] == [run.run_id for run in runs.list()]
        with pytest.raises(UnknownRun):
            source.run("no-such-run")
        with pytest.raises(UnknownRun):
            source.watch("no-such-run", 0)
        # A finished run's watch yields its stored rounds and ends (no run is active on this controller).
        assert [record.round async for record in source.watch("finished-run", 2)] == [2, 3]
    finally:
        for client in (clients.rollout, clients.reward, clients.trainer):
            await client.close()


# --- pages in a real browser ---------------------------------------------------------------------------------


async def open_page(url: str, **context: object) -> AsyncIterator[Page]:
    async with chromium() as browser:
        page = await (await browser.new_context(viewport={"width": 1400, "height": 1000}, **context)).new_page()
        yield page


async def test_runs_page_lists_runs_and_run_page_draws_charts_and_table(dashboard: DashboardServer) -> None:
    async for page in open_page(dashboard.url):
        await page.goto(dashboard.url)
        runs = page.locator("#runs tbody tr")
        await expect(runs).to_have_count(3)
        await expect(page.locator('tr[data-run="failed-run"] .state')).to_have_text("failed")
        await screenshot(page, "runs")

        await page.click("text=finished-run")
        await expect(page.locator("#rounds tbody tr")).to_have_count(3)
        points = await page.evaluate(
            "() => Object.fromEntries(Object.entries(window.mpoDashboard.charts).map(([name, chart]) => "
            "[name, chart.data.slice(1).map((series) => series.filter((v) => v !== null).length)]))"
        )
        assert points["accuracy"] == [3, 3]  # arith and shapes: the base (round 0), rounds 1 and 3
        assert await page.evaluate("() => window.mpoDashboard.charts.accuracy.data[0]") == [0, 1, 2, 3]
        # Degenerate answers: the same rounds, round 0 from the run's base_eval_degenerate.
        assert points["degenerate"] == [3, 3]
        degenerate = await page.evaluate("() => window.mpoDashboard.charts.degenerate.data")
        assert degenerate[0] == [0, 1, 2, 3] and degenerate[1][0] == pytest.approx(0.2)  # arith's base share
        # Hallucination: rate, mentions and recall of describe, round 0 from base_eval_hallucination.
        assert points["hallucination"] == [3, 3, 3]
        hallucination = await page.evaluate("() => window.mpoDashboard.charts.hallucination.data")
        assert await page.evaluate("() => window.mpoDashboard.charts.hallucination.mpoKeys") == [
            "eval_hallucination.describe.mentions",
            "eval_hallucination.describe.rate",
            "eval_hallucination.describe.recall",
        ]
        assert hallucination[0] == [0, 1, 2, 3] and hallucination[2][:2] == pytest.approx([0.4, 0.35])  # the rates
        assert points["loss"] == [3, 3, 3, 3] and points["timings"] == [3] * 7
        assert set(points) == {
            "accuracy",
            "degenerate",
            "hallucination",
            "loss",
            "shift",
            "reward",
            "pairs",
            "prompts",
            "staleness",
            "timings",
            "tokens",
        }
        await expect(page.locator("#run-facts")).to_contain_text("40.5% (round 3)")
        await screenshot(page, "run")

        async with page.expect_download() as download:
            await page.click("#csv")
        csv_rows = list(csv.DictReader(io.StringIO(Path(await (await download.value).path()).read_text())))
        assert len(csv_rows) == 3

        await page.goto(dashboard.url + "#/runs/failed-run")
        await expect(page.locator("#run-error")).to_contain_text("CUDA out of memory in round 2")
        await page.goto(dashboard.url + "#/runs/no-such-run")
        await expect(page.locator("#load-error")).to_contain_text("no run 'no-such-run'")


async def test_pair_browser_shows_images_and_filters(dashboard: DashboardServer) -> None:
    async for page in open_page(dashboard.url):
        await page.goto(dashboard.url + "#/runs/finished-run/pairs")
        await expect(page.locator(".pair")).to_have_count(9)
        await page.select_option("select[name=source]", "PAIR_SOURCE_DROPOUT_NTP")
        await expect(page.locator(".pair")).to_have_count(3)
        image = page.locator(".pair img").first
        await expect(image).to_be_visible()
        assert await image.evaluate("(img) => img.complete && img.naturalWidth") == 16
        await expect(page.locator(".pair .side.rejected").first).to_contain_text("The shape is blue")
        await page.select_option("select[name=round]", "2")
        await expect(page.locator(".pair")).to_have_count(1)
        await expect(page.locator("#pair-count")).to_have_text("1–1 of 1")
        await screenshot(page, "pairs")
        await page.goto(dashboard.url + "#/runs/finished-run/pairs?round=1&source=PAIR_SOURCE_CORRECTNESS")
        await expect(page.locator(".pair")).to_have_count(2)
        await expect(page.locator(".pair .side.chosen h4").first).to_contain_text("answer 1 ✓")


async def test_new_round_appears_without_reload_and_lost_server_is_shown(
    store_dir: Path, dashboard: DashboardServer
) -> None:
    async for page in open_page(dashboard.url):
        await page.goto(dashboard.url + "#/runs/live-run")
        await expect(page.locator("#rounds tbody tr")).to_have_count(2)
        await page.evaluate("() => { window.notReloaded = true; }")
        record_round(RunStore(store_dir), "live-run", 3)
        await expect(page.locator('#rounds tbody tr[data-round="3"]')).to_have_count(1, timeout=15_000)
        assert await page.evaluate("() => window.notReloaded === true")
        assert await page.evaluate("() => window.mpoDashboard.charts.loss.data[0].length") == 3
        await expect(page.locator("#run-facts")).to_contain_text("round3")

        await dashboard.stop()  # the server goes away under the open page
        await expect(page.locator("#banner")).to_contain_text("Lost the connection", timeout=15_000)


async def test_empty_store_services_panel_and_auth_in_the_browser(
    tmp_path: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    RunStore(tmp_path / "empty")
    empty = await start_dashboard(StoreSource(tmp_path / "empty"), DashboardConfig(port=0))
    monkeypatch.setenv("MPO_USER_TOKEN", TOKEN)
    guarded = await start_dashboard(StoreSource(store_dir), DashboardConfig(port=0))
    try:
        async for page in open_page(empty.url):
            await page.goto(empty.url)
            await expect(page.locator(".empty")).to_contain_text("No runs yet")
            await page.goto(empty.url + "#/services")
            await expect(page.locator(".empty")).to_contain_text("reads a run store only")
        async for page in open_page(guarded.url, http_credentials={"username": "me", "password": "wrong"}):
            response = await page.goto(guarded.url)
            assert response is not None and response.status == 401
            assert "invalid credentials" in await page.content()
        async for page in open_page(guarded.url):
            # Headless Chromium cannot ask the user: a basic-auth challenge without credentials fails the page.
            with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
                await page.goto(guarded.url)
        async for page in open_page(guarded.url, http_credentials={"username": "me", "password": TOKEN}):
            await page.goto(guarded.url + "#/runs/finished-run")
            await expect(page.locator("#rounds tbody tr")).to_have_count(3)
    finally:
        await empty.stop()
        await guarded.stop()


# --- `mpo dashboard` -------------------------------------------------------------------------------------------


def test_mpo_dashboard_serves_a_store_until_sigterm(store_dir: Path, tmp_path: Path) -> None:
    mpo = [sys.executable, "-m", "mpo.cli"]
    missing = subprocess.run([*mpo, "dashboard", "--store-dir", str(tmp_path / "nothing")], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 2 and "--store-dir: no run store" in missing.stderr
    bad_port = subprocess.run([*mpo, "dashboard", "--store-dir", str(store_dir), "--port", "70000"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad_port.returncode == 2 and "port" in bad_port.stderr

    process = subprocess.Popen([*mpo, "dashboard", "--store-dir", str(store_dir), "--port", "0"],
                               stdout=subprocess.PIPE, text=True, env={**os.environ})  # fmt: skip
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert ready["event"] == "serving" and ready["service"] == "dashboard"
        runs = httpx.get(ready["url"] + "api/runs", timeout=10).json()["runs"]
        assert len(runs) == 3
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()


def test_the_pair_browser_reads_text_shards_with_string_content(tmp_path: Path) -> None:
    """Text-only rounds are stored with TRL's string content, shards with images with content parts: the
    pair browser shows the texts of both."""
    from tests.test_run_store import pairs_of

    store = RunStore(tmp_path / "store")
    start_run(store, "text-run")
    text_shard = store.commit_pairs("text-run", 1, pairs_of(1, 2)).shard
    image_shard = store.commit_pairs("text-run", 2, pairs_of(2, 1, with_image=True)).shard
    rows, total = views.pair_page([text_shard, image_shard])
    assert total == 3 and [row["images"] for row in rows] == [0, 0, 1]
    assert [row["chosen"] for row in rows] == [
        "0 + 1 = 1. Final answer: 1",
        "1 + 1 = 2. Final answer: 2",
        "0 + 1 = 1. Final answer: 1",
    ]
