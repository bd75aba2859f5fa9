"""Looking into the processes behind Ray actors: which cores their threads, and their children's, may use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


async def actor_pid(actor: Any) -> int:
    return await actor.__ray_call__.remote(lambda _instance: os.getpid())


def thread_affinities(pid: int) -> dict[tuple[int, int], frozenset[int]]:
    """{(process id, thread id): allowed cores} for every thread of `pid` and of its descendant processes."""
    affinities: dict[tuple[int, int], frozenset[int]] = {}
    pending = [pid]
    while pending:
        process = pending.pop()
        try:
            threads = os.listdir(f"/proc/{process}/task")
        except FileNotFoundError:  # exited meanwhile
            continue
        for thread in threads:
            try:
                affinities[process, int(thread)] = frozenset(os.sched_getaffinity(int(thread)))
                children = Path(f"/proc/{process}/task/{thread}/children").read_text().split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            pending.extend(int(child) for child in children)
    return affinities
