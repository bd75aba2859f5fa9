"""What the dashboard's JSON API returns: runs, rounds and pairs as flat JSON rows.

Rows are derived from the protos' descriptors, so a field added to `RoundMetrics` shows up in the API
and the CSV export without touching this module.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from mpo.v1 import common_pb2, controller_pb2

_ACTIVE_STATES = (controller_pb2.RUN_STATE_RUNNING, controller_pb2.RUN_STATE_PAUSED)


def _flatten(message: Message, prefix: str = "") -> dict[str, Any]:
    """Every field, zeros included, with nested messages and maps as dotted keys (`train.loss`,
    `eval_accuracy.arith`, `eval_hallucination.describe.rate`)."""
    row: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        key = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            of_messages = field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE
            for name, item in sorted(value.items()):
                row.update(_flatten(item, f"{key}.{name}.") if of_messages else {f"{key}.{name}": item})
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            row.update(_flatten(value, key + "."))
        else:
            row[key] = value
    return row


def run_row(run: controller_pb2.Run) -> dict[str, Any]:
    row = _flatten(run)
    row["state"] = controller_pb2.RunState.Name(run.state).removeprefix("RUN_STATE_").lower()
    row["active"] = run.state in _ACTIVE_STATES
    end = time.time() if row["active"] else run.updated_at
    row["duration_seconds"] = max(0.0, end - run.started_at) if run.started_at else 0.0
    row.pop("config_yaml")
    return row


def round_row(record: common_pb2.RoundMetrics) -> dict[str, Any]:
    row = _flatten(record)
    row["pairs"] = record.labels.pairs_correctness + record.labels.pairs_dropout_ntp
    return row


def rounds_csv(rows: list[dict[str, Any]]) -> str:
    """The rounds table as CSV: one column per field seen in any row (tasks may differ by round)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _text(turns: list[dict[str, Any]]) -> str:
    """A conversation's text: string content (text shards) or its text parts (shards with images)."""
    texts: list[str] = []
    for turn in turns:
        content = turn["content"]
        if isinstance(content, str):
            texts.append(content)
        else:
            texts.extend(part["text"] for part in content if part["type"] == "text")
    return "\n".join(texts)


#: What the pair browser shows: read only from the shards that hold the requested page (texts, images, the pair record).
_PAGE_COLUMNS = ["id", "round", "task", "source", "policy_version", "chosen", "rejected", "images", "pair"]


def pair_page(
    shards: Sequence[Path], *, task: str | None = None, source: str | None = None, offset: int = 0, limit: int = 20
) -> tuple[list[dict[str, Any]], int]:
    """One page of committed pairs as the pair browser shows them, and how many match in all.

    Matching reads only ids (and the filtered columns) of every shard; texts and images (the bulk of a
    multimodal shard) are read only for the page's pairs, so a request costs the page, not the run."""
    filters = [(column, "=", value) for column, value in (("task", task), ("source", source)) if value]
    matching: list[tuple[Path, str]] = []
    for shard in shards:
        # Only the ids, plus whichever small columns the filters name (Parquet reads those itself).
        ids = pq.read_table(shard, columns=["id"], filters=filters or None).column("id").to_pylist()
        matching.extend((shard, pair_id) for pair_id in ids)
    page = matching[offset : offset + limit]
    rows: list[dict[str, Any]] = []
    for shard in dict.fromkeys(shard for shard, _ in page):
        wanted = [pair_id for page_shard, pair_id in page if page_shard == shard]
        table = pq.read_table(shard, columns=_PAGE_COLUMNS, filters=[("id", "in", wanted)])
        rows.extend(_pair_row(row) for row in table.to_pylist())
    return rows, len(matching)


def _pair_row(row: dict[str, Any]) -> dict[str, Any]:
    """A pair as the browser shows it (images by index: served by their own endpoint)."""
    pair = common_pb2.PreferencePair.FromString(row["pair"])
    provenance = pair.provenance
    return {
        "id": row["id"],
        "round": row["round"],
        "task": row["task"],
        "source": row["source"],
        "policy_version": row["policy_version"],
        "question": pair.prompt.question,
        "ground_truth": pair.prompt.answer if pair.prompt.HasField("answer") else None,
        "chosen": _text(row["chosen"]),
        "rejected": _text(row["rejected"]),
        "images": len(row["images"]),
        "verifier": provenance.verifier,
        "chosen_answer": provenance.chosen_answer,
        "rejected_answer": provenance.rejected_answer,
    }


def pair_image(shard: Path, pair_id: str, index: int) -> bytes | None:
    """The image bytes of one committed pair (None when the pair or image does not exist)."""
    table = pq.read_table(shard, columns=["id", "images"], filters=[("id", "=", pair_id)])
    rows = table.to_pylist()
    if not rows or not 0 <= index < len(rows[0]["images"]):
        return None
    image = rows[0]["images"][index]
    if image["bytes"] is not None:
        return bytes(image["bytes"])
    path = Path(image["path"] or "")
    return path.read_bytes() if path.is_file() else None
