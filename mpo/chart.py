"""The Helm chart's values (`helm/onlinempo/values.yaml`) as pydantic models.

One source of truth: `helm/generate.py` writes the chart's `values.yaml` and `values.schema.json` from
these models, and `run` is the run config itself (`RunConfig`), which the chart renders into the
ConfigMap that every `mpo serve` process reads. CI checks that the generated files are fresh.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mpo.config import DataConfig, RunConfig


class _Values(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageValues(_Values):
    repository: str = Field(
        "ghcr.io/onlinempo/onlinempo", min_length=1, description="Image built from deploy/Dockerfile."
    )
    tag: str = Field("", description="Image tag; empty: the chart's appVersion ('-cpu' suffix for the CPU image).")
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", description="imagePullPolicy.")
    pull_secrets: list[str] = Field(default_factory=list, description="Names of imagePullSecrets.")


class ModelCopyValues(_Values):
    uri: str = Field(
        ..., min_length=1, description="rclone remote path to copy from, e.g. 's3:bucket/models/qwen2-vl'."
    )
    image: str = Field("rclone/rclone:1.68", min_length=1, description="Image with rclone.")
    config_secret: str = Field(
        "", description="Secret holding the rclone config under the key 'rclone.conf' (credentials, endpoints)."
    )


class ModelValues(_Values):
    path: str = Field(
        ...,
        min_length=1,
        description="Hugging Face model directory of the base policy, relative to storage.mount_path (on the PVC).",
    )
    copy_from: ModelCopyValues | None = Field(
        None, description="Copy the model into `path` from object storage before install/upgrade (a hook Job)."
    )


class StorageValues(_Values):
    existing_claim: str = Field("", description="Use this PVC; empty: the chart creates '<release>-data'.")
    size: str = Field("200Gi", min_length=1, description="Size of the PVC the chart creates.")
    storage_class: str = Field("", description="storageClassName of the created PVC; empty: the cluster default.")
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"]] = Field(
        default_factory=lambda: ["ReadWriteMany"],
        min_length=1,
        description="Every Ray pod mounts the volume (model, checkpoints, published weights, pair shards): "
        "ReadWriteMany.",
    )
    mount_path: str = Field("/data", pattern=r"^/", description="Where every pod mounts the volume.")


class StateStorageValues(_Values):
    """The run store's own volume: SQLite needs a local filesystem's locks (not NFS/EFS) and has one writer,
    the controller on the head pod, so it is ReadWriteOnce and mounted there only."""

    existing_claim: str = Field(
        "", description="Use this ReadWriteOnce PVC; empty: the chart creates '<release>-state' (ReadWriteOnce)."
    )
    size: str = Field(
        "10Gi",
        min_length=1,
        description="Size of the PVC the chart creates: the SQLite run store, TensorBoard files, the data's images.",
    )
    storage_class: str = Field(
        "", description="storageClassName of the created PVC (block storage, not NFS); empty: the cluster default."
    )
    mount_path: str = Field(
        "/state", pattern=r"^/", description="Where the head pod mounts it; apart from storage.mount_path."
    )


class PodValues(_Values):
    cpu: str = Field(..., min_length=1, description="CPU request and limit.")
    memory: str = Field(..., min_length=1, description="Memory request and limit.")
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu per pod.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of the pods.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="tolerations of the pods.")


class WorkerGroupValues(PodValues):
    replicas: int = Field(1, ge=0, description="Pods in this worker group.")


def _pod(cpu: str, memory: str, gpus: int = 0) -> Any:
    return lambda: PodValues(cpu=cpu, memory=memory, gpus=gpus)


def _group(cpu: str, memory: str, gpus: int, replicas: int = 1) -> Any:
    return lambda: WorkerGroupValues(cpu=cpu, memory=memory, gpus=gpus, replicas=replicas)


class RayValues(_Values):
    version: str = Field("2.60.0", min_length=1, description="rayVersion of the RayCluster (the image's Ray).")
    head: PodValues = Field(
        default_factory=_pod("8", "32Gi"),
        description="Head pod: Ray's head plus the four gRPC endpoints and the dashboard (the drivers run here).",
    )
    rollout: WorkerGroupValues = Field(
        default_factory=_group("8", "64Gi", 1), description="Worker group for the rollout engines (vLLM)."
    )
    trainer: WorkerGroupValues = Field(
        default_factory=_group("16", "128Gi", 2), description="Worker group for the trainer's DeepSpeed ranks."
    )
    cpu_workers: WorkerGroupValues = Field(
        default_factory=_group("4", "16Gi", 0), description="CPU worker group: the reward service's labelling workers."
    )


class PortValues(_Values):
    rollout: int = Field(50051, ge=1, le=65535, description="Rollout gRPC port on the head pod.")
    reward: int = Field(50052, ge=1, le=65535, description="Reward gRPC port on the head pod.")
    trainer: int = Field(50053, ge=1, le=65535, description="Trainer gRPC port on the head pod.")
    controller: int = Field(50054, ge=1, le=65535, description="Controller gRPC port on the head pod.")
    dashboard: int = Field(8080, ge=1, le=65535, description="Dashboard HTTP port on the head pod.")
    metrics: int = Field(9090, ge=1, le=65535, description="Controller's Prometheus port on the head pod.")
    rollout_loopback: int = Field(
        50061,
        ge=1,
        le=65535,
        description="With tls.existing_secret: the rollout's plaintext port on 127.0.0.1 of the head pod, for "
        "the drivers beside it and the liveness probe (never exposed; the tokens still apply).",
    )
    controller_loopback: int = Field(
        50064,
        ge=1,
        le=65535,
        description="With tls.existing_secret: the controller's plaintext port on 127.0.0.1 (see rollout_loopback).",
    )


class ExposedServiceValues(_Values):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field("ClusterIP", description="Service type.")
    port: int = Field(..., ge=1, le=65535, description="Port clients connect to.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Service annotations (load balancers).")


class ServicesValues(_Values):
    rollout: ExposedServiceValues = Field(
        default_factory=lambda: ExposedServiceValues(port=50051),
        description="'<release>-rollout': the endpoint users' gRPC clients query (RolloutService).",
    )
    controller: ExposedServiceValues = Field(
        default_factory=lambda: ExposedServiceValues(port=50051),
        description="'<release>-controller': ControllerService (StartRun, WatchRounds, ...).",
    )
    dashboard: ExposedServiceValues = Field(
        default_factory=lambda: ExposedServiceValues(port=80), description="'<release>-dashboard': the web dashboard."
    )


class IngressValues(_Values):
    enabled: bool = Field(False, description="Expose the dashboard through an Ingress.")
    class_name: str = Field("", description="ingressClassName; empty: the cluster default.")
    host: str = Field("", description="Host name of the dashboard; empty: any.")
    tls_secret: str = Field("", description="TLS Secret for `host`; empty: plain HTTP.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Ingress annotations.")


class AuthValues(_Values):
    control_token: str = Field(
        "",
        description="Control token (weights, training, runs; held by the services themselves); empty: generated "
        "once and kept.",
    )
    user_token: str = Field(
        "",
        description="User token (sampling and reads: your gRPC clients and the dashboard); empty: generated once "
        "and kept.",
    )
    existing_secret: str = Field(
        "",
        description="Use the keys 'control-token' and 'user-token' of this Secret instead (the chart makes none). "
        "Needed when the manifests are rendered without a cluster (helm template, Argo CD, Flux): there the "
        "chart cannot read back its generated tokens and would generate new ones at every render. helm "
        "install/upgrade read them back from the Secret they created.",
    )


class TLSValues(_Values):
    existing_secret: str = Field(
        "",
        description="A kubernetes.io/tls Secret (keys tls.crt, tls.key; e.g. from cert-manager) in the release's "
        "namespace: the rollout and controller gRPC endpoints, which their Services may expose, then speak TLS "
        "with it (the drivers on the head pod reach them on the ports.*_loopback ports); empty: plaintext.",
    )


class ProbeValues(_Values):
    period_seconds: int = Field(..., ge=1, description="Seconds between checks.")
    timeout_seconds: int = Field(
        ..., ge=8, description="Seconds one check may take: the servers get 5 s (together), Python's start the rest."
    )
    failure_threshold: int = Field(..., ge=1, description="Consecutive failed checks before Kubernetes acts.")


class ProbesValues(_Values):
    liveness: ProbeValues = Field(
        default_factory=lambda: ProbeValues(period_seconds=30, timeout_seconds=15, failure_threshold=6),
        description="Head container's liveness probe (`mpo client health --absent-ok` on every driver): restarts "
        "the head when a driver listens but has not answered SERVING for failure_threshold x period_seconds. "
        "Readiness stays KubeRay's own Ray check: KubeRay submits the drivers only once every Ray pod is ready.",
    )


class NetworkPolicyValues(_Values):
    enabled: bool = Field(True, description="Only the Ray cluster's own pods reach Ray, the trainer and the reward.")
    operator_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "kuberay-operator"},
        min_length=1,
        description="Labels of the KubeRay operator's pods, allowed to the Ray dashboard's job API (8265).",
    )
    operator_namespace: str = Field(
        "kuberay-system",
        min_length=1,
        description="Namespace of the KubeRay operator (only its pods there reach Ray's job API), as docs/deploy.md "
        "installs it. Find it: kubectl get pods -A -l app.kubernetes.io/name=kuberay-operator.",
    )
    clients: list[dict[str, Any]] = Field(
        default_factory=list,
        description="NetworkPolicy 'from' peers allowed to reach rollout, controller and dashboard; empty: any.",
    )


#: Fields of the run config the chart sets itself (templates/configmap.yaml): the model and the state on
#: the volume, the servers on the head pod's ports with the Secret's token (and TLS with loopback ports from
#: tls.existing_secret on the rollout and controller, plaintext otherwise); and those the
#: run config fills in from the top level (model, objective, prompt, trust_remote_code; the reward's pair
#: cap from `rounds`). values.yaml leaves them out and the schema forbids them. A server's request limits,
#: message size and concurrency stay the user's (`RunConfig` checks that the limits agree across services).
CHART_OWNED: dict[str, tuple[str, ...]] = {
    "ChartRunConfig": ("model", "store_dir", "pairs_dir"),
    "RolloutConfig": ("model", "trust_remote_code", "prompt", "weights_dir", "readable_roots", "ray_resources"),
    "RewardConfig": ("max_pairs_per_prompt", "rollout_address", "worker_ray_resources"),
    "TrainerConfig": (
        "model", "trust_remote_code", "prompt", "objective", "checkpoint_dir", "publish_dir", "readable_roots",
        "rollout_address", "ray_resources",
    ),
    "ControllerConfig": ("dashboard", "data_roots"),
    "ServerConfig": ("host", "port", "auth", "tls_cert_file", "tls_key_file", "loopback_port", "metrics_port"),
}  # fmt: skip


class ChartRunConfig(RunConfig):
    """The run the chart starts (and continues after a restart): the run config, with its name and prompt
    files required."""

    run_id: str = Field(..., min_length=1, description="Name of the run the controller starts or continues.")  # type: ignore[assignment]
    data: DataConfig = Field(  # type: ignore[assignment]
        ..., description="Prompt files, as paths inside the pods (e.g. on the PVC under storage.mount_path)."
    )


class ChartValues(_Values):
    """values.yaml of helm/onlinempo."""

    image: ImageValues = Field(default_factory=ImageValues)
    model: ModelValues
    storage: StorageValues = Field(default_factory=StorageValues)
    state_storage: StateStorageValues = Field(default_factory=StateStorageValues)
    ray: RayValues = Field(default_factory=RayValues)
    ports: PortValues = Field(default_factory=PortValues)
    services: ServicesValues = Field(default_factory=ServicesValues)
    ingress: IngressValues = Field(default_factory=IngressValues)
    auth: AuthValues = Field(default_factory=AuthValues)
    network_policy: NetworkPolicyValues = Field(default_factory=NetworkPolicyValues)
    tls: TLSValues = Field(default_factory=TLSValues)
    probes: ProbesValues = Field(default_factory=ProbesValues)
    drivers_generation: int = Field(
        0,
        ge=0,
        description="Bump to submit the drivers (RayJobs) again with an unchanged config, e.g. after "
        "the controller job used up its retries; a changed config does that by itself.",
    )
    run: ChartRunConfig = Field(
        ...,
        description="The run config (`mpo config example`); the chart fills in model, store_dir, pairs_dir and the "
        "servers' hosts and ports.",
    )
