"""One rule for the grading registries (verifiers, step checks, mention counters): a name maps to one
thing, so that a task's mapping in the config is unambiguous."""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol, TypeVar


class Named(Protocol):
    name: str


T = TypeVar("T", bound=Named)


def register_named(registry: dict[str, T], item: T, kind: str, reserved: Collection[str] = ()) -> T:
    """`item` added to `registry` under its name; ValueError when the name is taken (or `reserved`)."""
    if item.name in reserved or item.name in registry:
        raise ValueError(f"the {kind} name {item.name!r} is taken")
    registry[item.name] = item
    return item
