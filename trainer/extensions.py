"""DeepSpeed's JIT-compiled collective op: built once per environment, never waited on for ever.

On CPU, `deepspeed.init_distributed` compiles a shared-memory collective (`deepspeed_shm_comm`) with
torch's extension builder. That builder guards a build with a `lock` file, and a build that is killed
(a rank lost, a test run interrupted) leaves the file behind: every later rank on the machine then waits
on it for ever, inside `init_distributed`, with nothing in its log. Two virtualenvs sharing torch's
default folder also rebuild over each other (their include paths differ), so that window opens often.

So each environment builds into its own folder, and the ranks of a machine build one at a time under a
kernel lock (`flock`), which dies with the process that holds it. Whoever holds it knows that any `lock`
file in the folder was left by a build that is gone, removes it, and builds or loads the op; the
`init_distributed` that follows then finds the op loaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import sys
from importlib.metadata import version
from pathlib import Path

log = logging.getLogger(__name__)

#: The op `deepspeed.init_distributed` builds on accelerators that offer it (CPU).
COLLECTIVE_OP = "ShareMemCommBuilder"
#: The kernel lock, in the extensions folder, that the machine's builds take turns on.
GUARD_FILE = ".onlinempo-build.lock"


def extensions_dir() -> Path:
    """This environment's own build folder: keyed by interpreter prefix and torch/DeepSpeed versions (read
    from the installed metadata, so a caller that only passes the folder on imports neither)."""
    versions = "|".join(version(package) for package in ("torch", "deepspeed"))
    key = hashlib.sha256(f"{sys.prefix}|{versions}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "onlinempo" / "torch_extensions" / key


def build_collective_op() -> bool:
    """Build or load the op `deepspeed.init_distributed` would build; call it first. `TORCH_EXTENSIONS_DIR`,
    where set, names the folder (it must then be built only by OnlineMPO, whose stale locks this removes).
    False: this accelerator has no such op."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder(COLLECTIVE_OP)
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return False
    root = Path(os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir())))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / GUARD_FILE, "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # released by the kernel however its holder ends
        for stale in root.glob("*/lock"):
            log.warning("removing %s, left by an extension build that was killed", stale)
            stale.unlink(missing_ok=True)
        builder.load(verbose=False)
    return True
