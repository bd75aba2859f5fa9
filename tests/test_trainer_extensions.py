"""DeepSpeed's CPU collective op, built the way a trainer rank builds it (a fresh process each time): a
`lock` left by a killed build no longer hangs the next rank, and a build in progress is still waited for."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpo.trainer.extensions import GUARD_FILE, extensions_dir

BUILD = "from mpo.trainer.extensions import build_collective_op; print(build_collective_op())"
#: A first build compiles C++ on 2 cores; a load of the built op takes seconds (a hang: for ever).
BUILD_TIMEOUT_S, LOAD_TIMEOUT_S = 600, 120


def build_process() -> subprocess.Popen[str]:
    env = {key: value for key, value in os.environ.items() if key != "TORCH_EXTENSIONS_DIR"}
    return subprocess.Popen(
        [sys.executable, "-c", BUILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen[str], timeout: float = LOAD_TIMEOUT_S) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def op_folder() -> Path:
    """The op built (or loaded) once in this environment's own folder, as a rank's first setup does."""
    assert finish(build_process(), BUILD_TIMEOUT_S).strip().endswith("True")  # the CPU accelerator offers the op
    folder = extensions_dir() / "deepspeed_shm_comm"
    assert any(folder.glob("*.so")), sorted(folder.iterdir())
    return folder


def test_a_lock_left_by_a_killed_build_is_removed_and_the_op_loads(op_folder: Path) -> None:
    stale = op_folder / "lock"
    stale.touch()  # what a build killed between taking and releasing torch's lock leaves
    output = finish(build_process())
    assert output.strip().endswith("True")
    assert "left by an extension build that was killed" in output
    assert not stale.exists()


def test_a_build_in_progress_is_waited_for_not_broken(op_folder: Path) -> None:
    lock = op_folder / "lock"
    with open(extensions_dir() / GUARD_FILE, "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # this process is "building": its lock is live
        lock.touch()
        process = build_process()
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        assert lock.exists()  # a waiting rank does not take a live build's lock away
        lock.unlink()  # the build ends: its lock is released with the guard
    assert finish(process).strip().endswith("True")
