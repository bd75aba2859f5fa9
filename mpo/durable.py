"""Making writes survive a power cut or kill -9: what the ledgers and checkpoints commit with."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries (a rename is durable once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            fsync(Path(directory) / name)
        fsync(Path(directory))


def atomic_write(target: Path, data: bytes | Callable[[Path], object], *, mode: int = 0o644) -> None:
    """`target` holds `data` whole or not at all: a temporary file beside it, fsync, rename, fsync of the
    folder. `data` is the bytes, or a writer given the temporary file's path (Parquet, a streamed JSONL).
    `mode` replaces mkstemp's 0600, which would hide the file from other users of a shared store."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        if isinstance(data, bytes):
            temporary.write_bytes(data)
        else:
            data(temporary)
        temporary.chmod(mode)  # after the writer: one that recreates the file would otherwise drop it
        fsync(temporary)
        os.replace(temporary, target)
        fsync(target.parent)
    finally:
        temporary.unlink(missing_ok=True)
