"""Run-config models and YAML loading: defaults, and errors that name the offending field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mpo.config import TRL_LOSS_TYPE, ConfigError, ObjectiveConfig, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_paper_objective() -> None:
    config = ObjectiveConfig()
    assert config.beta == 0.1
    assert config.terms == {"preference": 0.8, "quality": 0.2, "generation": 1.0}
    assert [TRL_LOSS_TYPE[name] for name in config.terms] == ["sigmoid", "bco_pair", "sft"]


def test_yaml_overrides_and_empty_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "objective:\n  beta: 0.05\n  terms: {preference: 1.0}\n"))
    assert config.objective.beta == 0.05
    assert config.objective.terms == {"preference": 1.0}
    assert load_config(write(tmp_path, "")).objective == ObjectiveConfig()


@pytest.mark.parametrize(
    ("yaml_text", "field", "reason"),
    [
        ("objective: {beta: -0.1}", "objective.beta", "greater than 0"),
        ("objective: {beta: 0}", "objective.beta", "greater than 0"),
        ("objective: {beta: .nan}", "objective.beta", "finite"),
        ("objective: {terms: {dpo: 1.0}}", "objective.terms.dpo", "'preference', 'quality' or 'generation'"),
        ("objective: {terms: {}}", "objective.terms", "at least one"),
        ("objective: {terms: {quality: -1}}", "objective.terms", "'quality' must be a finite number > 0"),
        ("objective: {betta: 0.2}", "objective.betta", "Extra inputs are not permitted"),
        ("objectiv: {}", "objectiv", "Extra inputs are not permitted"),
        ("reward: {task_step_checks: {arith: steps}}", "reward.task_step_checks", "unknown step check 'steps'"),
        ("reward: {task_verifiers: {arith: numerc}}", "reward.task_verifiers", "unknown verifier 'numerc'"),
        ("model: m\nrollout: {cpu_affinity: [0, 0]}", "rollout.cpu_affinity", "each core at most once"),
        ("model: m\nrollout: {cpu_affinity: []}", "rollout.cpu_affinity", "at least 1 item"),
        ("model: m\ntrainer: {cpu_affinity: [-1]}", "trainer.cpu_affinity.0", "greater than or equal to 0"),
    ],
)
def test_invalid_values_name_the_field(tmp_path: Path, yaml_text: str, field: str, reason: str) -> None:
    path = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"  {field}: " in message
    assert reason in message


def test_python_construction_also_validates() -> None:
    with pytest.raises(ValidationError, match="beta"):
        ObjectiveConfig(beta=-1.0)
    with pytest.raises(ValidationError, match="terms"):
        ObjectiveConfig(terms={"sft": 1.0})


@pytest.mark.parametrize(
    ("yaml_text", "reason"),
    [("objective: [1, 2", "not valid YAML"), ("- a\n- b\n", "top level must be a mapping")],
)
def test_unreadable_documents(tmp_path: Path, yaml_text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        load_config(write(tmp_path, yaml_text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def test_the_printed_example_is_a_complete_valid_config(tmp_path: Path) -> None:
    from mpo.config import RunConfig
    from mpo.config_example import example_yaml

    text = example_yaml()
    config = load_config(write(tmp_path, text))
    assert config.model is not None and config.data is not None and config.trainer is not None
    assert config == RunConfig.model_validate({"run_id": "arith-demo", "model": "runs/base", "data": config.data})
    for name in RunConfig.model_fields:
        assert f"\n{name}:" in text, f"{name} missing from the example"
    assert "  # Data-parallel ranks" in text, "descriptions become comments"
