"""`mpo serve`: every config the service cannot serve is refused before Ray or an engine starts (these
tests would hang or start Ray otherwise), and each service has a config model and a start function."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from pydantic import BaseModel

from mpo.config import ConfigError
from mpo.run_command import StartRunError
from mpo.serve_command import SERVED, serve

CONTROLLER = {"store_dir": None, "rollout_address": "a:1", "reward_address": "b:2", "trainer_address": "c:3"}


@pytest.fixture(autouse=True)
def no_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPO_CONTROL_TOKEN", raising=False)
    monkeypatch.delenv("MPO_USER_TOKEN", raising=False)


def controller_with(run_config: Path | None = None, *, host: str | None = None, start_run: bool = False) -> None:
    serve("controller", CONTROLLER, run_config_file=run_config, config_file=None, host=host, port=None,
          ray_address=None, start_run=start_run)  # fmt: skip


def test_a_server_beyond_loopback_without_a_token_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^controller: no token in \$MPO_CONTROL_TOKEN, and '0\.0\.0\.0' is not"):
        controller_with(host="0.0.0.0")


def test_start_run_needs_a_run_config_with_a_run_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--start-run: needs --run-config \(the run to start\)$"):
        controller_with(start_run=True)
    nameless = tmp_path / "run.yaml"
    nameless.write_text(f"model: {tmp_path}\n")
    with pytest.raises(StartRunError, match="run_id: required to start"):
        controller_with(nameless, start_run=True)


def test_an_invalid_config_names_the_service(tmp_path: Path) -> None:
    own = tmp_path / "reward.yaml"
    own.write_text("workers: 0\n")
    with pytest.raises(ConfigError, match=r"^invalid reward config\n  workers: "):
        serve("reward", {"workers": None}, run_config_file=None, config_file=own, host=None, port=None,
              ray_address=None)  # fmt: skip


@pytest.mark.parametrize("service", sorted(SERVED))
def test_each_service_has_a_config_model_and_a_start_function(service: str) -> None:
    config_class, start_name = SERVED[service]
    module, _, function = start_name.rpartition(".")
    assert issubclass(config_class, BaseModel) and callable(getattr(importlib.import_module(module), function))
