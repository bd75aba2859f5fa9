"""`pin_process` on real threads: the pinning reaches threads started before it, and what they start after."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mpo.cpu_affinity import pin_process

_PIN_IN_A_CHILD = """
import json, os, sys, threading
from mpo.cpu_affinity import pin_process
core = int(sys.argv[1])
release = threading.Event()
earlier = threading.Thread(target=release.wait)
earlier.start()
pin_process([core], field="rollout.cpu_affinity")
later = threading.Thread(target=release.wait)
later.start()
affinities = {tid: sorted(os.sched_getaffinity(int(tid))) for tid in os.listdir("/proc/self/task")}
child = os.fork()
if child == 0:
    os._exit(0 if os.sched_getaffinity(0) == {core} else 1)
_, status = os.waitpid(child, 0)
release.set()
print(json.dumps({"threads": affinities, "child_ok": os.waitstatus_to_exitcode(status) == 0}))
"""


def test_every_thread_and_child_process_runs_on_the_pinned_core() -> None:
    core = max(os.sched_getaffinity(0))
    result = subprocess.run([sys.executable, "-c", _PIN_IN_A_CHILD, str(core)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["threads"]) >= 3  # main, one started before the pinning, one after
    assert all(cores == [core] for cores in report["threads"].values()), report
    assert report["child_ok"]


def test_a_core_the_host_lacks_is_refused_naming_the_field_and_nothing_changes() -> None:
    before = os.sched_getaffinity(0)
    absent = max(before) + 1000
    with pytest.raises(ValueError, match=rf"trainer\.cpu_affinity: core\(s\) \[{absent}\] not available"):
        pin_process([min(before), absent], field="trainer.cpu_affinity")
    assert os.sched_getaffinity(0) == before


def test_no_cores_leaves_the_process_alone() -> None:
    before = os.sched_getaffinity(0)
    pin_process(None, field="rollout.cpu_affinity")
    assert os.sched_getaffinity(0) == before
