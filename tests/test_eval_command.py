"""What `mpo eval` evaluates: the model and records from the flags, else from the run config; a missing or
broken input is named before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mpo.config import ConfigError
from mpo.data.loader import DataError, write_prompts_jsonl
from mpo.eval_command import evaluate_model
from mpo.models.generate import Sampling
from mpo.models.tiny import build_text_model
from tests.controller_helpers import sums
from tests.rollout_helpers import CORPUS, SMALL

GREEDY = Sampling(max_new_tokens=4)


def run_config(tmp_path: Path, **raw: object) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_inputs_missing_from_flags_and_config_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--model: required \(or a --config with `model`\)$"):
        evaluate_model(model=None, data=None, config=None, sampling=GREEDY)
    config = run_config(tmp_path, model=str(tmp_path / "absent-model"))
    with pytest.raises(ConfigError, match=r"^--data: required \(or a --config with `data`\)$"):
        evaluate_model(model=None, data=None, config=config, sampling=GREEDY)
    gone = str(tmp_path / "gone.jsonl")
    config = run_config(tmp_path, model=str(tmp_path), data={"train": gone, "heldout": gone})
    with pytest.raises(ConfigError, match=r"^data\.heldout: .*gone\.jsonl"):
        evaluate_model(model=None, data=None, config=config, sampling=GREEDY)


def test_a_bad_row_is_refused_unless_skipped(tmp_path: Path) -> None:
    data = tmp_path / "heldout.jsonl"
    write_prompts_jsonl(sums(5, 0), data)
    data.write_text(data.read_text() + '{"id": "broken"}\n')
    with pytest.raises(DataError, match=r"heldout\.jsonl:6: question: missing required field"):
        evaluate_model(model=tmp_path / "not-loaded", data=data, config=None, sampling=GREEDY)
    model = build_text_model(tmp_path / "model", CORPUS, SMALL, seed=0)
    result = evaluate_model(model=model, data=data, config=None, sampling=GREEDY, limit=3, on_bad_row="skip")
    assert (result.prompts, result.samples_per_prompt) == (3, 1)
    result = evaluate_model(model=model, data=data, config=None, sampling=GREEDY, on_bad_row="skip")
    assert result.prompts == 5  # the broken row skipped, every good one evaluated
