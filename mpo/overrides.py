"""`--set KEY=VALUE`: change fields of a run config from the command line (`mpo run`, bench/online.py).

KEY is a dotted path into the run config's YAML (`rounds.max_tokens`, `rollout.server.limits.max_tokens`);
VALUE is parsed as YAML (`256`, `true`, `null`, `[0, 1]`, `{preference: 1.0}`), so a value means on the
command line what it means in the file. The result is validated as a whole afterwards, like a file, and
every error that a `--set` item caused names that item.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml


class OverrideError(ValueError):
    """A `--set` item that cannot be read or applied; the message names the item."""


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings as {dotted key: YAML-parsed value}; a later item for the same key wins."""
    overrides = {}
    for item in items:
        key, separator, text = item.partition("=")
        if not separator or not key or "" in key.split("."):
            raise OverrideError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY, e.g. rounds.max_tokens=256")
        try:
            overrides[key] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise OverrideError(f"--set {item!r}: the value is not valid YAML: {exc}") from exc
    return overrides


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `raw` with each dotted key set; missing (or null) sections on the way are created.
    `raw` itself is left as it was."""
    result = dict(raw)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        section = result
        for depth, name in enumerate(parents):
            child = section.get(name)
            if child is None:
                child = {}
            elif not isinstance(child, Mapping):
                where = ".".join(parents[: depth + 1])
                raise OverrideError(f"--set {key}: {where} is {child!r}, not a section with fields")
            copied = dict(child)  # the caller's nested sections stay untouched
            section[name] = copied
            section = copied
        section[leaf] = value
    return result


def blame(field: str, message: str, overrides: Iterable[str]) -> list[str]:
    """The `--set` keys behind one validation error on `field` (a dotted path, `<root>` for a check across
    fields, whose message names the fields it compares)."""
    return [
        key
        for key in overrides
        if field == key
        or field.startswith(f"{key}.")
        or key.startswith(f"{field}.")
        or (field == "<root>" and key in message)
    ]
