"""The runs one controller drives: start (or resume), pause, resume, stop, and watching their rounds.

One set of services serves one policy, so a controller drives at most one run at a time. The run's
state lives in the `RunStore`; a controller that restarts (Ray restarts its actor after a crash) picks
up the run that was running or paused, and its round loop finishes the committed rounds first.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from pydantic import ValidationError

from mpo.config import ConfigError, ControllerConfig, DataConfig, RunConfig, format_validation_error
from mpo.data.loader import DataError
from mpo.data.records import PromptRecord
from mpo.plugins import plugin_file
from mpo.preflight import check_run
from mpo.services.controller.loop import RoundLoop
from mpo.services.controller.metrics import EventFiles, RoundGauges, RoundSink, WandbRun
from mpo.services.controller.retry import ServiceClients
from mpo.services.controller.run_control import RunControl
from mpo.services.controller.store import RunStore
from mpo.serving.paths import inside, resolved_roots
from mpo.serving.validation import InvalidRequest
from mpo.v1 import common_pb2, controller_pb2

log = logging.getLogger(__name__)

#: A run in these states has a round loop (on a controller, or continued by the next one to start).
LIVE_STATES = (controller_pb2.RUN_STATE_RUNNING, controller_pb2.RUN_STATE_PAUSED)


def new_run_id() -> str:
    """A readable, unique run id: when it started, plus a random suffix."""
    return f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def parse_run_config(config_yaml: str, roots: Collection[Path]) -> RunConfig:
    """A StartRun config, or INVALID_ARGUMENT naming every offending field under `config_yaml`. Checking a
    config loads code (plug-in verifier files; model directories' tokenizers and, with trust_remote_code,
    their Python), so what it names must lie in the data roots before it is checked (`check_code_paths`)."""
    try:
        raw = yaml.safe_load(config_yaml)
    except yaml.YAMLError as error:
        raise InvalidRequest("config_yaml", f"not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise InvalidRequest("config_yaml", "must be a mapping of sections (the schema of `mpo config example`)")
    check_code_paths(raw, roots)
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as error:
        problems = format_validation_error(error).replace("\n", ";").replace("  ", " ").strip()
        raise InvalidRequest("config_yaml", f"invalid run config:{problems}") from error
    if config.data is None:
        raise InvalidRequest("config_yaml", "data: required (data.train and data.heldout prompt files)")
    return config


def _outside(roots: Collection[Path]) -> str:
    listed = ", ".join(sorted(map(str, roots))) or "none configured"
    return f"outside the controller's data roots ({listed}; controller.data_roots)"


def _section(raw: object, *keys: str) -> object:
    for key in keys:
        raw = raw.get(key) if isinstance(raw, dict) else None
    return raw


def code_paths(raw: dict[str, Any]) -> list[tuple[str, Path]]:
    """(field, path) of everything a run config makes a process load code from: model directories and
    path-form plug-in verifiers, read from the raw YAML (validating it would load them)."""
    found: list[tuple[str, Path]] = []
    for keys in (("model",), ("rollout", "model"), ("trainer", "model"), ("reward", "scorer", "model")):
        value = _section(raw, *keys)
        if isinstance(value, str):
            found.append((".".join(keys), Path(value)))
    verifiers = _section(raw, "reward", "verifiers")
    for task, spec in (verifiers or {}).items() if isinstance(verifiers, dict) else ():
        if isinstance(spec, str) and (path := plugin_file(spec)) is not None:
            found.append((f"reward.verifiers.{task}", path))
    return found


def check_code_paths(raw: dict[str, Any], roots: Collection[Path]) -> None:
    """StartRun must not make the controller load code from anywhere it can read: model directories and
    plug-in files lie in the data roots (where the operator put them), or the config is refused unloaded."""
    for name, path in code_paths(raw):
        if not inside(path, roots):
            raise InvalidRequest("config_yaml", f"{name}: {_outside(roots)}")


def check_data_paths(data: DataConfig, roots: Collection[Path]) -> None:
    """StartRun names files the controller reads: its prompt files must lie in the data roots, checked before
    anything is opened, with one answer for every path outside, whether a file is there or not."""
    for split in ("train", "heldout"):
        if not inside(getattr(data, split), roots):
            raise InvalidRequest("config_yaml", f"data.{split}: {_outside(roots)}")


def check_image_paths(split: str, records: Iterable[PromptRecord], roots: Collection[Path]) -> None:
    """The image files the prompt rows name are read and sent to the services: in the data roots too."""
    checked: set[Path] = set()
    for record in records:
        for image in record.images:
            if image not in checked and not inside(image, roots):
                raise InvalidRequest("config_yaml", f"data.{split}: prompt {record.id!r}: image {_outside(roots)}")
            checked.add(image)


@dataclass
class ActiveRun:
    run_id: str
    control: RunControl
    task: asyncio.Task[None] | None = None
    #: Phase of each started, unfinished round (async mode has more than one).
    phases: dict[int, str] = field(default_factory=dict)
    sinks: list[RoundSink] = field(default_factory=list)
    #: The loop that continues the run under a new config once this one reaches a round boundary.
    successor: RoundLoop | None = None


class RunManager:
    def __init__(self, store: RunStore, clients: ServiceClients, config: ControllerConfig, gauges: RoundGauges) -> None:
        self.store, self.clients, self.config, self.gauges = store, clients, config, gauges
        self.active: ActiveRun | None = None
        self.data_roots = resolved_roots(config.data_roots)
        #: Notified whenever any run changes (a round stored, a state change): what WatchRounds waits on.
        self.changed = asyncio.Condition()

    # --- lifecycle ----------------------------------------------------------------------------------------

    def get(self, run_id: str) -> controller_pb2.Run:
        run = self.store.get_run(run_id)
        if run is None:
            raise InvalidRequest("run_id", f"no run {run_id!r} in this controller's store", grpc.StatusCode.NOT_FOUND)
        if self.active is not None and self.active.run_id == run_id and self.active.phases:
            run.phase_round = min(self.active.phases)
            run.phase = self.active.phases[run.phase_round]
        return run

    def list(self) -> list[controller_pb2.Run]:
        return sorted(self.store.list_runs(), key=lambda run: run.started_at, reverse=True)

    async def start(self, config_yaml: str, run_id: str = "") -> controller_pb2.Run:
        """Start `run_id` (generated when empty), or resume it when the store has it. Started again while
        active with another config (e.g. more rounds), the run goes on under the new config from its next
        round: a restarted controller continues the stored run before its caller's StartRun arrives."""
        config = parse_run_config(config_yaml, self.data_roots)
        run_id = run_id or config.run_id or new_run_id()
        if self.active is not None:
            if self.active.run_id == run_id:
                return self._reconfigure(self.active, config_yaml, config)
            raise InvalidRequest(
                "run_id",
                f"run {self.active.run_id!r} is active on this controller; stop it before starting {run_id!r}",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        loop = self._round_loop(run_id, config)  # reads the prompt files: a bad file changes nothing
        sinks = self._sinks(run_id)
        now = time.time()
        run = self.store.get_run(run_id) or controller_pb2.Run(run_id=run_id, started_at=now)
        run.state, run.error, run.updated_at = controller_pb2.RUN_STATE_RUNNING, "", now
        run.config_yaml = config_yaml
        self.store.put_run(run)
        self._launch(loop, sinks)
        log.info("run %s: started (round %d done, %d to go)", run_id, run.current_round, config.rounds.rounds)
        return self.get(run_id)

    def _reconfigure(self, active: ActiveRun, config_yaml: str, config: RunConfig) -> controller_pb2.Run:
        run = self.get(active.run_id)
        if parse_run_config(run.config_yaml, self.data_roots) == config:
            return run  # the same StartRun again: nothing to change
        successor = self._round_loop(active.run_id, config, active.control)  # a bad config changes nothing
        run.config_yaml, run.updated_at = config_yaml, time.time()
        self.store.put_run(run)  # a controller that dies before the hand-over continues with the new config
        active.successor = successor
        active.control.hand_over()
        log.info("run %s: new config; it takes over after the rounds already started", active.run_id)
        return self.get(active.run_id)

    def _round_loop(self, run_id: str, config: RunConfig, control: RunControl | None = None) -> RoundLoop:
        assert config.data is not None  # parse_run_config
        images = self.store.root / "images"  # the store this controller writes, wherever the config's points
        check_data_paths(config.data, self.data_roots)
        try:
            train, heldout = check_run(config, image_dir=images)
        except DataError as error:
            raise InvalidRequest("config_yaml", f"data: {error}") from error
        except ConfigError as error:  # the model's template, or a task no service knows
            raise InvalidRequest("config_yaml", str(error)) from error
        if not train:
            raise InvalidRequest("config_yaml", f"data.train: {config.data.train} has no prompts")
        image_roots = self.data_roots | resolved_roots([images])  # images held as bytes are written there
        check_image_paths("train", train, image_roots)
        check_image_paths("heldout", heldout, image_roots)
        try:
            return RoundLoop(
                run_id,
                config.rounds,
                self.store,
                self.clients,
                train,
                heldout,
                control=control or RunControl(),
                prompt=config.prompt,
            )
        except ValueError as error:  # a task mix the prompts cannot serve
            raise InvalidRequest("config_yaml", f"rounds.{error}") from error

    def _sinks(self, run_id: str) -> list[RoundSink]:
        sinks: list[RoundSink] = []
        if self.config.tensorboard:
            sinks.append(EventFiles(self.tensorboard_dir(run_id)))
        if self.config.wandb_project is not None:
            try:
                stored = self.store.round_records(run_id)
                sinks.append(WandbRun(run_id, self.config.wandb_project, self.wandb_dir(run_id), stored))
            except Exception as error:  # no API key, no network: say so instead of an internal error
                for sink in sinks:
                    sink.close()
                raise InvalidRequest(
                    "controller.wandb_project",
                    f"cannot start the W&B run: {type(error).__name__}: {error}",
                    grpc.StatusCode.FAILED_PRECONDITION,
                ) from error
        return sinks

    def _launch(self, loop: RoundLoop, sinks: list[RoundSink]) -> None:
        active = ActiveRun(loop.run_id, loop.control, sinks=sinks)
        loop.on_round = lambda record: self._stored(active, record)
        loop.on_phase = lambda round_index, phase: self._entered(active, round_index, phase)
        active.task = asyncio.create_task(self._drive(active, loop), name=f"run-{loop.run_id}")
        self.active = active

    def tensorboard_dir(self, run_id: str) -> Path:
        return self.store.root / "runs" / run_id / "tensorboard"

    def wandb_dir(self, run_id: str) -> Path:
        return self.store.root / "runs" / run_id / "wandb"

    async def _drive(self, active: ActiveRun, loop: RoundLoop) -> None:
        """Run the loop to its end and record how it ended, or hand the run to its successor loop.
        Cancelled (the controller shutting down), the run stays RUNNING or PAUSED, so the next controller
        continues it."""
        handed_over = False
        try:
            await loop.run()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("run %s failed", active.run_id)
            await self._end(active, controller_pb2.RUN_STATE_FAILED, f"{type(error).__name__}: {error}")
        else:
            if active.successor is not None and not active.control.stopping:
                # No await from here to the successor's start: watchers never see the run inactive.
                active.control.take_over()
                self._launch(active.successor, active.sinks)
                handed_over = True
                return
            finished = self.store.last_committed_round(active.run_id) >= loop.config.rounds
            state = controller_pb2.RUN_STATE_COMPLETED if finished else controller_pb2.RUN_STATE_STOPPED
            await self._end(active, state)
        finally:
            if not handed_over:
                for sink in active.sinks:
                    sink.close()

    async def _end(self, active: ActiveRun, state: int, error: str = "") -> None:
        self._set_state(active.run_id, state, error)
        if self.active is active:
            self.active = None
        await self._notify()

    def _set_state(self, run_id: str, state: int, error: str = "") -> controller_pb2.Run:
        run = self.get(run_id)
        run.state, run.error, run.updated_at = state, error, time.time()  # type: ignore[assignment]
        run.ClearField("phase")
        run.ClearField("phase_round")
        self.store.put_run(run)
        return self.get(run_id)

    def _live(self, run_id: str) -> ActiveRun:
        run = self.get(run_id)
        if self.active is None or self.active.run_id != run_id:
            state = controller_pb2.RunState.Name(run.state)
            raise InvalidRequest(
                "run_id", f"run {run_id!r} is not active ({state})", grpc.StatusCode.FAILED_PRECONDITION
            )
        return self.active

    async def pause(self, run_id: str) -> controller_pb2.Run:
        """No new round starts until `resume`; rounds already started finish."""
        self._live(run_id).control.pause()
        run = self._set_state(run_id, controller_pb2.RUN_STATE_PAUSED)
        await self._notify()
        return run

    async def resume(self, run_id: str) -> controller_pb2.Run:
        self._live(run_id).control.resume()
        run = self._set_state(run_id, controller_pb2.RUN_STATE_RUNNING)
        await self._notify()
        return run

    async def stop(self, run_id: str) -> controller_pb2.Run:
        """Rounds already started finish, then the run is STOPPED (StartRun with its id resumes it)."""
        active = self._live(run_id)
        active.control.stop()
        if active.task is not None:
            await asyncio.shield(active.task)
        return self.get(run_id)

    async def continue_interrupted(self) -> None:
        """After a restart: continue the run that was running or paused when the controller died."""
        for run in self.store.list_runs():
            if run.state not in LIVE_STATES:
                continue
            try:
                config = parse_run_config(run.config_yaml, self.data_roots)
                loop = self._round_loop(run.run_id, config)
                sinks = self._sinks(run.run_id)
            except InvalidRequest as error:
                self._set_state(run.run_id, controller_pb2.RUN_STATE_FAILED, f"cannot continue: {error}")
                continue
            if run.state == controller_pb2.RUN_STATE_PAUSED:
                loop.control.pause()
            log.info("run %s: continuing after a controller restart", run.run_id)
            self._launch(loop, sinks)
            return

    async def shutdown(self) -> None:
        if self.active is not None and self.active.task is not None:
            self.active.task.cancel()
            await asyncio.gather(self.active.task, return_exceptions=True)
        self.active = None

    # --- rounds -------------------------------------------------------------------------------------------

    def _entered(self, active: ActiveRun, round_index: int, phase: str) -> None:
        if phase == "done":
            active.phases.pop(round_index, None)
        else:
            active.phases[round_index] = phase

    def _stored(self, active: ActiveRun, record: common_pb2.RoundMetrics) -> None:
        self.gauges.observe(record)
        for sink in active.sinks:
            sink.write(record)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def watch(self, run_id: str, from_round: int = 0) -> AsyncIterator[common_pb2.RoundMetrics]:
        """Stored rounds from `from_round`, then each new one as it is stored, until the run ends."""
        self.get(run_id)
        next_round = max(from_round, 1)
        while True:
            async with self.changed:
                records = self.store.round_records(run_id, from_round=next_round)
                live = self.active is not None and self.active.run_id == run_id
                if not records and not live:
                    return
                if not records:
                    await self.changed.wait()
                    continue
            for record in records:
                yield record
                next_round = record.round + 1
