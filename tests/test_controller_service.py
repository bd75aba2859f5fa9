"""ControllerService over gRPC, in its Ray actor, over the real services (vLLM rollout, reward workers,
2 DeepSpeed ranks): bad requests, an async run paused, resumed and its controller killed with SIGKILL
mid-train, metrics on Prometheus and in TensorBoard files, and the dashboard it serves, watched live
in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import datasets
import grpc
import httpx
import pyarrow.parquet as pq
import pytest
import pytest_asyncio
import ray
import yaml
from playwright.async_api import expect
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mpo import failpoints
from mpo.config import ControllerConfig, ServerConfig
from mpo.data.loader import write_prompts_jsonl
from mpo.embedded import follow_rounds
from mpo.services.controller.service import RunningController, start_controller
from mpo.services.controller.store import RunStore
from mpo.serving.clients import ControllerClient, TrainerClient
from mpo.trainer.checkpoints import read_checkpoint
from mpo.v1 import controller_pb2
from tests.browser_helpers import chromium, screenshot
from tests.controller_helpers import RoundServices, start_round_services, sums
from tests.wandb_helpers import wandb_history

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

GLOBAL_BATCH = 16
TOKEN = "cluster-token"


class Services:
    def __init__(self, root: Path, controller: RunningController, running: RoundServices) -> None:
        self.root, self.controller, self.trainer = root, controller, running.trainer
        self.addresses = {"rollout": running.rollout.address, "reward": running.reward.address}
        self.trainer_address = running.trainer.address
        self.store = RunStore(controller.store_dir)
        self.failpoints = root / "failpoints"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def services(sums_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Services]:
    root = tmp_path_factory.mktemp("controller")
    # Ray's processes (the controller actor among them) inherit this: the failpoints file of the tests.
    os.environ[failpoints.ENV] = str(root / "failpoints")
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")  # W&B without an account or network
    # Cluster mode's one token: every server requires it, and every service presents it to the others.
    os.environ["MPO_CONTROL_TOKEN"] = TOKEN
    ray.init(num_cpus=8, include_dashboard=False, namespace="mpo-controller-tests", log_to_driver=False)
    running = await start_round_services(sums_policy, root, global_batch_pairs=GLOBAL_BATCH)
    rollout, reward, trainer = running.rollout, running.reward, running.trainer
    controller = await start_controller(
        ControllerConfig(server=ServerConfig(metrics_port=0), wandb_project="onlinempo-tests", data_roots=[root]),
        root / "store",
        rollout=rollout.address,
        reward=reward.address,
        trainer=trainer.address,
    )
    write_prompts_jsonl(sums(40, 100), root / "train.jsonl")
    write_prompts_jsonl(sums(12, 900), root / "heldout.jsonl")
    yield Services(root, controller, running)
    await controller.stop()
    await running.stop()
    ray.shutdown()
    for name in (failpoints.ENV, "WANDB_MODE", "WANDB_SILENT", "MPO_CONTROL_TOKEN"):
        del os.environ[name]


@pytest_asyncio.fixture(loop_scope="module")
async def client(services: Services) -> AsyncIterator[ControllerClient]:
    async with ControllerClient(services.controller.address, token=TOKEN, timeout=120) as controller:
        yield controller


def run_yaml(services: Services, **rounds: object) -> str:
    config = {
        "data": {"train": str(services.root / "train.jsonl"), "heldout": str(services.root / "heldout.jsonl")},
        "rounds": {"prompts_per_round": 8, "samples_per_prompt": 4, "max_tokens": 24, "eval_prompts": 12} | rounds,
    }
    return yaml.safe_dump(config)


async def trainer_step(services: Services) -> int:
    async with TrainerClient(services.trainer_address, token=TOKEN) as trainer:
        return (await trainer.status()).step


PHASES = ["generate", "label", "commit", "train", "publish", "eval", "record"]


async def wait_for_phase(client: ControllerClient, run_id: str, round_index: int, phase: str) -> None:
    """Until round `round_index` is at `phase` or beyond ("done": until it is stored), across restarts."""
    for _ in range(6000):
        try:
            run = await client.get_run(run_id)
        except grpc.aio.AioRpcError as error:  # the controller restarting after a kill
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            await asyncio.sleep(0.5)
            continue
        if run.current_round >= round_index or run.phase_round > round_index:
            return
        if phase != "done" and run.phase_round == round_index and PHASES.index(run.phase) >= PHASES.index(phase):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"run {run_id} never reached {phase} of round {round_index}")


async def test_bad_requests_get_precise_errors_and_change_nothing(services: Services, client: ControllerClient) -> None:
    async def code_and_detail(call: object) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call  # type: ignore[misc]
        return caught.value.code(), caught.value.details() or ""

    async with ControllerClient(services.controller.address, timeout=30) as anonymous:
        code, detail = await code_and_detail(anonymous.list_runs())
    assert code == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in detail
    code, detail = await code_and_detail(client.start_run("rounds: [unclosed"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and detail.startswith("config_yaml: not valid YAML")
    code, detail = await code_and_detail(client.start_run(run_yaml(services, samples_per_prompt=0, mode="fast")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "rounds.samples_per_prompt" in detail and "rounds.mode" in detail
    code, detail = await code_and_detail(client.start_run("rounds: {rounds: 1}\n"))
    assert (code, detail) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "config_yaml: data: required (data.train and data.heldout prompt files)",
    )
    missing = run_yaml(services).replace("train.jsonl", "absent.jsonl")
    code, detail = await code_and_detail(client.start_run(missing))
    assert (
        code == grpc.StatusCode.INVALID_ARGUMENT
        and detail.startswith("config_yaml: data:")
        and "absent.jsonl" in detail
    )
    bad_rows = services.root / "bad-rows.jsonl"
    bad_rows.write_text((services.root / "train.jsonl").read_text() + '{"id": "x", "question": ""}\n')
    code, detail = await code_and_detail(client.start_run(run_yaml(services).replace("train.jsonl", "bad-rows.jsonl")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "bad-rows.jsonl:41: question: must not be empty" in detail
    code, detail = await code_and_detail(client.get_run("nope"))
    assert code == grpc.StatusCode.NOT_FOUND and detail.startswith("run_id: no run 'nope'")
    code, detail = await code_and_detail(client.pause_run(""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and detail.startswith("run_id")
    assert await client.list_runs() == [], "no bad request created a run"


async def test_async_run_paused_resumed_and_its_controller_killed_mid_train(
    services: Services, client: ControllerClient
) -> None:
    steps_before = await trainer_step(services)
    run = await client.start_run(run_yaml(services, rounds=3, mode="async", max_staleness=1), run_id="async")
    assert run.state == controller_pb2.RUN_STATE_RUNNING and run.run_id == "async"
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # one run at a time per set of services
        await client.start_run(run_yaml(services), run_id="other")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "'async' is active" in caught.value.details()

    # Pause while round 1 trains: in async mode round 2 (already allowed) may still be produced, but
    # round 3 may not start until the run resumes.
    await wait_for_phase(client, "async", 1, "train")
    assert (await client.pause_run("async")).state == controller_pb2.RUN_STATE_PAUSED
    await wait_for_phase(client, "async", 2, "done")
    await asyncio.sleep(3.0)
    assert services.store.last_committed_round("async") == 2, "a paused run starts no round"
    assert (await client.get_run("async")).state == controller_pb2.RUN_STATE_PAUSED
    assert (await client.resume_run("async")).state == controller_pb2.RUN_STATE_RUNNING

    # SIGKILL the controller's process while round 3 trains; Ray restarts the actor, which continues the
    # run from the store. The watcher reconnects and sees every round exactly once.
    await wait_for_phase(client, "async", 3, "train")
    os.kill(await services.controller.pid(), signal.SIGKILL)
    records = [r async for r in follow_rounds(client, "async", from_round=1)]
    # The restarted actor serves the dashboard again on the same port.
    async with httpx.AsyncClient(base_url=services.controller.dashboard_url or "", timeout=30) as dashboard:
        shown = (await dashboard.get("/api/runs/async/rounds")).json()["rounds"]
    assert [row["round"] for row in shown] == [1, 2, 3]

    run = await client.get_run("async")
    assert run.state == controller_pb2.RUN_STATE_COMPLETED and run.current_round == 3
    assert [r.round for r in records] == [1, 2, 3]
    pairs = [len(services.store.committed_pairs("async", r.round)) for r in records]
    assert sum(pairs) > 0 and services.store.pair_count("async") == sum(pairs)
    shards = [services.store.shard_path("async", r.round) for r in records]
    assert [pq.read_metadata(s).num_rows for s in shards] == pairs  # a round may have no pairs
    assert len(datasets.load_dataset("parquet", data_files=[str(s) for s in shards], split="train")) == sum(pairs)

    # Exactly once: the trainer took exactly the steps the committed pairs need, though round 3 was
    # interrupted mid-Train and sent again.
    async with TrainerClient(services.trainer_address, token=TOKEN) as trainer:
        status = await trainer.status()
    assert status.step == steps_before + sum(math.ceil(n / GLOBAL_BATCH) for n in pairs)
    assert status.policy_version == run.policy_version == records[-1].trained_policy_version

    # Staleness: per pair and per round within the bound; round 2 was sampled while round 1 trained.
    staleness = services.store.pair_staleness("async")
    assert len(staleness) == sum(pairs) and set(staleness.values()) <= {0, 1}
    assert all(r.staleness_max <= 1 for r in records)
    assert records[0].staleness_max == 0 and records[1].rollout_policy_version == 0

    # The best evaluated round's checkpoint is marked best on the trainer and named by the run.
    best = read_checkpoint(Path(run.best_checkpoint))
    assert best.meta["round"] == run.best_round and best.meta["tag"] == f"round-{run.best_round}"
    best_round = max(records, key=lambda r: r.eval_accuracy["arith"])
    assert run.best_eval_accuracy == pytest.approx(best_round.eval_accuracy["arith"])

    # The same figures on the Prometheus endpoint and in the run's TensorBoard files.
    metrics_port = services.controller.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert 'mpo_run_round{run_id="async"} 3.0' in text
    share = records[-1].eval_degenerate["arith"]
    assert f'mpo_eval_degenerate_share{{run_id="async",task="arith"}} {share!r}' in text
    events = EventAccumulator(str(services.store.root / "runs" / "async" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("eval/arith")] == pytest.approx([r.eval_accuracy["arith"] for r in records])
    assert [e.value for e in events.Scalars("eval_degenerate/arith")] == pytest.approx(
        [r.eval_degenerate["arith"] for r in records]
    )
    # ... and in its W&B run (offline: the client's transaction log), the last logged row of each round.
    logged = {row["_step"]: row for row in wandb_history(services.store.root / "runs" / "async" / "wandb", "async")}
    assert sorted(logged) == [1, 2, 3]
    assert [logged[r.round]["eval/arith"] for r in records] == pytest.approx(
        [r.eval_accuracy["arith"] for r in records]
    )
    assert [logged[r.round]["train/loss"] for r in records] == pytest.approx([r.train.loss for r in records])


async def test_controller_killed_after_rollout_after_commit_after_publish_and_mid_train(
    services: Services, client: ControllerClient
) -> None:
    """SIGKILL of the controller at each point of a sync round (failpoints: exactly there), and once more
    while a Train call is in flight; every restart continues the run from the store."""
    steps_before = await trainer_step(services)
    services.failpoints.write_text("controller.after_rollout\ncontroller.after_commit\ncontroller.after_publish\n")
    # A spy on the (in-process) trainer host: round 3's first Train call is held until the controller
    # that sent it is dead, so the kill lands while that call is in flight (then it trains, shielded).
    host = services.trainer.service.host
    training_round_3, controller_dead = asyncio.Event(), asyncio.Event()
    round_3_calls: list[int] = []
    real_train = host.train

    async def train_and_tell(pairs: object, round_index: int, epochs: int, prompts: object = ()) -> object:
        if round_index == 3:
            round_3_calls.append(round_index)
            training_round_3.set()
            if len(round_3_calls) == 1:
                await controller_dead.wait()
        return await real_train(pairs, round_index, epochs, prompts)  # type: ignore[arg-type]

    host.train = train_and_tell  # type: ignore[method-assign]
    try:  # restored however this ends, or every later test in the module would train through the spy
        await client.start_run(run_yaml(services, rounds=4), run_id="crashes")
        await wait_for_phase(client, "crashes", 2, "done")  # round 1 got through all three failpoints
        assert services.failpoints.read_text() == "", "every armed failpoint fired"
        await asyncio.wait_for(training_round_3.wait(), timeout=600)
        os.kill(await services.controller.pid(), signal.SIGKILL)
        controller_dead.set()
        records = [r async for r in follow_rounds(client, "crashes", from_round=1)]
    finally:
        host.train = real_train  # type: ignore[method-assign]
    run = await client.get_run("crashes")
    assert run.state == controller_pb2.RUN_STATE_COMPLETED
    assert [r.round for r in records] == [1, 2, 3, 4], "round numbers continue without gaps or repeats"
    assert len(round_3_calls) == 2, "the controller died before round 3 counted as trained; its successor resent it"
    pairs = [len(services.store.committed_pairs("crashes", r)) for r in range(1, 5)]
    assert services.store.pair_count("crashes") == sum(pairs) > 0, "no committed pair lost"
    assert len(services.store.pair_staleness("crashes")) == sum(pairs), "every committed pair trained"
    assert set(services.store.pair_staleness("crashes").values()) == {0}, "sync mode: never stale"
    # A kill after training keeps the round's training figures (stored with the trained mark).
    assert records[0].train_steps == math.ceil(pairs[0] / GLOBAL_BATCH)
    async with TrainerClient(services.trainer_address, token=TOKEN) as trainer:
        status = await trainer.status()
    assert status.step == steps_before + sum(math.ceil(n / GLOBAL_BATCH) for n in pairs), "no pair trained twice"
    assert status.policy_version == run.policy_version == records[-1].trained_policy_version


async def test_stop_ends_a_run_after_its_round_and_start_continues_it_under_a_new_config(
    services: Services, client: ControllerClient
) -> None:
    await client.start_run(run_yaml(services, rounds=3, eval_every=0), run_id="stoppable")
    await wait_for_phase(client, "stoppable", 1, "generate")
    stopped = await client.stop_run("stoppable")
    assert stopped.state == controller_pb2.RUN_STATE_STOPPED and stopped.current_round == 1
    assert [r.round for r in await client.list_rounds("stoppable")] == [1]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.pause_run("stoppable")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    resumed = await client.start_run(run_yaml(services, rounds=2, eval_every=0), run_id="stoppable")
    assert resumed.state == controller_pb2.RUN_STATE_RUNNING
    await wait_for_phase(client, "stoppable", 2, "generate")
    assert (await client.pause_run("stoppable")).state == controller_pb2.RUN_STATE_PAUSED

    # Started again while active: the same config changes nothing, a bad one is refused and changes
    # nothing, a new one (one more round) takes over once round 2 (started before) is done, still paused.
    assert (await client.start_run(resumed.config_yaml, run_id="stoppable")).config_yaml == resumed.config_yaml
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.start_run(run_yaml(services, rounds=3, samples_per_prompt=0), run_id="stoppable")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rounds.samples_per_prompt" in (caught.value.details() or "")
    assert (await client.get_run("stoppable")).config_yaml == resumed.config_yaml
    more = await client.start_run(run_yaml(services, rounds=3, eval_every=0), run_id="stoppable")
    assert more.state == controller_pb2.RUN_STATE_PAUSED and yaml.safe_load(more.config_yaml)["rounds"]["rounds"] == 3
    while [r.round for r in await client.list_rounds("stoppable")] != [1, 2]:
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)  # round 2's loop has ended by now: without the hand-over, the run would be COMPLETED
    paused = await client.get_run("stoppable")
    assert (paused.state, paused.current_round) == (controller_pb2.RUN_STATE_PAUSED, 2), "a paused run starts no round"
    assert (await client.resume_run("stoppable")).state == controller_pb2.RUN_STATE_RUNNING
    records = [r async for r in follow_rounds(client, "stoppable", from_round=2)]
    assert [r.round for r in records] == [2, 3]
    done = await client.get_run("stoppable")
    assert (done.state, done.current_round) == (controller_pb2.RUN_STATE_COMPLETED, 3)
    assert [r.run_id for r in await client.list_runs()] == ["stoppable", "crashes", "async"]


@asynccontextmanager
async def serving(command: list[str]) -> AsyncIterator[tuple[dict[str, object], dict[str, object]]]:
    """`mpo serve controller --start-run` as a process: its run line and its ready line; SIGTERM ends it
    cleanly (exit code 0) when the block is done."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert process.stdout is not None
        started = json.loads(await asyncio.to_thread(process.stdout.readline))
        yield started, json.loads(await asyncio.to_thread(process.stdout.readline))
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(process.wait, 120)
    assert exit_code == 0


async def test_mpo_serve_controller_drives_a_run_over_running_services(services: Services) -> None:
    """The controller alone as a process, as the Helm chart runs it: its section of the run config file,
    the run of that file started once it serves (`--start-run`), the services at the given addresses.
    Its pod stops mid-run; a deployment naming another run stops the first; the first command continues it."""
    store = services.root / "served-store"

    def serve_command(run_id: str, rounds: int, **fields: object) -> list[str]:
        run_config = yaml.safe_load(run_yaml(services, rounds=rounds, **({"eval_every": 0} | fields)))
        run_config.update(run_id=run_id, store_dir=str(store), controller={"data_roots": [str(services.root)]})
        (services.root / f"{run_id}.yaml").write_text(yaml.safe_dump(run_config))
        return [
            sys.executable, "-m", "mpo.cli", "serve", "controller", "--port", "0", "--start-run",
            "--run-config", str(services.root / f"{run_id}.yaml"),
            "--rollout-address", services.addresses["rollout"], "--reward-address", services.addresses["reward"],
            "--trainer-address", services.trainer_address,
        ]  # fmt: skip

    command = serve_command("served", rounds=2)
    async with serving(command) as (started, ready):
        assert started == {"event": "run", "run_id": "served", "round": 0}
        assert ready["event"] == "serving" and ready["service"] == "controller"
        async with httpx.AsyncClient(base_url=ready["dashboard_url"], timeout=30) as dashboard:
            assert [run["run_id"] for run in (await dashboard.get("/api/runs")).json()["runs"]] == ["served"]
        async with ControllerClient(ready["address"], token=TOKEN, timeout=120) as served:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await served.start_run("rounds: {rounds: 0}\n", run_id="bad")
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = caught.value.details() or ""
            assert details.startswith("config_yaml: ") and "rounds.rounds: Input should be greater than" in details
            await wait_for_phase(served, "served", 1, "generate")
    interrupted = RunStore(store).get_run("served")  # SIGTERM mid-round: the run is left to the next controller
    assert interrupted is not None and interrupted.state == controller_pb2.RUN_STATE_RUNNING
    assert RunStore(store).get_run("bad") is None, "a rejected config creates nothing"

    # An upgrade names a new run: the interrupted one is stopped (kept in the store), the new one runs. It
    # evaluates with 4 tokens per answer: too few for a rationale and a final answer, so every held-out
    # answer is degenerate (cut at the limit, or stopped without a final answer), base and round 1.
    async with serving(serve_command("served-next", rounds=1, eval_every=1, eval_max_tokens=4)) as (started, ready):
        assert started == {"event": "run", "run_id": "served-next", "round": 0}
        assert RunStore(store).get_run("served").state == controller_pb2.RUN_STATE_STOPPED  # type: ignore[union-attr]
        async with ControllerClient(ready["address"], token=TOKEN, timeout=120) as served:
            assert [r.round async for r in follow_rounds(served, "served-next", from_round=1)] == [1]
    next_run = RunStore(store).get_run("served-next")
    assert next_run is not None and next_run.state == controller_pb2.RUN_STATE_COMPLETED
    assert next_run.base_eval_degenerate and set(next_run.base_eval_degenerate.values()) == {1.0}
    (evaluated,) = RunStore(store).round_records("served-next")
    assert dict(evaluated.eval_degenerate) == dict(next_run.base_eval_degenerate)

    # The first deployment again (e.g. a rollback): the same command continues its run, repeating nothing.
    async with serving(command) as (restarted, ready):
        assert restarted["run_id"] == "served" and restarted["round"] <= 1
        async with ControllerClient(ready["address"], token=TOKEN, timeout=120) as served:
            records = [r async for r in follow_rounds(served, "served", from_round=1)]
            assert (await served.get_run("served")).state == controller_pb2.RUN_STATE_COMPLETED
    assert [r.round for r in records] == [1, 2]
    assert RunStore(store).pair_count("served") == sum(r.labels.pairs_correctness for r in records)


async def test_dashboard_follows_a_live_run_and_shows_the_services(
    services: Services, client: ControllerClient
) -> None:
    """The dashboard as `mpo demo` shows it: served by the controller, updated by its watch stream."""
    url = services.controller.dashboard_url
    assert url is not None
    # Paused right after the start (at most round 1 runs on), so the page surely opens mid-run.
    await client.start_run(run_yaml(services, rounds=3, eval_every=1), run_id="watched")
    await client.pause_run("watched")
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        await page.goto(url + "#/runs/watched")
        await expect(page.locator("#run-facts .state")).to_have_text("paused")
        await page.evaluate("() => { window.notReloaded = true; }")
        assert await page.locator("#rounds tbody tr").count() <= 1
        await client.resume_run("watched")
        await expect(page.locator("#rounds tbody tr")).to_have_count(3, timeout=600_000)
        await expect(page.locator("#run-facts .state")).to_have_text("completed", timeout=60_000)
        assert await page.evaluate("() => window.notReloaded === true"), "rounds arrived without a reload"
        records = services.store.round_records("watched")
        shown = await page.evaluate("() => window.mpoDashboard.rounds.map((row) => row['train.loss'])")
        assert shown == pytest.approx([r.train.loss for r in records])
        accuracy = await page.evaluate("() => window.mpoDashboard.charts.accuracy.data[1]")
        base = (await client.get_run("watched")).base_eval_accuracy["arith"]
        assert accuracy == pytest.approx([base] + [r.eval_accuracy["arith"] for r in records])
        degenerate = await page.evaluate("() => window.mpoDashboard.charts.degenerate.data[1]")
        base_share = (await client.get_run("watched")).base_eval_degenerate["arith"]
        assert degenerate == pytest.approx([base_share] + [r.eval_degenerate["arith"] for r in records])
        assert all(0.0 <= share <= 1.0 for share in degenerate)
        assert all(set(r.eval_degenerate) == set(r.eval_accuracy) for r in records)
        await screenshot(page, "live-run")

        await page.goto(url + "#/services")
        await expect(page.locator("#services tbody tr")).to_have_count(3)
        for name in ("rollout", "reward", "trainer"):
            await expect(page.locator(f'tr[data-service="{name}"] td.ok')).to_have_text("serving")
        version = str((await client.get_run("watched")).policy_version)
        for name in ("rollout", "trainer"):
            await expect(page.locator(f'tr[data-service="{name}"] td[data-key="policy_version"]')).to_have_text(version)
        await screenshot(page, "services")

        await page.goto(url + "#/runs/watched/pairs?round=1")
        committed = len(services.store.committed_pairs("watched", 1))
        await expect(page.locator(".pair")).to_have_count(min(committed, 20))
