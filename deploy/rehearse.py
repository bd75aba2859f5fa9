"""Rehearse a Helm release of OnlineMPO on this machine: the chart's own commands on a multi-node local Ray.

    python deploy/rehearse.py --model DIR --train FILE --heldout FILE [--workdir DIR] [--report FILE]
        [--head-image IMAGE]

Renders the chart with `helm/onlinempo/ci/cpu-rehearsal-values.yaml` (plus `--values`), starts one Ray
node per rendered pod, submits the rendered RayJobs as the KubeRay operator would, and then:
1. an outside gRPC client (`mpo client generate`) samples from the rollout endpoint on the head's port
   over TLS (a self-signed certificate as `tls.existing_secret`; `--no-tls`: plaintext), the head's
   rendered liveness probe passes, the dashboard answers, and Ray's state API shows each actor on its
   worker group's node;
2. mid-round, the trainer group's node is lost (its process tree killed) and comes back as a new pod,
   then the rollout group's, while the next round samples;
3. later the head is lost, and with it every worker's raylet (no GCS fault tolerance): the cluster comes
   back and the operator resubmits both jobs;
4. `helm upgrade` with one more round: new RayJob names, the old jobs stopped, the run continued.
Then it checks the run store, the trainer's checkpoint and the rollout's ledger (every round once, no
pair lost or trained twice, one policy version) and writes a JSON report. Progress goes to stderr.
See docs/deploy.md ("The rehearsal").
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rehearsal.cluster import LocalCluster
from rehearsal.kuberay import RayJobOperator
from rehearsal.release import Release, read_release, render

from mpo.net import free_ports

if TYPE_CHECKING:
    from mpo.services.controller.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "onlinempo"
CPU_VALUES = CHART / "ci" / "cpu-rehearsal-values.yaml"
#: The `kubernetes.io/tls` Secret the rehearsal provides (`tls.existing_secret`), with a self-signed certificate.
TLS_SECRET = "rehearsal-tls"
#: Which worker group each kind of actor must run on (the chart's placement).
EXPECTED_GROUP = {"RolloutReplica": "rollout", "TrainerRank": "trainer", "LabellingWorker": "cpu"}
_STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[rehearse {time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def self_signed_certificate(directory: Path) -> dict[str, str]:
    """A `kubernetes.io/tls` Secret's data for 127.0.0.1 / localhost (what cert-manager would issue)."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(directory / "tls.key"), "-out", str(directory / "tls.crt")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return {name: (directory / name).read_text() for name in ("tls.crt", "tls.key")}


class Rehearsal:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        names = list(yaml.safe_load((CHART / "values.yaml").read_text())["ports"])
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.settings = {f"ports.{name}": str(port) for name, port in self.ports.items()} | dict(args.set)
        self.secrets: dict[str, dict[str, str]] = {}
        if args.tls:  # as the production example: the rollout and controller endpoints speak TLS
            self.secrets[TLS_SECRET] = self_signed_certificate(workdir / "tls")
            self.settings["tls.existing_secret"] = TLS_SECRET
        self.release = self.render()
        self.cluster = LocalCluster(self.release, workdir, head_image=args.head_image)
        self.operator = RayJobOperator(self.cluster.dashboard_address, self.release.translate, say)
        self.run = yaml.safe_load(self._config_map()["run.yaml"])
        self.run_id: str = self.run["run_id"]
        self.faults: list[dict[str, Any]] = []
        self.report: dict[str, Any] = {"workdir": str(workdir), "head_image": args.head_image}
        #: When the whole rehearsal gives up: every wait stops here, with the jobs' logs, so a stuck phase is named.
        self.deadline = time.monotonic() + args.timeout

    # -- the release ------------------------------------------------------------------------------------

    def render(self, **extra: str) -> Release:
        values = [CPU_VALUES, *self.args.values]
        objects = render(CHART, self.args.helm, values, self.settings | extra)
        return read_release(objects, self.workdir / "volumes", self.secrets)

    def _config_map(self) -> dict[str, str]:
        (config,) = [obj for obj in self.release.of_kind("ConfigMap") if "run.yaml" in obj.get("data", {})]
        return config["data"]

    def local(self, pod_path: str) -> Path:
        return self.release.local(pod_path)

    def prepare_volume(self) -> None:
        """What the model-copy Job and the user's upload put on the volume: the base policy and the prompts."""
        shutil.copytree(self.args.model, self.local(self.run["model"]), dirs_exist_ok=True)
        for split in ("train", "heldout"):
            target = self.local(self.run["data"][split])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(getattr(self.args, split), target)

    def store(self) -> RunStore:
        from mpo.services.controller.store import RunStore

        return RunStore(self.local(self.run["store_dir"]))

    # -- waiting, with the operator reconciling ----------------------------------------------------------

    def wait(self, what: str, done: Callable[[], bool], timeout: float) -> None:
        say(f"waiting: {what}")
        deadline = min(time.monotonic() + timeout, self.deadline)
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not done at {time.monotonic() - _STARTED:.0f} s\n{self.job_logs()}")
            self.operator.reconcile()
            time.sleep(1.0)
        say(f"done: {what}")

    def job_logs(self) -> str:
        parts = []
        for name in self.operator.records:
            try:
                parts.append(f"--- {name}\n{self.operator.logs(name)[-4000:]}")
            except Exception as error:  # the head may be gone; say so and go on
                parts.append(f"--- {name}: no logs ({error})")
        return "\n".join(parts)

    def round_finished(self, round_index: int) -> bool:
        return any(record.round >= round_index for record in self.store().round_records(self.run_id))

    def training_in_flight(self, after_round: int) -> bool:
        """A round past `after_round` is committed (its pairs stored) and not finished: it is training."""
        store = self.store()
        return store.last_committed_round(self.run_id) > after_round and bool(store.unfinished_rounds(self.run_id))

    def run_state(self) -> tuple[int, int]:
        from mpo.v1 import controller_pb2

        run = self.store().get_run(self.run_id)
        return (run.state, run.current_round) if run else (controller_pb2.RUN_STATE_UNSPECIFIED, 0)

    def completed(self, rounds: int) -> bool:
        from mpo.v1 import controller_pb2

        return self.run_state() == (controller_pb2.RUN_STATE_COMPLETED, rounds)

    # -- what a user sees -------------------------------------------------------------------------------

    def _client(self, *tls: str) -> subprocess.CompletedProcess[str]:
        env = {"MPO_USER_TOKEN": self.release.head.env["MPO_USER_TOKEN"], "PATH": str(Path(sys.executable).parent)}
        command = [sys.executable, "-m", "mpo.cli", "client", "generate", "--address",
                   f"127.0.0.1:{self.ports['rollout']}", "--question", "What is 2 + 3?", "--max-tokens", "16",
                   "--timeout", "60", *tls]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=120)

    def outside_client(self) -> dict[str, Any]:
        """`mpo client generate` from a process outside Ray, with the user token (and the CA when TLS is on),
        at the head's rollout port; with TLS on, a plaintext client there must fail."""
        tls = ["--tls-root-cert", str(self.workdir / "tls" / "tls.crt")] if self.args.tls else []
        deadline = min(time.monotonic() + 600, self.deadline)
        while True:
            result = self._client(*tls)
            if result.returncode == 0:
                (sample,) = json.loads(result.stdout)["samples"]
                answer = {"tls": self.args.tls, "policy_version": sample["policy_version"], "answer": sample["text"]}
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the rollout endpoint never answered: {result.stderr[-2000:]}")
            self.operator.reconcile()
            time.sleep(2.0)
        if self.args.tls:
            plaintext = self._client()
            assert plaintext.returncode != 0, "a plaintext client was served on the TLS port"
            answer["plaintext_refused"] = plaintext.stderr.strip().splitlines()[-1]
        return answer

    def liveness_probe(self) -> dict[str, Any]:
        """The head's rendered liveness probe command, run as the kubelet would run it in the head container."""
        (cluster,) = self.release.of_kind("RayCluster")
        (container,) = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
        command = [self.release.translate(word) for word in container["livenessProbe"]["exec"]["command"]]
        command = self.cluster.head.exec_command(command)
        env = self.cluster.environment(self.cluster.head)
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=60)
        return {"command": " ".join(command), "exit_code": result.returncode, "output": result.stderr.strip()}

    def dashboard(self) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['dashboard']}/api/runs",
            headers={"Authorization": f"Bearer {self.release.head.env['MPO_USER_TOKEN']}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            runs = json.loads(response.read())
        assert self.run_id in json.dumps(runs), f"the dashboard does not list {self.run_id}: {runs}"
        return response.status

    def placement(self) -> dict[str, list[str]]:
        """Each live OnlineMPO actor's class -> the group of the node it runs on (from Ray's state API)."""
        from ray.util.state import list_actors

        nodes = {record["node_id"]: name.rsplit("-", 1)[0] for name, record in self.cluster.alive_nodes().items()}
        actors = list_actors(
            address=self.cluster.dashboard_address,
            filters=[("state", "=", "ALIVE")],
            limit=10_000,
            raise_on_missing_output=False,  # dead actors left out by the filter count as "missing"
        )
        placed: dict[str, list[str]] = {}
        for actor in actors:
            if actor.class_name in EXPECTED_GROUP:
                placed.setdefault(actor.class_name, []).append(nodes.get(actor.node_id, "?"))
        return {name: sorted(groups) for name, groups in sorted(placed.items())}

    # -- faults -----------------------------------------------------------------------------------------

    def in_flight(self) -> list[int]:
        """Rounds committed and not finished (being trained or published) now."""
        return [record.round for record in self.store().unfinished_rounds(self.run_id)]

    def lose_worker(self, group: str) -> None:
        (node,) = [node for node in self.cluster.nodes if node.name == f"{group}-0"]
        round_index = self.store().last_committed_round(self.run_id)
        in_flight = self.in_flight()
        killed = node.kill()
        say(f"fault: node {node.name} lost in round {round_index} ({killed} processes killed)")
        time.sleep(5.0)  # the pod is gone for a while; then its ReplicaSet-like group makes a new one
        self.cluster.start_node(node)
        self.cluster.wait_for_nodes(180)
        self.faults.append({"fault": f"worker node {node.name} killed (SIGKILL, whole tree)", "round": round_index,
                            "in_flight": in_flight, "processes": killed})  # fmt: skip

    def lose_head(self) -> None:
        round_index = self.store().last_committed_round(self.run_id)
        in_flight = self.in_flight()
        killed = self.cluster.kill_all()
        say(f"fault: head lost in round {round_index}; every worker raylet goes with it ({killed} processes)")
        self.cluster.start()
        self.operator.dashboard_address = self.cluster.dashboard_address
        self.operator.reconcile(head_restarted=True)
        self.faults.append({"fault": "head node killed (SIGKILL, whole tree), workers restarted", "round": round_index,
                            "in_flight": in_flight, "processes": killed})  # fmt: skip

    def upgrade(self, rounds: int) -> None:
        """`helm upgrade --set run.rounds.rounds=N`: a new ConfigMap and new RayJob names."""
        before = sorted(job.name for job in self.release.jobs)
        self.release = self.render(**{"run.rounds.rounds": str(rounds)})
        after = sorted(job.name for job in self.release.jobs)
        assert not set(before) & set(after), f"an upgrade with a new config kept RayJob names: {before} {after}"
        self.operator.translate = self.release.translate
        self.operator.apply(self.release.jobs)
        self.faults.append({"fault": f"helm upgrade: run.rounds.rounds={rounds}", "jobs_before": before,
                            "jobs_after": after})  # fmt: skip

    # -- the end state ----------------------------------------------------------------------------------

    def verify(self, rounds: int) -> dict[str, Any]:
        """Every round once, the pairs of each round trained exactly once, rollout and trainer on one version."""
        store = self.store()
        run = store.get_run(self.run_id)
        assert run is not None
        recorded = [record.round for record in store.round_records(self.run_id)]
        assert recorded == list(range(1, rounds + 1)), f"rounds not continuous: {recorded}"
        pairs = [len(store.committed_pairs(self.run_id, r)) for r in recorded]
        assert store.pair_count(self.run_id) == sum(pairs)
        checkpoints = self.local(self.run["trainer"]["checkpoint_dir"])
        latest = checkpoints / (checkpoints / "LATEST").read_text().strip()
        trainer = json.loads((latest / "trainer.json").read_text())
        batch = self.run["trainer"]["global_batch_pairs"]
        assert len(trainer["trained_pair_ids"]) == sum(pairs), "a pair lost or trained twice"
        assert len(set(trainer["trained_pair_ids"])) == sum(pairs), "a pair trained twice"
        assert trainer["step"] == sum(math.ceil(n / batch) for n in pairs), "optimizer steps do not match the pairs"
        ledger = json.loads((self.local(self.run["rollout"]["weights_dir"]) / "current.json").read_text())
        assert ledger["version"] == run.policy_version, "rollout and trainer on different versions"
        return {"rounds": recorded, "pairs_per_round": pairs, "trainer_steps": trainer["step"],
                "policy_version": run.policy_version, "rollout_version": ledger["version"]}  # fmt: skip

    def jobs(self) -> dict[str, dict[str, Any]]:
        """Every RayJob the operator handled (deleted ones included): attempts and how each attempt ended."""
        records = [*self.operator.deleted, *self.operator.records.values()]
        return {
            record.job.name: {"attempts": record.attempts, "history": record.history,
                              "backoff_limit": record.job.backoff_limit, "deleted": record.deleted}
            for record in records
        }  # fmt: skip

    def state_paths(self) -> dict[str, str]:
        """Where the run's state lies on this host (run store, checkpoints, weight ledger)."""
        return {
            "store_dir": str(self.local(self.run["store_dir"])),
            "checkpoint_dir": str(self.local(self.run["trainer"]["checkpoint_dir"])),
            "weights_dir": str(self.local(self.run["rollout"]["weights_dir"])),
        }


def rehearse(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rehearsal = Rehearsal(args, workdir)
    report = rehearsal.report
    rounds = int(rehearsal.run["rounds"]["rounds"])
    rehearsal.prepare_volume()
    try:
        rehearsal.cluster.start()
        report["nodes"] = {node.name: {"cpus": node.group.cpus, "memory": node.group.memory,
                                       "start": " ".join(node.group.start_arguments)}
                           for node in rehearsal.cluster.nodes}  # fmt: skip
        say(f"cluster up: {', '.join(report['nodes'])}")
        rehearsal.operator.apply(rehearsal.release.jobs)
        report["outside_client"] = rehearsal.outside_client()
        say(f"outside client: {report['outside_client']}")
        report["liveness_probe"] = rehearsal.liveness_probe()
        say(f"liveness probe: {report['liveness_probe']}")
        rehearsal.wait("round 1 finished", lambda: rehearsal.round_finished(1), 600)
        report["placement"] = rehearsal.placement()
        report["dashboard_status"] = rehearsal.dashboard()
        say(f"placement: {report['placement']}")
        if args.faults:  # each waits for its moment, or for the run's end should the rounds outrun the polling
            ended = functools.partial(rehearsal.completed, rounds)
            rehearsal.wait("a round after 1 training", lambda: rehearsal.training_in_flight(1) or ended(), 600)
            rehearsal.lose_worker("trainer")
            rehearsal.wait("round 2 finished", lambda: rehearsal.round_finished(2), 900)
            rehearsal.lose_worker("rollout")  # the next round is sampling now
            rehearsal.wait("a round after 3 training", lambda: rehearsal.training_in_flight(3) or ended(), 900)
            rehearsal.lose_head()
        rehearsal.wait(f"run completed ({rounds} rounds)", lambda: rehearsal.completed(rounds), 900)
        rehearsal.upgrade(rounds + 1)
        rehearsal.wait(f"run completed ({rounds + 1} rounds)", lambda: rehearsal.completed(rounds + 1), 900)
        report["placement_after_faults"] = rehearsal.placement()
        report["end_state"] = rehearsal.verify(rounds + 1)
        report["faults"] = rehearsal.faults
        report["jobs"] = rehearsal.jobs()
        report |= rehearsal.state_paths()
    finally:
        report["processes_killed_at_teardown"] = rehearsal.cluster.kill_all()
        if not args.keep:
            shutil.rmtree(rehearsal.cluster.temp_root, ignore_errors=True)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the base policy (a model directory)")
    parser.add_argument("--train", type=Path, required=True, help="training prompts (put on the volume)")
    parser.add_argument("--heldout", type=Path, required=True, help="held-out prompts (put on the volume)")
    parser.add_argument("--values", type=Path, action="append", default=[], help="extra values file; repeat")
    parser.add_argument("--set", type=lambda item: tuple(item.split("=", 1)), action="append", default=[],
                        metavar="KEY=VALUE", help="helm --set; repeat")  # fmt: skip
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="give up after this many seconds in all, naming the phase and printing the jobs' logs",
    )
    parser.add_argument("--no-faults", dest="faults", action="store_false", help="skip the node faults")
    parser.add_argument("--no-tls", dest="tls", action="store_false", help="plaintext gRPC (no tls.existing_secret)")
    parser.add_argument("--workdir", type=Path, help="volumes, node temp dirs and logs (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir and the nodes' Ray temp dirs")
    parser.add_argument("--head-image", help="run the head node in this image with podman (workers stay here)")
    parser.add_argument("--report", type=Path, help="write the JSON report here (also printed)")
    parser.add_argument("--helm", default=shutil.which("helm", path=str(Path(sys.executable).parent)) or "helm")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mpo-rehearsal-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        report = rehearse(args, workdir)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(report, indent=2)
    if args.report:
        args.report.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
