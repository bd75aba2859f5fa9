"""Failpoints fire once, where armed, in the way armed: SIGKILL by default, an exception with `=raise`."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mpo import failpoints
from mpo.failpoints import FailpointError, failpoint

KILLED = """
from mpo.failpoints import failpoint
failpoint("other")
print("passed other", flush=True)
failpoint("crash.here")
print("survived", flush=True)
"""


@pytest.fixture
def armed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "failpoints"
    monkeypatch.setenv(failpoints.ENV, str(path))
    return path


def test_raise_mode_raises_once_and_disarms_only_itself(armed: Path) -> None:
    armed.write_text("load.half=raise\ncrash.here\n")
    failpoint("not.armed")
    assert armed.read_text() == "load.half=raise\ncrash.here\n"
    with pytest.raises(FailpointError, match=r"load\.half"):
        failpoint("load.half")
    assert armed.read_text() == "crash.here\n", "fired once: its line is gone, the others stay"
    failpoint("load.half")  # disarmed: passes


def test_plain_entry_still_kills_the_process(armed: Path, tmp_path: Path) -> None:
    armed.write_text("crash.here\n")
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert result.stdout == "passed other\n" and armed.read_text() == ""


def test_unset_or_missing_file_is_off(armed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failpoint("crash.here")  # the file does not exist
    armed.write_text("crash.here=raise\n")
    monkeypatch.delenv(failpoints.ENV)
    failpoint("crash.here")
    assert armed.read_text() == "crash.here=raise\n"
