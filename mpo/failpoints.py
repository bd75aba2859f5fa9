"""Failpoints: named places where a crash test makes the process die by SIGKILL, exactly there, once.

Off unless the environment variable `MPO_FAILPOINTS` names a file; the file lists armed failpoint
names, one per line. A process reaching an armed one removes it from the file (durably, so the
process that replaces it passes) and kills itself with SIGKILL: no cleanup handler runs, as in a real
crash. With the variable unset a failpoint costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from mpo.durable import fsync

ENV = "MPO_FAILPOINTS"


def failpoint(name: str) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    armed_file = Path(path)
    try:
        armed = armed_file.read_text().split()
    except FileNotFoundError:
        return
    if name not in armed:
        return
    armed.remove(name)
    temporary = armed_file.with_suffix(".tmp")
    temporary.write_text("".join(f"{entry}\n" for entry in armed))
    fsync(temporary)
    os.replace(temporary, armed_file)
    fsync(armed_file.parent)
    os.kill(os.getpid(), signal.SIGKILL)
