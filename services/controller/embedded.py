"""`mpo run` on one machine: a local Ray, the three services started from the run config, the round loop.

The services are the real ones (gRPC servers over Ray actors); only their wiring is automatic here:
the reward and trainer services get the rollout service's address, and with the shared-storage
transport the trainer's publish directory becomes readable to the rollout service.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import ray
import yaml

from mpo.config import RunConfig
from mpo.data.loader import load_prompts
from mpo.services.common.clients import RewardClient, RolloutClient, TrainerClient
from mpo.services.common.hosting import RunningService
from mpo.services.controller.loop import RoundLoop, ServiceClients
from mpo.services.controller.store import RunStore
from mpo.services.reward.service import start_reward
from mpo.services.rollout.server import start_rollout
from mpo.services.trainer.service import start_trainer
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


async def run_embedded(
    config: RunConfig, *, on_round: Callable[[common_pb2.RoundMetrics], None] | None = None
) -> tuple[str, list[common_pb2.RoundMetrics]]:
    """Run (or resume) `config` on a local Ray; returns the run id and the records of this invocation."""
    train_file, heldout_file = require_runnable(config)
    skip = "skip" if config.data and config.data.skip_bad_rows else "reject"
    train, heldout = (
        load_prompts(train_file, on_bad_row=skip).records,
        load_prompts(heldout_file, on_bad_row=skip).records,
    )
    assert config.rollout is not None and config.trainer is not None  # require_runnable
    store = RunStore(config.store_dir)
    run_id = config.run_id or f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run = store.get_run(run_id)
    if run is None:
        now = time.time()
        config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        run = controller_pb2.Run(
            run_id=run_id,
            state=controller_pb2.RUN_STATE_RUNNING,
            started_at=now,
            updated_at=now,
            config_yaml=config_yaml,
        )
        store.put_run(run)
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
    services: list[RunningService] = []
    try:
        rollout = await start_rollout(rollout_config)
        services.append(rollout)
        reward = await start_reward(config.reward.model_copy(update={"rollout_address": rollout.address}))
        services.append(reward)
        trainer = await start_trainer(config.trainer.model_copy(update={"rollout_address": rollout.address}))
        services.append(trainer)
        async with (
            RolloutClient(rollout.address, timeout=3600) as rollout_client,
            RewardClient(reward.address, timeout=3600) as reward_client,
            TrainerClient(trainer.address, timeout=3600) as trainer_client,
        ):
            clients = ServiceClients(rollout_client, reward_client, trainer_client)
            loop = RoundLoop(run_id, config.rounds, store, clients, train, heldout, on_round=on_round)
            try:
                records = await loop.run()
            except BaseException as error:
                _set_state(store, run_id, controller_pb2.RUN_STATE_FAILED, error=f"{type(error).__name__}: {error}")
                raise
        _set_state(store, run_id, controller_pb2.RUN_STATE_COMPLETED)
        return run_id, records
    finally:
        for service in reversed(services):
            await service.stop(0)
        if started_ray:
            ray.shutdown()


def _set_state(store: RunStore, run_id: str, state: int, *, error: str = "") -> None:
    run = store.get_run(run_id)
    if run is None:
        return
    run.state, run.error, run.updated_at = state, error, time.time()  # type: ignore[assignment]
    store.put_run(run)
