"""Run-config models and YAML loading: defaults, and errors that name the offending field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mpo.config import (
    TRL_LOSS_TYPE,
    ConfigError,
    ObjectiveConfig,
    RequestLimits,
    RewardConfig,
    RoundsConfig,
    RunConfig,
    ScorerConfig,
    load_config,
    run_config,
)
from mpo.overrides import OverrideError, apply_overrides, parse_overrides


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
        (
            "reward: {task_mention_counters: {describe: shapes}}",
            "reward.task_mention_counters",
            "task 'describe': unknown mention counter 'shapes'; known: scene_objects",
        ),
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


def limits(**values: object) -> dict[str, object]:
    return {"server": {"limits": values}}


@pytest.mark.parametrize(
    ("sections", "problem"),
    [
        ({"rounds": {"max_tokens": 4096}}, "rounds.max_tokens (4096) exceeds rollout.server.limits.max_tokens (2048)"),
        (
            {"rounds": {"max_tokens": 2048}},
            "rounds.max_tokens (2048) leaves no room for a prompt within rollout.max_model_len (2048)",
        ),
        (
            {"rounds": {"eval_max_tokens": 3000}},
            "rounds.eval_max_tokens (3000) exceeds rollout.server.limits.max_tokens (2048)",
        ),
        (
            {"reward": {"continuation_max_tokens": 4096}},
            "reward.continuation_max_tokens (4096) exceeds rollout.server.limits.max_tokens (2048)",
        ),
        (
            {"rounds": {"samples_per_prompt": 65}},
            "rounds.samples_per_prompt (65) exceeds rollout.server.limits.max_samples_per_prompt (64)",
        ),
        (
            {"rollout": limits(max_batch_prompts=16)},
            "rounds.prompts_per_round (32) exceeds rollout.server.limits.max_batch_prompts (16)",
        ),
        (
            {"reward": limits(max_batch_prompts=16)},
            "rounds.prompts_per_round (32) exceeds reward.server.limits.max_batch_prompts (16)",
        ),
        (
            {"rollout": limits(max_batch_prompts=48)},
            "held-out prompts per call (rounds.eval_prompts 200, sent 64 at a time) = 64 exceeds "
            "rollout.server.limits.max_batch_prompts (48)",
        ),
        (
            {"reward": limits(max_samples_per_request=200)},
            "samples per round: rounds.prompts_per_round × rounds.samples_per_prompt (32 × 8) = 256 exceeds "
            "reward.server.limits.max_samples_per_request (200)",
        ),
        (
            {"trainer": limits(max_pairs_per_request=400)},
            "pairs per round, at most: rounds.prompts_per_round × rounds.max_pairs_per_prompt (32 × 15) = 480 "
            "exceeds trainer.server.limits.max_pairs_per_request (400)",
        ),
        (
            {
                "rounds": {"samples_per_prompt": 4, "max_pairs_per_prompt": 15},
                "trainer": limits(max_pairs_per_request=100),
            },
            "pairs per round, at most: rounds.prompts_per_round × what rounds.samples_per_prompt (4) can make "
            "(32 × 4) = 128 exceeds trainer.server.limits.max_pairs_per_request (100)",
        ),
        (
            {"rollout": {"max_model_len": 4096}},
            "trainer.max_length (2048) is below rollout.max_model_len (4096)",
        ),
        (
            {"rounds": {"max_pairs_per_prompt": 4}, "reward": {"max_pairs_per_prompt": 15}},
            "reward.max_pairs_per_prompt (15) differs from rounds.max_pairs_per_prompt (4)",
        ),
        (
            {"reward": limits(known_tasks=["arith"])},
            "reward.server.limits.known_tasks lacks describe (in rollout.server.limits.known_tasks)",
        ),
        (
            {"trainer": limits(max_question_chars=1000)},
            "trainer.server.limits.max_question_chars (1000) is below rollout.server.limits.max_question_chars (32768)",
        ),
        (
            {"reward": limits(max_meta_bytes=0)},
            "reward.server.limits.max_meta_bytes (0) is below rollout.server.limits.max_meta_bytes (65536)",
        ),
    ],
)
def test_limits_that_disagree_across_services_are_one_error_naming_both_fields(
    tmp_path: Path, sections: dict[str, object], problem: str
) -> None:
    path = write(tmp_path, yaml.safe_dump({"model": "m", **sections}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    assert lines[1] == "  <root>: limits across services disagree:"
    assert any(line.startswith(f"    {problem}") for line in lines[2:]), lines


def test_limits_that_agree_pass_and_unused_budgets_are_not_checked() -> None:
    # The defaults, the demo's recipe, and limits raised together all agree.
    assert RunConfig.model_validate({"model": "m"}).rounds.max_pairs_per_round == 32 * 15
    raised = {
        "model": "m",
        "rounds": {"prompts_per_round": 512, "max_tokens": 1024},
        "rollout": {"max_model_len": 4096, **limits(max_batch_prompts=512)},
        "reward": limits(max_batch_prompts=512),
        "trainer": {"max_length": 4096, **limits(max_pairs_per_request=512 * 15)},
    }
    assert RunConfig.model_validate(raised).rounds.max_tokens == 1024
    # Without evaluations the held-out budget is never sent; without a model there is no rollout to check.
    RunConfig.model_validate({"model": "m", "rounds": {"eval_every": 0, "eval_max_tokens": 4096}})
    RunConfig.model_validate({"rounds": {"max_tokens": 4096}})
    # Small held-out sets go in one call that must fit, not one of 64.
    small = {
        "model": "m",
        "rounds": {"prompts_per_round": 16, "eval_prompts": 16},
        "rollout": limits(max_batch_prompts=16),
    }
    RunConfig.model_validate(small)


def test_the_held_out_budget_defaults_to_max_tokens() -> None:
    rounds = RunConfig.model_validate({"rounds": {"max_tokens": 300}}).rounds
    assert rounds.eval_max_tokens is None and rounds.heldout_max_tokens == 300
    assert RoundsConfig(max_tokens=300, eval_max_tokens=64).heldout_max_tokens == 64


def test_the_reward_pair_cap_is_the_rounds_cap() -> None:
    """The controller sends rounds.max_pairs_per_prompt with every BuildPairs call; the served reward
    section says the same, and a stored (dumped) config validates again unchanged."""
    config = RunConfig.model_validate({"model": "m", "rounds": {"max_pairs_per_prompt": 4}})
    assert config.reward.max_pairs_per_prompt == 4
    assert RunConfig.model_validate(config.model_dump(mode="json")) == config
    assert RunConfig(rounds=RoundsConfig(max_pairs_per_prompt=4)).reward.max_pairs_per_prompt == 4
    assert RunConfig.model_validate({"reward": {"max_pairs_per_prompt": 15}}).reward.max_pairs_per_prompt == 15


def test_dropout_ntp_sides_are_matched_one_way_at_most() -> None:
    assert RewardConfig(dropout_ntp_match_length=True).dropout_ntp_match_length
    for other in ("dropout_ntp_finished_only", "dropout_ntp_unterminated"):
        with pytest.raises(ValidationError, match=f"dropout_ntp_match_length does not go with {other}"):
            RewardConfig.model_validate({"dropout_ntp_match_length": True, other: True})


def test_trust_remote_code_is_off_unless_asked_and_reaches_both_model_loaders() -> None:
    config = RunConfig.model_validate({"model": "m"})
    assert config.rollout is not None and config.trainer is not None
    assert not (config.trust_remote_code or config.rollout.trust_remote_code or config.trainer.trust_remote_code)
    trusted = RunConfig.model_validate({"model": "m", "trust_remote_code": True})
    assert trusted.rollout is not None and trusted.trainer is not None
    assert trusted.rollout.trust_remote_code and trusted.trainer.trust_remote_code
    assert ScorerConfig(model=Path("s")).trust_remote_code is False


def test_set_items_parse_as_yaml_and_name_themselves_when_malformed() -> None:
    overrides = parse_overrides(["rounds.max_tokens=256", "trainer.cpu_affinity=[0, 1]", "rollout.seed=", "a.b=x=y"])
    assert overrides == {"rounds.max_tokens": 256, "trainer.cpu_affinity": [0, 1], "rollout.seed": None, "a.b": "x=y"}
    assert parse_overrides(["rounds.max_tokens=1", "rounds.max_tokens=2"]) == {"rounds.max_tokens": 2}
    for item in ("rounds.max_tokens", "=3", "rounds..max_tokens=3", "rounds.=3"):
        with pytest.raises(OverrideError, match=re.escape(f"--set '{item}': expected KEY=VALUE")):
            parse_overrides([item])
    with pytest.raises(OverrideError, match=re.escape("--set 'objective.terms={a: 1': the value is not valid YAML")):
        parse_overrides(["objective.terms={a: 1"])


def test_set_items_apply_to_a_copy_creating_missing_sections() -> None:
    raw = {"rounds": {"rounds": 3}, "rollout": None}
    changed = apply_overrides(raw, {"rounds.max_tokens": 64, "rollout.server.limits.max_tokens": 512})
    assert changed == {
        "rounds": {"rounds": 3, "max_tokens": 64},
        "rollout": {"server": {"limits": {"max_tokens": 512}}},
    }
    assert raw == {"rounds": {"rounds": 3}, "rollout": None}, "the caller's dict is untouched"
    with pytest.raises(OverrideError, match=r"--set rounds.rounds.x: rounds.rounds is 3, not a section with fields"):
        apply_overrides(raw, {"rounds.rounds.x": 1})


def test_load_config_with_set_items_names_the_item_behind_each_error(tmp_path: Path) -> None:
    path = write(tmp_path, "model: m\nrounds: {max_tokens: 64}\n")
    config = load_config(path, {"rounds.max_tokens": 128, "rollout.max_model_len": 4096, "trainer.max_length": 4096})
    assert config.rounds.max_tokens == 128 and config.rollout is not None and config.rollout.max_model_len == 4096
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"rounds.max_tokens": "many", "rollout.max_model_len": 4096, "objective.beta": 0.2})
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: invalid config"
    assert lines[1].startswith("  rounds.max_tokens: Input should be a valid integer") and lines[1].endswith(
        "(--set rounds.max_tokens)"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"rollout.max_model_len": 4096})
    problem = "trainer.max_length (2048) is below rollout.max_model_len (4096)"
    assert any(
        problem in line and line.endswith("(--set rollout.max_model_len)") for line in str(caught.value).splitlines()
    )
    with pytest.raises(ConfigError, match=f"{path}: --set rounds.max_tokens.limit: rounds.max_tokens is 64"):
        load_config(path, {"rounds.max_tokens.limit": 1})
    stored = run_config({"model": "m"}, source="stored run 'r1'", overrides={"rounds.rounds": 20})
    assert stored.rounds.rounds == 20


def test_tasks_the_config_names_are_known_to_every_service() -> None:
    """Mapping a verifier for a task (or a data set's default task) is enough: no service refuses it later."""
    config = RunConfig.model_validate(
        {
            "model": "m",
            "data": {"train": "t", "heldout": "h", "task": "gsm8k"},
            "reward": {"task_verifiers": {"geo": "exact"}},
        }
    )
    for service in (config.rollout, config.reward, config.trainer):
        assert service is not None and {"gsm8k", "geo", "arith"} <= set(service.server.limits.known_tasks)


def test_greedy_rounds_with_several_samples_are_refused() -> None:
    """n identical greedy samples give no pairs, and the rollout service would refuse every Generate."""
    with pytest.raises(ValidationError, match="decodes greedily: 8 samples per prompt"):
        RoundsConfig(temperature=0.0, samples_per_prompt=8)
    assert RoundsConfig(temperature=0.0, samples_per_prompt=1).temperature == 0.0


def test_offline_rounds_evaluate_only_after_the_last_round() -> None:
    """An evaluation publishes the trained weights, which every later offline round would then sample."""
    with pytest.raises(ValidationError, match=r"eval_every \(5\) evaluates before the last round.*0 or 20"):
        RoundsConfig(rounds=20, eval_every=5, sample_from="base")
    for eval_every in (0, 20, 25):
        assert RoundsConfig(rounds=20, eval_every=eval_every, sample_from="base").sample_from == "base"
    assert RoundsConfig(rounds=20, eval_every=5).sample_from == "policy"


def test_security_page_lists_every_request_limit() -> None:
    """docs/security.md is where operators look up what bounds a request: no limit may be missing there."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
    limits = [*RequestLimits.model_fields, "max_message_bytes", "max_concurrent_rpcs", "max_infrastructure_calls"]
    limits += ["weight_stream_idle_seconds", "readable_roots", "data_roots", "max_queued_requests"]
    assert [name for name in limits if f"`{name}`" not in page] == []
