"""Where a service's or a run's config comes from: a run config's section, a service's YAML and flags on top
of it (`mpo serve`), a stored run's config with `--set` items (`mpo run --resume`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mpo.config import ConfigError, ControllerServeConfig, RolloutConfig
from mpo.config_sources import command_overrides, run_config_section, service_config, stored_run_config
from mpo.overrides import OverrideError


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_section_takes_the_run_model_and_the_controller_takes_the_store(tmp_path: Path) -> None:
    run = write(tmp_path / "run.yaml", {"model": "/models/base", "store_dir": "/state/runs", "pairs_dir": "/shared",
                                        "rollout": {"replicas": 3}})  # fmt: skip
    rollout = run_config_section(run, "rollout")
    assert (rollout["model"], rollout["replicas"]) == ("/models/base", 3)
    controller = run_config_section(run, "controller")
    assert (controller["store_dir"], controller["pairs_dir"]) == ("/state/runs", "/shared")
    assert "store_dir" not in rollout


def test_a_missing_section_or_file_names_it(tmp_path: Path) -> None:
    no_model = write(tmp_path / "run.yaml", {"rounds": {"rounds": 2}})
    with pytest.raises(ConfigError, match=r"run\.yaml: trainer: missing \(set `model`, or the `trainer` section\)"):
        run_config_section(no_model, "trainer")
    with pytest.raises(ConfigError, match=r"absent\.yaml: cannot read config"):
        run_config_section(tmp_path / "absent.yaml", "rollout")


def test_flags_override_the_service_file_which_overrides_the_run_config(tmp_path: Path) -> None:
    run = write(tmp_path / "run.yaml", {"model": "/from/run", "rollout": {"replicas": 3, "backend": "vllm"}})
    own = write(tmp_path / "rollout.yaml", {"replicas": 2, "server": {"host": "0.0.0.0", "port": 7000}})
    config = service_config(
        RolloutConfig, "rollout", run_config_file=run, config_file=own,
        fields={"model": Path("/from/flag"), "backend": None, "replicas": None}, host=None, port=0,
    )  # fmt: skip
    assert config.model == Path("/from/flag")  # flag over run config
    assert config.backend == "vllm"  # unset flag: the run config's
    assert config.replicas == 2  # the service file over the run config
    assert (config.server.host, config.server.port) == ("0.0.0.0", 0)  # --port over the file's, host kept


def test_an_invalid_service_config_names_the_service_and_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        service_config(ControllerServeConfig, "controller", run_config_file=None, config_file=None,
                       fields={"rollout_address": "a:1"}, host=None, port=None)  # fmt: skip
    lines = str(caught.value).splitlines()
    assert lines[0] == "invalid controller config"
    assert "  reward_address: Field required" in lines and "  trainer_address: Field required" in lines


def test_rounds_is_short_for_set_rounds_rounds() -> None:
    assert command_overrides(["rounds.max_tokens=64", "rounds.rounds=2"], rounds=7) == {
        "rounds.max_tokens": 64, "rounds.rounds": 7,
    }  # fmt: skip
    assert command_overrides([], rounds=None) == {}
    with pytest.raises(OverrideError, match="expected KEY=VALUE"):
        command_overrides(["rounds.max_tokens"], rounds=None)


def test_a_stored_run_config_keeps_its_name_and_takes_overrides(tmp_path: Path) -> None:
    stored = yaml.safe_dump({"run_id": "old-name", "model": str(tmp_path), "rounds": {"rounds": 2}})
    config = stored_run_config(stored, "resumed", {"rounds.rounds": 5})
    assert (config.run_id, config.rounds.rounds, config.model) == ("resumed", 5, tmp_path)
    with pytest.raises(ConfigError) as caught:
        stored_run_config(stored, "resumed", {"rounds.samples_per_prompt": 0})
    assert str(caught.value).startswith("stored run 'resumed': invalid config\n")
    assert "rounds.samples_per_prompt" in str(caught.value) and "(--set rounds.samples_per_prompt)" in str(caught.value)
