"""`mpo config example`: a complete, commented run config written from the pydantic models themselves,
so the example can never drift from what `RunConfig` accepts."""

from __future__ import annotations

import json

from pydantic import BaseModel

from mpo.config import RunConfig

#: Values for the fields a run must set; everything else shows its default.
_EXAMPLE = {
    "run_id": "arith-demo",
    "model": "runs/base",
    "data": {"train": "data/arith/train.jsonl", "heldout": "data/arith/heldout.jsonl"},
}
#: Filled from the top level (`model`, `objective`), so the example leaves them out of the sections.
_FILLED_IN = {
    ("rollout", "model"),
    ("trainer", "model"),
    ("trainer", "objective"),
    ("rollout", "trust_remote_code"),
    ("trainer", "trust_remote_code"),
    ("rollout", "prompt"),
    ("trainer", "prompt"),
    ("reward", "max_pairs_per_prompt"),
}


def commented_yaml(
    model: BaseModel, *, skip: set[tuple[str, ...]] = frozenset(), path: tuple[str, ...] = (), indent: int = 0
) -> list[str]:
    """YAML lines of `model`'s values, each field preceded by its description as a comment; fields whose
    path is in `skip` are left out."""
    lines = []
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        if (*path, name) in skip:
            continue
        if field.description:
            lines.append(f"{pad}# {field.description}")
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            lines.extend(commented_yaml(value, skip=skip, path=(*path, name), indent=indent + 1))
        else:
            lines.append(f"{pad}{name}: {json.dumps(value, default=str)}")  # JSON is YAML
    return lines


def example_yaml() -> str:
    config = RunConfig.model_validate(_EXAMPLE)
    header = [
        "# OnlineMPO run config: `mpo run --config FILE`. Every key below is optional except model and data;",
        "# unknown keys are errors. Written from mpo/config.py by `mpo config example`.",
    ]
    return "\n".join(header + commented_yaml(config, skip=_FILLED_IN)) + "\n"
