"""`mpo serve SERVICE`: one service's config from its sources, checked before anything starts, then the
service hosted on Ray until SIGTERM."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from mpo.config import ConfigError, ControllerServeConfig, RewardConfig, RolloutConfig, TrainerConfig
from mpo.config_sources import service_config
from mpo.run_command import start_run_once_serving
from mpo.serving.auth import serving_credentials
from mpo.serving.hosting import host_on_ray

#: Service -> its config model and the function that starts it (imported only for the service served:
#: each pulls in its own engines).
SERVED: dict[str, tuple[type[BaseModel], str]] = {
    "rollout": (RolloutConfig, "mpo.services.rollout.server.start_rollout"),
    "reward": (RewardConfig, "mpo.services.reward.service.start_reward"),
    "trainer": (TrainerConfig, "mpo.trainer.service.start_trainer"),
    "controller": (ControllerServeConfig, "mpo.services.controller.service.serve_controller"),
}


def serve(
    service: str,
    fields: Mapping[str, object],
    *,
    run_config_file: Path | None,
    config_file: Path | None,
    host: str | None,
    port: int | None,
    ray_address: str | None,
    start_run: bool = False,
) -> None:
    """Serve `service` until SIGINT/SIGTERM. A config it cannot serve raises ConfigError before Ray and the
    engines start (a server that would refuse to bind says so at once); with `start_run` (the controller),
    the run of `run_config_file` is started once it serves (StartRunError if it cannot be)."""
    config_class, start_name = SERVED[service]
    config = service_config(
        config_class,
        service,
        run_config_file=run_config_file,
        config_file=config_file,
        fields=fields,
        host=host,
        port=port,
    )
    try:
        serving_credentials(config.server.auth, config.server.host, service)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    module_name, _, function = start_name.rpartition(".")
    start = getattr(importlib.import_module(module_name), function)
    if start_run:
        if run_config_file is None:
            raise ConfigError("--start-run: needs --run-config (the run to start)")
        start = start_run_once_serving(start, run_config_file)
    asyncio.run(host_on_ray(lambda: start(config), ray_address=ray_address))
