"""Reading what the W&B client wrote offline, without a W&B server: the run's transaction log.

The `.wandb` file is a LevelDB-style log (W&B's "datastore" format): a 7-byte file header, then 32 KiB
blocks of chunks, each with a 7-byte header (CRC, length, type: 1 full, 2 first, 3 middle, 4 last) and
a piece of one serialized `wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _LAST = 1, 4


def _records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data.startswith(b":W&B"), f"{path} is not a W&B transaction log"
    records, pending, position = [], b"", _HEADER
    while position + _HEADER <= len(data):
        left_in_block = _BLOCK - position % _BLOCK
        if left_in_block < _HEADER:  # block trailer padding
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + _HEADER])
        if kind == 0 and length == 0:  # zero padding: the rest of the file was not written yet
            break
        pending += data[position + _HEADER : position + _HEADER + length]
        position += _HEADER + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(directory: Path, run_id: str) -> list[dict[str, Any]]:
    """Every history row logged to W&B run `run_id` under `directory`, over all its offline run folders
    (a resumed run writes a new one), in the order the folders were created."""
    rows = []
    for log in sorted(directory.glob(f"**/offline-run-*-{run_id}/run-{run_id}.wandb")):
        for record in _records(log):
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                )
    return rows
