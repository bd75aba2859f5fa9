"""A rendered release, read as what a cluster runs: one Ray node per pod, one driver per RayJob.

Nothing here is re-typed from the chart: the `ray start` lines are built the way the KubeRay operator
builds them from each group's `rayStartParams` and container resources, the environment comes from the
containers' `env` (Secret references resolved from the rendered Secrets, or from Secrets the caller
provides, as `existingSecret`s), and the RayJobs' entrypoints run as written. The pods' volumes become
local directories; since every "pod" here shares one filesystem, a mount is a rewrite of its mount path
to that directory, applied to the entrypoints and to the files the ConfigMaps put in the pods.
"""

from __future__ import annotations

import base64
import math
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: Kubernetes quantity suffixes (binary and decimal) for memory.
_MEMORY_UNITS = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
}  # fmt: skip


def cpu_count(quantity: str | int | float) -> int:
    """A CPU quantity ("2", "500m") as the whole CPUs KubeRay passes to `ray start --num-cpus` (rounded up)."""
    text = str(quantity)
    cpus = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, math.ceil(cpus))


def memory_bytes(quantity: str | int) -> int:
    text = str(quantity)
    for suffix, factor in sorted(_MEMORY_UNITS.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


@dataclass(frozen=True)
class PodGroup:
    """The head or one worker group: `replicas` pods, each one Ray node."""

    name: str
    replicas: int
    #: `ray start` arguments as KubeRay writes them (without `--address`, `--block` and this host's ports).
    start_arguments: tuple[str, ...]
    env: Mapping[str, str]
    cpus: int
    memory: int
    #: Labels of the group's pods (what NetworkPolicies and Services select).
    labels: Mapping[str, str]


@dataclass(frozen=True)
class DriverJob:
    """One RayJob: its (upgrade-unique) name, the entrypoint its submitter sends, and how often it is retried."""

    name: str
    component: str
    entrypoint: str
    backoff_limit: int


@dataclass
class Release:
    objects: list[dict[str, Any]]
    head: PodGroup
    workers: list[PodGroup]
    jobs: list[DriverJob]
    #: Mount path inside the pods -> local directory.
    mounts: dict[str, Path] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj.get("kind") == kind]

    def local(self, pod_path: str) -> Path:
        """Where a path inside a pod lies on this host."""
        return Path(self.translate(pod_path))

    def translate(self, text: str) -> str:
        """Every mounted path in `text` rewritten to its local directory (longest mount first)."""
        for mount in sorted(self.mounts, key=len, reverse=True):
            text = re.sub(rf"(?<![\w./-]){re.escape(mount)}(?![\w.-])", str(self.mounts[mount]), text)
        return text


def render(
    chart: Path, helm: str, values: list[Path], settings: Mapping[str, str], release_name: str = "rehearsal"
) -> list[dict[str, Any]]:
    """`helm template` with the values files and `--set`s; the rendered objects."""
    command = [helm, "template", release_name, str(chart)]
    for path in values:
        command += ["--values", str(path)]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    rendered = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    if rendered.returncode != 0:
        raise RuntimeError(f"helm template failed: {rendered.stderr.strip()}")
    return [obj for obj in yaml.safe_load_all(rendered.stdout) if obj]


def read_release(
    objects: list[dict[str, Any]], volumes_root: Path, provided_secrets: Mapping[str, Mapping[str, str]]
) -> Release:
    """The nodes and drivers the rendered objects describe, with the pods' volumes under `volumes_root`."""
    secrets = {
        obj["metadata"]["name"]: {key: base64.b64decode(value).decode() for key, value in obj.get("data", {}).items()}
        for obj in objects
        if obj.get("kind") == "Secret"
    } | {name: dict(data) for name, data in provided_secrets.items()}
    (cluster,) = [obj for obj in objects if obj.get("kind") == "RayCluster"]
    spec = cluster["spec"]
    head_template = spec["headGroupSpec"]["template"]
    head = _group("head", 1, spec["headGroupSpec"]["rayStartParams"], head_template, secrets, head=True)
    workers = [
        _group(group["groupName"], group["replicas"], group["rayStartParams"], group["template"], secrets, head=False)
        for group in spec.get("workerGroupSpecs", [])
    ]
    jobs = [
        DriverJob(
            name=obj["metadata"]["name"],
            component=obj["metadata"]["labels"]["app.kubernetes.io/component"],
            entrypoint=obj["spec"]["entrypoint"],
            backoff_limit=int(obj["spec"].get("backoffLimit", 0)),
        )
        for obj in objects
        if obj.get("kind") == "RayJob"
    ]
    release = Release(objects, head, workers, jobs)
    templates = [head_template] + [group["template"] for group in spec.get("workerGroupSpecs", [])]
    for template in templates:
        _map_volumes(release, template["spec"], volumes_root)
    _write_config_maps(release, objects, volumes_root)
    _write_secrets(release, secrets, volumes_root)
    return release


def _group(
    name: str,
    replicas: int,
    params: Mapping[str, str],
    template: Mapping[str, Any],
    secrets: Mapping[str, Mapping[str, str]],
    *,
    head: bool,
) -> PodGroup:
    (container,) = template["spec"]["containers"]
    limits = container.get("resources", {}).get("limits", {})
    cpus = cpu_count(params.get("num-cpus", limits.get("cpu", 1)))
    memory = memory_bytes(params.get("memory", limits.get("memory", "2Gi")))
    # KubeRay: resources from the container unless rayStartParams name them, then every rayStartParam as
    # --key=value, verbatim (it becomes part of a shell command; quoting in the value is the chart's).
    arguments = ["--head"] if head else []
    arguments += [f"--num-cpus={cpus}", f"--memory={memory}"]
    arguments += [f"--{key}={value}" for key, value in params.items() if key not in ("num-cpus", "memory")]
    return PodGroup(
        name=name,
        replicas=int(replicas),
        start_arguments=tuple(arguments),
        env=_environment(container.get("env", []), secrets),
        cpus=cpus,
        memory=memory,
        labels=dict(template.get("metadata", {}).get("labels", {})),
    )


def _environment(env: list[Mapping[str, Any]], secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    resolved: dict[str, str] = {}
    for item in env:
        if "value" in item:
            resolved[item["name"]] = str(item["value"])
            continue
        reference = item["valueFrom"]["secretKeyRef"]
        secret = secrets.get(reference["name"])
        if secret is None or reference["key"] not in secret:
            raise KeyError(
                f"env {item['name']}: Secret {reference['name']!r} key {reference['key']!r} is neither rendered "
                "nor provided (--secret)"
            )
        resolved[item["name"]] = secret[reference["key"]]
    return resolved


def _map_volumes(release: Release, pod: Mapping[str, Any], root: Path) -> None:
    """Persistent volumes, ConfigMaps and Secrets become directories; emptyDirs stay the node's scratch."""
    sources: dict[str, Path] = {}
    for volume in pod.get("volumes", []):
        if "persistentVolumeClaim" in volume:
            sources[volume["name"]] = root / "pvc" / volume["persistentVolumeClaim"]["claimName"]
        elif "configMap" in volume:
            sources[volume["name"]] = root / "configmap" / volume["configMap"]["name"]
        elif "secret" in volume:
            sources[volume["name"]] = root / "secret" / volume["secret"]["secretName"]
    for container in pod["containers"]:
        for mount in container.get("volumeMounts", []):
            local = sources.get(mount["name"])
            if local is None:
                continue
            known = release.mounts.setdefault(mount["mountPath"], local)
            if known != local:
                raise ValueError(f"{mount['mountPath']} is mounted from {known} and {local} in different pods")
            local.mkdir(parents=True, exist_ok=True)


def _write_config_maps(release: Release, objects: list[dict[str, Any]], root: Path) -> None:
    for obj in objects:
        if obj.get("kind") != "ConfigMap":
            continue
        directory = root / "configmap" / obj["metadata"]["name"]
        directory.mkdir(parents=True, exist_ok=True)
        for key, text in obj.get("data", {}).items():
            (directory / key).write_text(release.translate(text))


def _write_secrets(release: Release, secrets: Mapping[str, Mapping[str, str]], root: Path) -> None:
    for name, data in secrets.items():
        directory = root / "secret" / name
        if directory not in release.mounts.values():
            continue  # only Secrets mounted as volumes become files (the tokens are env)
        for key, value in data.items():
            (directory / key).write_text(value)
            (directory / key).chmod(0o600)
