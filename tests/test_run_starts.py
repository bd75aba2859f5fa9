"""How `mpo run` finds its config (a file, or a stored run with `--set` and `--rounds`) and how
`mpo serve controller --start-run` starts its run once serving: against a real gRPC server whose
ControllerService is a small scripted double (the controller's own logic is tested elsewhere)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
import yaml

from mpo.config import ConfigError, ControllerServeConfig
from mpo.run_command import StartRunError, load_run_config, start_run_once_serving
from mpo.services.controller.store import RunStore
from mpo.v1 import controller_pb2, controller_pb2_grpc


def test_a_resumed_run_takes_its_stored_config_with_the_new_rounds(tmp_path: Path) -> None:
    stored = yaml.safe_dump({"model": str(tmp_path), "rounds": {"rounds": 2, "max_tokens": 32}})
    RunStore(tmp_path / "store").put_run(controller_pb2.Run(run_id="kept", config_yaml=stored))
    config = load_run_config(None, resume="kept", store_dir=tmp_path / "store",
                             overrides=["rounds.max_tokens=48"], rounds=4)  # fmt: skip
    assert (config.run_id, config.rounds.rounds, config.rounds.max_tokens) == ("kept", 4, 48)
    with pytest.raises(ConfigError, match=f"no run 'gone' in {tmp_path / 'store'}"):
        load_run_config(None, resume="gone", store_dir=tmp_path / "store", overrides=[], rounds=None)


def test_a_config_file_takes_the_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"run_id": "from-file", "model": str(tmp_path)}))
    config = load_run_config(path, resume=None, store_dir=tmp_path / "unused", overrides=[], rounds=3)
    assert (config.run_id, config.rounds.rounds) == ("from-file", 3)


class ScriptedController(controller_pb2_grpc.ControllerServiceServicer):
    def __init__(self, runs: list[controller_pb2.Run], refuse: bool = False) -> None:
        self.runs, self.refuse = runs, refuse
        self.stopped: list[str] = []
        self.started: list[controller_pb2.StartRunRequest] = []

    async def ListRuns(self, request, context):
        return controller_pb2.ListRunsResponse(runs=self.runs)

    async def StopRun(self, request, context):
        self.stopped.append(request.run_id)
        return controller_pb2.StopRunResponse(run=controller_pb2.Run(run_id=request.run_id))

    async def StartRun(self, request, context):
        if self.refuse:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "data.train: no such file")
        self.started.append(request)
        return controller_pb2.StartRunResponse(run=controller_pb2.Run(run_id=request.run_id, current_round=3))


class Serving:
    """What serve_controller returns, as far as --start-run uses it."""

    def __init__(self) -> None:
        self.address = ""
        self.stopped_with: list[float | None] = []

    async def stop(self, grace: float | None = None) -> None:
        self.stopped_with.append(grace)


async def start_against(controller: ScriptedController, run_config: Path, serving: Serving) -> Serving:
    server = grpc.aio.server()
    controller_pb2_grpc.add_ControllerServiceServicer_to_server(controller, server)
    serving.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()

    async def serve_controller(config: ControllerServeConfig) -> Serving:
        return serving

    config = ControllerServeConfig(rollout_address="a:1", reward_address="b:2", trainer_address="c:3")
    try:
        return await start_run_once_serving(serve_controller, run_config)(config)
    finally:
        await server.stop(0)


@pytest.fixture
def run_config(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(f"run_id: deployed\nmodel: {tmp_path}\n")
    return path


def test_start_run_stops_another_live_run_then_starts_its_own(
    run_config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MPO_CONTROL_TOKEN", raising=False)
    monkeypatch.delenv("MPO_USER_TOKEN", raising=False)
    controller = ScriptedController([
        controller_pb2.Run(run_id="previous", state=controller_pb2.RUN_STATE_RUNNING),
        controller_pb2.Run(run_id="finished", state=controller_pb2.RUN_STATE_COMPLETED),
        controller_pb2.Run(run_id="deployed", state=controller_pb2.RUN_STATE_PAUSED),
    ])  # fmt: skip
    serving = Serving()
    assert asyncio.run(start_against(controller, run_config, serving)) is serving
    assert controller.stopped == ["previous"]  # neither the finished run nor its own
    [started] = controller.started
    assert (started.run_id, started.config_yaml) == ("deployed", run_config.read_text())
    out, err = capsys.readouterr()
    assert json.loads(out) == {"event": "run", "run_id": "deployed", "round": 3}
    assert "stopping run 'previous': this deployment now drives 'deployed'" in err
    assert serving.stopped_with == []  # still serving


def test_a_refused_start_stops_the_controller_with_the_reason(run_config: Path) -> None:
    controller, serving = ScriptedController([], refuse=True), Serving()
    with pytest.raises(StartRunError, match=r"^StartRun 'deployed': INVALID_ARGUMENT: data.train: no such file$"):
        asyncio.run(start_against(controller, run_config, serving))
    assert serving.stopped_with == [0]  # at once: nothing to drain


def test_start_run_needs_a_run_id_before_anything_starts(tmp_path: Path) -> None:
    nameless = tmp_path / "run.yaml"
    nameless.write_text(f"model: {tmp_path}\n")

    async def never(config: object) -> None:
        raise AssertionError("started without a run id")

    with pytest.raises(StartRunError, match=r"--start-run: .*run\.yaml: run_id: required to start"):
        start_run_once_serving(never, nameless)
