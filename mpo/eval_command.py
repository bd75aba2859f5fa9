"""`mpo eval`: what to evaluate, from the flags or from a run config (its model and held-out split), under
the run's own prompt template, verifiers and trust_remote_code when a config is given."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from mpo.config import ConfigError, RunConfig, load_config
from mpo.data.loader import DataError, load_prompts
from mpo.data.records import PromptRecord
from mpo.data.sources import load_split
from mpo.evaluation import EvalResult, evaluate
from mpo.grading.verify import Grader
from mpo.models.generate import Sampling, TransformersGenerator


def evaluate_model(
    *,
    model: Path | None,
    data: Path | None,
    config: Path | None,
    sampling: Sampling,
    limit: int | None = None,
    trust_remote_code: bool = False,
    on_bad_row: Literal["reject", "skip"] = "reject",
) -> EvalResult:
    """Evaluate `model` (default: the run config's) on the `data` file (default: the run config's held-out
    split), its first `limit` prompts. A missing or unreadable input raises ConfigError or DataError."""
    run = load_config(config) if config is not None else None
    model = model or (run.model if run else None)
    if model is None:
        raise ConfigError("--model: required (or a --config with `model`)")
    records = _records(data, run, on_bad_row)
    generator = TransformersGenerator(
        model,
        prompt=run.prompt if run else None,
        trust_remote_code=trust_remote_code or bool(run and run.trust_remote_code),
    )
    grader = Grader.from_config(run.reward) if run else None  # the run's verifiers and extraction
    return evaluate(generator, records[:limit], sampling, grader)


def _records(data: Path | None, run: RunConfig | None, on_bad_row: Literal["reject", "skip"]) -> list[PromptRecord]:
    if data is not None:
        return load_prompts(data, on_bad_row=on_bad_row).records
    if run is not None and run.data is not None:
        try:  # the run's own held-out split, through its column mapping and answer format
            return load_split(run.data, "heldout", image_dir=run.store_dir / "images").records
        except DataError as exc:
            raise ConfigError(f"data.heldout: {exc}") from exc
    raise ConfigError("--data: required (or a --config with `data`)")
