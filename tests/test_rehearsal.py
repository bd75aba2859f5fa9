"""The cluster path, rehearsed (deploy/rehearse.py): the chart's rendered pods as local Ray nodes, its
RayJobs submitted as KubeRay would, node faults and an upgrade; then the run's store, the trainer's
checkpoint and the rollout's ledger are read here, independently of the rehearsal's own checks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mpo.data.loader import write_prompts_jsonl
from mpo.services.controller.store import RunStore
from mpo.v1 import controller_pb2
from tests.controller_helpers import sums

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


#: The rehearsal's own limit (about 5 minutes idle on 2 cores): past it, it names the phase it was waiting
#: for and prints the jobs' logs, then tears its nodes down, before pytest-timeout would kill the test blind.
REHEARSAL_TIMEOUT_S = 900


def progress_and_tail(stderr: str) -> str:
    """The rehearsal's progress lines (when each phase started and ended) and the end of its stderr."""
    progress = [line for line in stderr.splitlines() if line.startswith("[rehearse ")]
    return "\n".join(progress) + "\n...\n" + stderr[-6000:]


@pytest.mark.timeout(REHEARSAL_TIMEOUT_S + 180)
def test_the_charts_commands_run_a_release_through_node_faults_and_an_upgrade(
    sums_policy: Path, tmp_path: Path
) -> None:
    write_prompts_jsonl(sums(24, 100), tmp_path / "train.jsonl")
    write_prompts_jsonl(sums(8, 900), tmp_path / "heldout.jsonl")
    workdir, report_path = tmp_path / "rehearsal", tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "rehearse.py"), "--model", str(sums_policy),
         "--train", str(tmp_path / "train.jsonl"), "--heldout", str(tmp_path / "heldout.jsonl"),
         "--workdir", str(workdir), "--report", str(report_path), "--timeout", str(REHEARSAL_TIMEOUT_S)],
        capture_output=True, text=True, timeout=REHEARSAL_TIMEOUT_S + 120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, progress_and_tail(result.stderr)
    report = json.loads(report_path.read_text())

    # One Ray node per rendered pod, each actor kind on its own worker group's node, before and after faults.
    assert sorted(report["nodes"]) == ["cpu-0", "head-0", "rollout-0", "trainer-0"]
    assert "--resources=" in report["nodes"]["trainer-0"]["start"]
    expected = {"LabellingWorker": ["cpu"], "RolloutReplica": ["rollout"], "TrainerRank": ["trainer", "trainer"]}
    assert report["placement"] == expected
    assert report["placement_after_faults"] == expected
    # The rollout endpoint speaks TLS to an outside client with the CA (and not plaintext); the head's
    # liveness probe, run as rendered, passes on the serving drivers; the dashboard answers.
    assert report["outside_client"]["tls"] and report["outside_client"]["plaintext_refused"].startswith("error:")
    assert report["liveness_probe"]["exit_code"] == 0, report["liveness_probe"]
    assert report["dashboard_status"] == 200

    # The faults happened, and the operator resubmitted what they failed, within backoffLimit.
    kinds = [fault["fault"].split(" ")[0:2] for fault in report["faults"]]
    assert kinds == [["worker", "node"], ["worker", "node"], ["head", "node"], ["helm", "upgrade:"]]
    assert [fault["fault"].split(" ")[2] for fault in report["faults"][:2]] == ["trainer-0", "rollout-0"]
    upgrade = report["faults"][3]
    assert {name for name, job in report["jobs"].items() if job["deleted"]} == set(upgrade["jobs_before"])
    assert {name for name, job in report["jobs"].items() if not job["deleted"]} == set(upgrade["jobs_after"])
    for name in upgrade["jobs_before"]:  # both drivers were on the lost head: resubmitted once more at least
        job = report["jobs"][name]
        assert ("LOST" in [status for _, status in job["history"]]) and job["attempts"] >= 2, job
    for job in report["jobs"].values():
        assert job["attempts"] - 1 <= job["backoff_limit"]

    # The run, read here from the volume: rounds continuous, every pair trained once, one policy version.
    store = RunStore(Path(report["store_dir"]))
    run = store.get_run("rehearsal")
    # The values' 6 rounds, and one more from the upgrade.
    assert run is not None and run.state == controller_pb2.RUN_STATE_COMPLETED and run.current_round == 7
    assert [record.round for record in store.round_records("rehearsal")] == list(range(1, 8))
    pairs = [len(store.committed_pairs("rehearsal", r)) for r in range(1, 8)]
    assert sum(pairs) > 0 and store.pair_count("rehearsal") == sum(pairs)
    checkpoints = Path(report["checkpoint_dir"])
    trainer = json.loads((checkpoints / (checkpoints / "LATEST").read_text().strip() / "trainer.json").read_text())
    assert sorted(trainer["trained_pair_ids"]) == sorted(set(trainer["trained_pair_ids"]))
    assert len(trainer["trained_pair_ids"]) == sum(pairs)
    assert trainer["step"] == sum(math.ceil(n / 16) for n in pairs)
    ledger = json.loads((Path(report["weights_dir"]) / "current.json").read_text())
    assert ledger["version"] == run.policy_version == report["end_state"]["policy_version"]
    assert report["processes_killed_at_teardown"] > 0
