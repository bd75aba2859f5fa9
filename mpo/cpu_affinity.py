"""Pinning a service's process to CPU cores.

On a CPU-only host the rollout engine and the trainer ranks otherwise float over the same cores, so in
async mode, where they run at once, each slows the other down. `sched_setaffinity` acts on one thread,
so every thread the process has is pinned; threads and processes started later (vLLM's engine core and
worker, torch's OpenMP pool) inherit the mask from the thread that starts them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def pin_process(cores: Sequence[int] | None, *, field: str) -> None:
    """Restrict this process to `cores` (None: leave it as it is); `field` names the setting in errors."""
    if not cores:
        return
    allowed = os.sched_getaffinity(0)
    if missing := sorted(set(cores) - allowed):
        raise ValueError(f"{field}: core(s) {missing} not available on this host (allowed: {sorted(allowed)})")
    for thread in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread), cores)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
