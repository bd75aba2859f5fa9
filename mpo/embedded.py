"""`mpo run` on one machine: a local Ray, the three services and the controller, started from the run config.

The services are the real ones (gRPC servers over Ray actors); only their wiring is automatic here:
the reward and trainer services get the rollout service's address, the controller actor all three, and
with the shared-storage transport the trainer's publish directory becomes readable to the rollout
service. `mpo run` itself is a ControllerService client: it starts the run and follows its rounds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import grpc
import ray
import yaml

from mpo.config import RunConfig
from mpo.data.records import PromptRecord
from mpo.preflight import check_run
from mpo.services.controller.runs import code_paths, new_run_id
from mpo.services.controller.service import start_controller
from mpo.services.controller.store import RunStore
from mpo.services.reward.service import start_reward
from mpo.services.rollout.server import start_rollout
from mpo.serving.clients import ControllerClient
from mpo.serving.handle import ServiceHandle
from mpo.trainer.service import start_trainer
from mpo.v1 import common_pb2, controller_pb2

log = logging.getLogger(__name__)


class RunConfigError(ValueError):
    """A run config that validates but cannot be run; the message names the field."""


def require_runnable(config: RunConfig) -> tuple[Path, Path]:
    if config.model is None or config.rollout is None or config.trainer is None:
        raise RunConfigError("model: required to run (the base policy's model directory)")
    if config.data is None:
        raise RunConfigError("data: required to run (data.train and data.heldout prompt files)")
    return config.data.train, config.data.heldout


def round_line(record: common_pb2.RoundMetrics) -> str:
    """One row of the per-round table `mpo run` prints."""
    labels, train, timings = record.labels, record.train, record.timings
    accuracy = " ".join(f"{task} {value:.3f}" for task, value in sorted(record.eval_accuracy.items())) or "-"
    return (
        f"round {record.round:>3} | pairs {labels.pairs_correctness + labels.pairs_dropout_ntp:>4} "
        f"| correct {labels.correct:>4}/{labels.samples:<4} | loss {train.loss:7.4f} | δ {train.reward_shift:+.4f} "
        f"| version {record.trained_policy_version:>3} | accuracy {accuracy} | {timings.total:6.1f} s "
        f"(generate {timings.generate:.1f}, label {timings.label:.1f}, train {timings.train:.1f}, "
        f"publish {timings.publish:.1f}, eval {timings.eval:.1f})"
    )


def _absolute_data(config: RunConfig) -> RunConfig:
    """The controller actor reads the prompt files itself, from its own working directory."""
    assert config.data is not None
    data = config.data.model_copy(
        update={"train": config.data.train.resolve(), "heldout": config.data.heldout.resolve()}
    )
    pairs_dir = config.pairs_dir.resolve() if config.pairs_dir is not None else None
    return config.model_copy(update={"data": data, "store_dir": config.store_dir.resolve(), "pairs_dir": pairs_dir})


def own_data_roots(config: RunConfig, records: Iterable[PromptRecord]) -> RunConfig:
    """The local user chose the data and the code: the controller may read the folders of its prompt files
    (a directory source: the directory) and of the images their rows name, and the model directories and
    plug-in files the config names, besides any `controller.data_roots` given."""
    assert config.data is not None
    sources = [path.resolve() for path in (config.data.train, config.data.heldout)]
    folders = {path if path.is_dir() else path.parent for path in sources}
    folders |= {image.resolve().parent for record in records for image in record.images}
    folders |= {path.resolve() for _, path in code_paths(config.model_dump(mode="json"))}
    roots = [*config.controller.data_roots, *sorted(folders)]
    return config.model_copy(update={"controller": config.controller.model_copy(update={"data_roots": roots})})


async def run_embedded(
    config: RunConfig,
    *,
    on_round: Callable[[common_pb2.RoundMetrics], None] | None = None,
    on_dashboard: Callable[[str], None] | None = None,
    on_services: Callable[[dict[str, str]], None] | None = None,
) -> tuple[str, list[common_pb2.RoundMetrics]]:
    """Run (or resume) `config` on a local Ray; returns the run id and the records of this invocation.
    `on_dashboard` gets the dashboard's URL once the controller serves it (before the first round);
    `on_services` the address of each service (rollout, reward, trainer, controller) at the same point,
    for a client beside the run (bench/soak.py samples the rollout service while the run trains)."""
    require_runnable(config)
    assert config.data is not None and config.rollout is not None and config.trainer is not None  # require_runnable
    images = config.store_dir / "images"  # the controller's store: it finds the images written here already
    train, heldout = check_run(config, image_dir=images)  # the template, the data and its tasks, before anything starts
    config = own_data_roots(_absolute_data(config), [*train, *heldout])
    run_id = config.run_id or new_run_id()
    finished = RunStore(config.store_dir, pairs_dir=config.pairs_dir).round_records(run_id)
    next_round = finished[-1].round + 1 if finished else 1
    rollout_config = config.rollout
    if config.rounds.transport == "shared_storage":
        roots = [*rollout_config.readable_roots, config.trainer.publish_dir]
        rollout_config = rollout_config.model_copy(update={"readable_roots": roots})
    started_ray = not ray.is_initialized()
    if started_ray:
        # Logical CPUs for what the services reserve (replicas, ranks): on a small machine they share the
        # cores, as the embedded mode intends, instead of waiting forever for a CPU Ray thinks is taken.
        reserved = rollout_config.replicas * rollout_config.num_cpus_per_replica
        reserved += config.trainer.world_size * config.trainer.num_cpus_per_rank
        ray.init(
            namespace="mpo",
            num_cpus=max(os.cpu_count() or 1, math.ceil(reserved) + 1),
            include_dashboard=False,
            log_to_driver=False,
        )
    services: list[ServiceHandle] = []
    try:
        rollout = await start_rollout(rollout_config)
        services.append(rollout)
        reward = await start_reward(config.reward.model_copy(update={"rollout_address": rollout.address}))
        services.append(reward)
        trainer = await start_trainer(config.trainer.model_copy(update={"rollout_address": rollout.address}))
        services.append(trainer)
        controller = await start_controller(
            config.controller,
            config.store_dir,
            rollout=rollout.address,
            reward=reward.address,
            trainer=trainer.address,
            pairs_dir=config.pairs_dir,
        )
        services.append(controller)
        if on_dashboard is not None and controller.dashboard_url:
            on_dashboard(controller.dashboard_url)
        if on_services is not None:
            named = {"rollout": rollout, "reward": reward, "trainer": trainer, "controller": controller}
            on_services({name: service.address for name, service in named.items()})
        config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        async with ControllerClient(controller.address, timeout=600) as client:
            await client.start_run(config_yaml, run_id=run_id)
            records = []
            async for record in follow_rounds(client, run_id, from_round=next_round):
                records.append(record)
                if on_round is not None:
                    on_round(record)
            run = await client.get_run(run_id)
        if run.state == controller_pb2.RUN_STATE_FAILED:
            raise RunFailed(f"run {run_id} failed: {run.error}")
        return run_id, records
    finally:
        for service in reversed(services):
            await service.stop(0)
        if started_ray:
            ray.shutdown()


class RunFailed(RuntimeError):
    """The controller ended the run with RUN_STATE_FAILED; the message carries its error."""


async def follow_rounds(
    client: ControllerClient, run_id: str, *, from_round: int = 1
) -> AsyncIterator[common_pb2.RoundMetrics]:
    """Each round record from `from_round` until the run ends, across controller restarts (the stream
    breaks when Ray restarts the controller actor; it is picked up again where it stopped)."""
    while True:
        try:
            async for record in client.watch_rounds(run_id, from_round=from_round):
                yield record
                from_round = record.round + 1
            run = await client.get_run(run_id)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            log.warning("controller unavailable (%s); reconnecting", error.details())
            await asyncio.sleep(1.0)
            continue
        if run.state not in (controller_pb2.RUN_STATE_RUNNING, controller_pb2.RUN_STATE_PAUSED):
            return
