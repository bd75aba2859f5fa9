"""Failpoints: named places where a fault test makes the process fail exactly there, once.

Off unless the environment variable `MPO_FAILPOINTS` names a file; the file lists armed failpoints,
one per line, each as `name` or `name=raise`. A process reaching an armed one removes its line from the
file (durably, so the process that replaces it passes) and then fails:

- `name`: kills itself with SIGKILL: no cleanup handler runs, as in a real crash;
- `name=raise`: raises `FailpointError` there, a fault the code around it must survive or contain.

With the variable unset a failpoint costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from mpo.durable import atomic_write

ENV = "MPO_FAILPOINTS"
RAISE = "raise"


class FailpointError(RuntimeError):
    """The fault of a failpoint armed as `name=raise`."""


def failpoint(name: str) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    armed_file = Path(path)
    try:
        armed = armed_file.read_text().split()
    except FileNotFoundError:
        return
    entry = next((e for e in armed if e.partition("=")[0] == name), None)
    if entry is None:
        return
    armed.remove(entry)
    atomic_write(armed_file, "".join(f"{e}\n" for e in armed).encode())
    if entry.partition("=")[2] == RAISE:
        raise FailpointError(f"failpoint {name} fired")
    os.kill(os.getpid(), signal.SIGKILL)
