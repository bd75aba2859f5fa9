"""A record's `meta` as it travels in `Prompt.meta_json`: one JSON object, as text.

Text, not `google.protobuf.Struct`: a Struct turns every number into a double, so a verifier comparing
`meta["count"] == 3` against an int would see 3.0. The sender encodes once (`encode_meta`); every service
decodes with `decode_meta`, which refuses what a verifier could not use and bounds the nesting that a
recursive walk of the value would follow. The byte bound is the service's `max_meta_bytes`, checked before
anything is parsed (`mpo.serving.validation`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

#: Deepest nesting of objects and arrays a meta may have (the scene of a built-in task is 3 deep).
MAX_META_DEPTH = 32


def encode_meta(meta: Mapping[str, Any]) -> str:
    """The compact JSON text of `meta`; empty for an empty meta. JSON has no NaN or Infinity, so those travel
    as null (a data file's missing number), and a value JSON has no type for (a Parquet timestamp) as its
    text. ValueError for a meta nested deeper than `MAX_META_DEPTH`, checked before the recursive encoding
    (which a data file's deepest nesting could otherwise take past Python's recursion limit)."""
    if not meta:
        return ""
    if _depth(meta) > MAX_META_DEPTH:
        raise ValueError(f"nested more than {MAX_META_DEPTH} deep")
    return json.dumps(_finite(meta), ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)


def decode_meta(text: str) -> dict[str, Any]:
    """The object `text` holds ({} for empty). ValueError saying what is wrong: not JSON, NaN or Infinity,
    not an object, or nested deeper than `MAX_META_DEPTH`."""
    if not text:
        return {}
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_META_DEPTH} deep") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object, got {type(value).__name__}")
    if _depth(value) > MAX_META_DEPTH:
        raise ValueError(f"nested more than {MAX_META_DEPTH} deep")
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """Nesting depth of objects and arrays (a flat object is 1), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list | tuple) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_META_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest
