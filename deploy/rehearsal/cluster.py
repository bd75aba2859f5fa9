"""Local Ray nodes standing in for a release's pods: one `ray start --block` process tree per pod.

A pod has its own network namespace and its own /tmp; here every node shares one host, so each gets its
own temp dir and free ports for what Ray would otherwise bind at fixed numbers (GCS, dashboard, client
server, dashboard agent, metrics), and an object store sized from its memory the way Ray sizes it from a
container's memory limit (30%). Everything else is the `ray start` line of its group. A lost pod is its
whole process tree killed at once (SIGKILL), drivers and engines included.

With a head image (`--head-image`), the head node runs in that image under podman instead of on this
interpreter: the image's Python, Ray and `mpo`, the checkout's code mounted over the image's, and the
node's temp dir and the volumes at their host paths, so the drivers the head's job API starts run there too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from mpo.net import free_ports
from mpo.trainer.extensions import extensions_dir
from rehearsal.release import PodGroup, Release

#: Ray's default object store share of a container's memory limit.
OBJECT_STORE_SHARE = 0.3
#: The checkout, whose code a container node runs instead of the code the image was built with.
CHECKOUT = Path(__file__).resolve().parents[2]
#: Where the image holds the project (an editable install) and the parts of it mounted from the checkout.
IMAGE_PROJECT = "/opt/onlinempo"
IMAGE_CODE = ("mpo", "trainer", "services", "protos")
#: What a container node runs with: runc (crun refuses cgroups in hybrid mode) and explicit rlimits (podman's
#: defaults exceed what a process without CAP_SYS_RESOURCE may set). Root in the container: the workers and
#: the rehearsal itself run as root on this host and write the same volume directories (SQLite's WAL and
#: shm files among them), which a uid-1000 head could not write after them; in a cluster every pod is
#: uid 1000 with fsGroup 1000, so they agree.
PODMAN_RUN = ("podman", "--runtime", "runc", "run", "--user=0", "--network=host",
              "--ulimit=nofile=20000:20000", "--ulimit=nproc=32768:32768")  # fmt: skip
#: Set on every node when the head runs in an image: its Python (3.11.x) need not be this interpreter's patch.
IMAGE_RAY_SETTINGS = {"RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL": "minor"}


def outermost(paths: list[Path]) -> list[Path]:
    """The paths not inside another of them (what to mount to make all of them visible)."""
    unique = sorted(set(paths))
    return [path for path in unique if not any(other != path and path.is_relative_to(other) for other in unique)]


@dataclass
class LocalNode:
    """One pod: its group, its index in the group and, while it runs, the `ray start --block` process."""

    group: PodGroup
    index: int
    temp_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    #: The image this node runs in (podman), or None: this interpreter's environment on the host.
    image: str | None = None
    #: Host directories a container node sees at the same paths (volumes, workdir, its temp dir).
    volumes: tuple[Path, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.group.name}-{self.index}"

    @property
    def container(self) -> str:
        """The container's name: unique per rehearsal (its temp root), so concurrent rehearsals keep apart."""
        return f"{self.temp_dir.parent.name}-{self.name}"

    def start(self, arguments: list[str], base_env: dict[str, str], ray_settings: dict[str, str]) -> None:
        """`ray start --block` in the background; `ray_settings` are environment the cluster sets on every node."""
        pod_env = ray_settings | dict(self.group.env)
        env = base_env | pod_env
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        command = ["ray", "start", *self.group.start_arguments, *arguments, f"--temp-dir={self.temp_dir}", "--block"]
        # bash -c, as KubeRay runs it: the rayStartParams' quoting is shell quoting.
        launch = ["bash", "-c", " ".join(command)]
        if self.image is not None:
            launch = self._in_container(launch, pod_env)
        with self.log.open("ab") as log:
            log.write(f"\n--- start {self.starts + 1}: {' '.join(launch)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                launch, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.starts += 1

    def _in_container(self, launch: list[str], pod_env: dict[str, str]) -> list[str]:
        """`launch` as the container's command: the image's environment plus the pod's (passed by name, so no
        token lands on a command line), the checkout's code read-only over the image's."""
        subprocess.run(["podman", "rm", "--force", self.container], capture_output=True, check=False, timeout=120)
        volumes = [f"--volume={path}:{path}" for path in self.volumes]
        volumes += [f"--volume={CHECKOUT / name}:{IMAGE_PROJECT}/{name}:ro" for name in IMAGE_CODE]
        return [
            *PODMAN_RUN, f"--name={self.container}", f"--shm-size={self.group.memory}",
            *(f"--env={key}" for key in sorted(pod_env)), *volumes,
            f"--entrypoint={launch[0]}", self.image, *launch[1:],
        ]  # fmt: skip

    def exec_command(self, command: list[str]) -> list[str]:
        """`command` as run in this node's container (as the kubelet runs a probe), or as is on the host."""
        return command if self.image is None else ["podman", "exec", self.container, *command]

    def _container_tree(self) -> list[psutil.Process]:
        """The container's processes (children of podman's monitor, not of the `podman run` client)."""
        inspect = subprocess.run(
            ["podman", "inspect", "--format", "{{.State.Pid}}", self.container],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        try:
            root = psutil.Process(int(inspect.stdout.strip()))
            return [root, *root.children(recursive=True)]
        except (ValueError, psutil.NoSuchProcess):  # no container, or it has stopped (pid 0)
            return []

    def kill(self) -> int:
        """The pod is lost: every process of its tree, found before any dies, gets SIGKILL. How many."""
        if self.process is None:
            return 0
        if self.image is not None:
            # SIGKILL to the `podman run` client leaves the container running: kill the container itself.
            killed = len(self._container_tree())
            for action in (["kill", "--signal", "KILL"], ["rm", "--force"]):
                subprocess.run(["podman", *action, self.container], capture_output=True, check=False, timeout=120)
            self.process.wait()
            self.process = None
            return killed
        try:
            root = psutil.Process(self.process.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for process in tree:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(tree, timeout=30)
        self.process.wait()
        self.process = None
        return len(tree)


@dataclass
class LocalCluster:
    """The RayCluster of a release: the head and every worker group's replicas, as local nodes."""

    release: Release
    #: Where the nodes' logs go.
    root: Path
    nodes: list[LocalNode] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0
    #: The nodes' temp dirs: short paths under the system's temp dir, as Ray's socket paths must stay
    #: within the 107 bytes of AF_UNIX.
    temp_root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mpo-ray-")))
    #: The image the head runs in (podman); None: every node on this interpreter.
    head_image: str | None = None

    def __post_init__(self) -> None:
        self.gcs_port, self.dashboard_port = free_ports(2)
        groups = [self.release.head, *self.release.workers]
        for group in groups:
            for index in range(group.replicas):
                name = f"{group.name}-{index}"
                self.nodes.append(LocalNode(group, index, self.temp_root / name, self.root / f"{name}.log"))
        self.head.image = self.head_image

    @property
    def ray_settings(self) -> dict[str, str]:
        return dict(IMAGE_RAY_SETTINGS) if self.head_image else {}

    @property
    def head(self) -> LocalNode:
        return self.nodes[0]

    @property
    def dashboard_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def environment(self, node: LocalNode) -> dict[str, str]:
        """The image's environment: this interpreter's bin directory first on PATH (`ray`, `mpo`), and a
        $HOME of the node's own (the pod's emptyDir: no Ray token or caches from this machine's user)."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["HOME"] = str(node.temp_dir / "home")
        # DeepSpeed's CPU op is compiled on first use, by default under $HOME: the nodes share this
        # environment's build instead, as an image would carry it built.
        env.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir()))
        (node.temp_dir / "home").mkdir(parents=True, exist_ok=True)
        return env

    def start_node(self, node: LocalNode) -> None:
        agent, metrics, client = free_ports(3)
        arguments = [
            f"--node-name={node.name}",
            f"--dashboard-agent-listen-port={agent}",
            f"--metrics-export-port={metrics}",
            f"--object-store-memory={int(node.group.memory * OBJECT_STORE_SHARE)}",
        ]
        if node is self.head:
            arguments += [f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}"]
            arguments += [f"--ray-client-server-port={client}"]
        else:
            arguments.append(f"--address=127.0.0.1:{self.gcs_port}")
        if node.image is not None:
            node.volumes = tuple(outermost([self.root, node.temp_dir, *self.release.mounts.values()]))
        node.start(arguments, self.environment(node), self.ray_settings)

    def start(self, timeout: float = 180.0) -> None:
        """The head, then every worker; returns once all of them are alive in Ray's node table."""
        self.start_node(self.head)
        self.wait_for_dashboard(timeout)
        for node in self.nodes[1:]:
            self.start_node(node)
        self.wait_for_nodes(timeout)

    def wait_for_dashboard(self, timeout: float) -> None:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + timeout
        while True:
            self._check_running(self.head)
            try:
                JobSubmissionClient(self.dashboard_address).list_jobs()
                return
            except Exception:  # not up yet: connection refused, 5xx while it starts
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def alive_nodes(self) -> dict[str, dict[str, object]]:
        """Ray's view: node name -> its state-API record, for the nodes alive now."""
        from ray.util.state import list_nodes

        # raise_on_missing_output=False: the state API counts the dead nodes a filter leaves out as missing.
        records = list_nodes(
            address=self.dashboard_address,
            filters=[("state", "=", "ALIVE")],
            limit=10_000,
            timeout=30,
            raise_on_missing_output=False,
        )
        return {record.node_name: record.__dict__ for record in records}

    def wait_for_nodes(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wanted = {node.name for node in self.nodes if node.process is not None}
        seen: object = "no answer yet"
        while True:
            for node in self.nodes:
                self._check_running(node)
            try:
                alive = set(self.alive_nodes())
                if wanted <= alive:
                    return
                seen = f"alive: {sorted(alive)}"
            except Exception as error:  # the state API answers once the dashboard has the nodes
                seen = error
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray nodes {sorted(wanted)} not alive after {timeout:.0f} s ({seen})")
            time.sleep(1.0)

    def _check_running(self, node: LocalNode) -> None:
        if node.process is not None and node.process.poll() is not None:
            tail = node.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"node {node.name}: `ray start` exited {node.process.returncode}:\n{tail}")

    def kill_all(self) -> int:
        return sum(node.kill() for node in self.nodes)
