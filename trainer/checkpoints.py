"""Checkpoints that survive a crash at any moment: written aside, then committed by two renames.

Layout under the checkpoint root:

    step-000000042/            one committed checkpoint
        step-000000042/        DeepSpeed's files (every rank's shards, optimizer and scheduler)
        trainer.json           the host's state: counters, policy version, trained pair ids, model
    LATEST                     the name of the newest committed checkpoint
    BEST                       the name of the checkpoint marked best (kept however old it gets)
    .staging-step-…/           a write in progress (deleted on start: a crash left it)

A checkpoint is written into a staging directory, fsynced, renamed into place, and only then named by
`LATEST` (itself replaced atomically). A crash before the last rename leaves `LATEST` naming the
previous checkpoint, complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpo.durable import atomic_write, fsync, fsync_tree

_POINTER = "LATEST"
_BEST = "BEST"
_STAGING = ".staging-"
_META = "trainer.json"


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name


def read_checkpoint(path: Path) -> Checkpoint:
    """A committed checkpoint directory (as `mpo export` takes it)."""
    meta_file = path / _META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a trainer checkpoint (no {_META})")
    return Checkpoint(path, json.loads(meta_file.read_text()))


class CheckpointStore:
    def __init__(self, root: Path, *, keep: int) -> None:
        self.root = Path(root)
        self.keep = keep
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(f"{_STAGING}*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def latest(self) -> Checkpoint | None:
        pointer = self.root / _POINTER
        if not pointer.exists():
            return None
        return read_checkpoint(self.root / pointer.read_text().strip())

    def find(self, name: str) -> Checkpoint | None:
        path = self.root / name
        return read_checkpoint(path) if (path / _META).is_file() else None

    def staging(self, name: str) -> Path:
        """An empty directory to write checkpoint `name` into; its DeepSpeed tag is `name` too."""
        path = self.root / f"{_STAGING}{name}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def best(self) -> Checkpoint | None:
        pointer = self.root / _BEST
        return self.find(pointer.read_text().strip()) if pointer.exists() else None

    def mark_best(self, name: str) -> Checkpoint:
        """Name committed checkpoint `name` the best: pruning spares it until another is marked."""
        checkpoint = self.find(name)
        if checkpoint is None:
            raise ValueError(f"no committed checkpoint {name}")
        atomic_write(self.root / _BEST, name.encode())
        self._prune(keep=name)  # the previous best may be pruned now
        return checkpoint

    def commit(self, name: str, meta: dict[str, Any]) -> Checkpoint:
        current = self.latest()
        if current is not None and current.name == name:
            raise ValueError(f"checkpoint {name} is committed already; it is never rewritten in place")
        staging = self.root / f"{_STAGING}{name}"
        (staging / _META).write_text(json.dumps(meta))
        fsync_tree(staging)
        final = self.root / name
        if final.exists():  # an older write of the same step that LATEST no longer names
            shutil.rmtree(final)
        os.replace(staging, final)
        fsync(self.root)  # the rename is durable before LATEST names it
        atomic_write(self.root / _POINTER, name.encode())
        self._prune(keep=name)
        return Checkpoint(final, meta)

    def _prune(self, keep: str) -> None:
        """Delete all but the newest `self.keep` checkpoints, never `keep`, LATEST's or BEST's."""
        spared = {keep}
        for pointer in (_POINTER, _BEST):
            if (self.root / pointer).exists():
                spared.add((self.root / pointer).read_text().strip())
        committed = sorted(p for p in self.root.iterdir() if p.is_dir() and (p / _META).is_file())
        for old in committed[: max(0, len(committed) - self.keep)]:
            if old.name not in spared:
                shutil.rmtree(old, ignore_errors=True)
