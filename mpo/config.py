"""Configuration: pydantic models are the one source of truth (CLI, YAML files, Helm values).

Every model forbids unknown keys, so a misspelt field is an error that names it rather than a silently
ignored setting.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: The MPO loss terms (DESIGN §3) and their names in TRL's DPOTrainer ``loss_type`` list.
TermName = Literal["preference", "quality", "generation"]
TRL_LOSS_TYPE: dict[str, str] = {"preference": "sigmoid", "quality": "bco_pair", "generation": "sft"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ObjectiveConfig(_Strict):
    """The MPO objective: L = Σ weight·term over the selected terms (paper weights by default)."""

    beta: float = Field(0.1, gt=0, allow_inf_nan=False, description="KL strength β scaling the log-ratio rewards z.")
    terms: dict[TermName, float] = Field(
        default_factory=lambda: {"preference": 0.8, "quality": 0.2, "generation": 1.0},
        description=(
            "Selected loss terms and their weights: preference (DPO sigmoid), quality (BCO pair with "
            "reward shift δ), generation (SFT token-mean NLL on the chosen). Leave a term out to ablate it; "
            "unselected terms are still computed and reported, but carry no gradient."
        ),
    )

    @field_validator("terms")
    @classmethod
    def _weights_are_usable(cls, terms: dict[str, float]) -> dict[str, float]:
        if not terms:
            raise ValueError("select at least one of preference, quality, generation")
        for name, weight in terms.items():
            if not math.isfinite(weight) or weight <= 0:
                raise ValueError(f"weight of term '{name}' must be a finite number > 0, got {weight}")
        return terms


class RunConfig(_Strict):
    """Everything one online-MPO run needs. Sections are added as the services land."""

    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and every offending field."""


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML run config; an empty file means all defaults."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid config\n{format_validation_error(exc)}") from exc


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each starting with the dotted field path (``objective.terms.foo``)."""
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"] if part != "[key]")
        lines.append(f"  {field or '<root>'}: {error['msg']}")
    return "\n".join(lines)
