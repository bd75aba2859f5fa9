"""Small helpers shared by the built-in tasks: seed derivation, split hashing and list phrasing."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts; stable across processes (Python's `hash` is salted per process)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def key_fraction(key: str) -> float:
    """Position of a dedup key in [0, 1); split membership is a pure function of the item's content."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"mpo-split").digest()
    return int.from_bytes(digest, "big") / 2**64


def join_words(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c': the one list style every demonstration uses."""
    if not items:
        raise ValueError("nothing to join")
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def option_letter(index: int) -> str:
    return chr(ord("A") + index)


def options_suffix(choices: Sequence[str]) -> str:
    """'(A) red (B) blue': options listed at the end of the question so the model sees them."""
    return " ".join(f"({option_letter(i)}) {choice}" for i, choice in enumerate(choices))
