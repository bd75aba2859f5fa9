"""Whether a path a client names lies inside configured folders (readable roots, data roots).

One rule for every service that reads files on a client's behalf: symlinks are followed before the
comparison, and a path that cannot be resolved lies nowhere.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path


def resolved_roots(roots: Iterable[Path]) -> frozenset[Path]:
    """Folders as `inside` compares them: absolute, symlinks followed."""
    return frozenset(Path(root).resolve() for root in roots)


def inside(path: Path, roots: Collection[Path]) -> bool:
    """Whether `path`, symlinks followed, lies in one of `roots` (from `resolved_roots`). Whether the file
    exists plays no part: a client learns nothing about files outside the roots. A path that cannot be
    resolved (a symlink loop, a NUL byte) lies nowhere."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return resolved in roots or any(parent in roots for parent in resolved.parents)
