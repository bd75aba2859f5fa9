"""Service discovery: a real local Ray for embedded mode, config and Kubernetes names for clusters."""

from __future__ import annotations

import threading
import time

import pytest
import ray

from mpo.config import KubernetesServices, RegistryConfig
from mpo.services.common.registry import RayRegistry, StaticRegistry, kubernetes_addresses, registry_from_config


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, namespace="mpo-tests", log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_registry_waits_for_late_registration_and_is_shared(local_ray) -> None:
    first, second = RayRegistry(), RayRegistry()  # same named actor, e.g. two services' processes
    threading.Timer(0.5, lambda: first.register("rollout", "127.0.0.1:50051")).start()
    started = time.monotonic()
    assert second.resolve("rollout", timeout=20) == "127.0.0.1:50051"
    assert time.monotonic() - started >= 0.4, "resolve must have waited for the registration"
    with pytest.raises(LookupError, match=r"service 'trainer' did not register within 0.2s \(registered: rollout\)"):
        second.resolve("trainer", timeout=0.2)


def test_ray_registry_from_config_seeds_overrides(local_ray) -> None:
    registry = registry_from_config(RegistryConfig(mode="ray", addresses={"reward": "10.0.0.5:6000"}))
    assert registry.resolve("reward", timeout=5) == "10.0.0.5:6000"


def test_static_and_kubernetes_registries() -> None:
    static = registry_from_config(RegistryConfig(mode="static", addresses={"rollout": "rollout:50051"}))
    assert static.resolve("rollout") == "rollout:50051"
    with pytest.raises(LookupError, match="no address configured for service 'reward' \\(configured: rollout\\)"):
        static.resolve("reward")

    k8s = RegistryConfig(
        mode="kubernetes",
        kubernetes=KubernetesServices(release="demo", namespace="ml", port=50051),
        addresses={"controller": "controller.example:443"},
    )
    registry = registry_from_config(k8s)
    assert registry.resolve("rollout") == "demo-rollout.ml.svc.cluster.local:50051"
    assert registry.resolve("controller") == "controller.example:443"
    assert set(kubernetes_addresses(k8s.kubernetes)) == {"rollout", "reward", "trainer", "controller"}
    assert isinstance(registry, StaticRegistry)


@pytest.mark.parametrize(
    ("config", "message"),
    [({"mode": "kubernetes"}, "needs the kubernetes section"), ({"mode": "static"}, "needs addresses")],
)
def test_registry_config_errors(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RegistryConfig(**config)
