"""How services find each other, embedded (local Ray) or on a cluster (config or Kubernetes DNS)."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import ray

from mpo.config import KubernetesServices, RegistryConfig

RAY_NAMESPACE = "mpo"
REGISTRY_ACTOR = "mpo-service-registry"


class ServiceRegistry(Protocol):
    def register(self, name: str, address: str) -> None: ...
    def resolve(self, name: str, timeout: float = 30.0) -> str: ...


class StaticRegistry:
    """Fixed addresses (from config, or derived from Kubernetes Service names)."""

    def __init__(self, addresses: dict[str, str]) -> None:
        self._addresses = dict(addresses)

    def register(self, name: str, address: str) -> None:
        self._addresses[name] = address

    def resolve(self, name: str, timeout: float = 30.0) -> str:
        try:
            return self._addresses[name]
        except KeyError:
            known = ", ".join(sorted(self._addresses)) or "none"
            raise LookupError(f"no address configured for service '{name}' (configured: {known})") from None


def kubernetes_addresses(services: KubernetesServices) -> dict[str, str]:
    """`<release>-<service>.<namespace>.svc.cluster.local:<port>`, the names the Helm chart creates."""
    return {
        name: f"{services.release}-{name}.{services.namespace}.svc.cluster.local:{services.port}"
        for name in ("rollout", "reward", "trainer", "controller")
    }


@ray.remote(num_cpus=0)
class _AddressBook:
    """Named, detached Ray actor: survives the driver, so a resumed controller finds live services."""

    def __init__(self) -> None:
        self._addresses: dict[str, str] = {}
        self._changed = asyncio.Event()

    async def register(self, name: str, address: str) -> None:
        self._addresses[name] = address
        self._changed.set()
        self._changed = asyncio.Event()

    async def resolve(self, name: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while name not in self._addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return None
        return self._addresses[name]

    async def snapshot(self) -> dict[str, str]:
        return dict(self._addresses)


class RayRegistry:
    """Embedded mode: services publish their bound address in a named actor on the local Ray."""

    def __init__(self) -> None:
        if not ray.is_initialized():
            raise RuntimeError("RayRegistry needs ray.init() first")
        self._book = _AddressBook.options(
            name=REGISTRY_ACTOR, namespace=RAY_NAMESPACE, lifetime="detached", get_if_exists=True
        ).remote()

    def register(self, name: str, address: str) -> None:
        ray.get(self._book.register.remote(name, address))

    def resolve(self, name: str, timeout: float = 30.0) -> str:
        """Wait up to `timeout` seconds for `name` to register (services start in any order)."""
        address = ray.get(self._book.resolve.remote(name, timeout))
        if address is None:
            known = ", ".join(sorted(ray.get(self._book.snapshot.remote()))) or "none"
            raise LookupError(f"service '{name}' did not register within {timeout:g}s (registered: {known})")
        return address


def registry_from_config(config: RegistryConfig) -> ServiceRegistry:
    if config.mode == "static":
        return StaticRegistry(config.addresses)
    if config.mode == "kubernetes":
        assert config.kubernetes is not None  # checked by RegistryConfig
        return StaticRegistry({**kubernetes_addresses(config.kubernetes), **config.addresses})
    registry = RayRegistry()
    for name, address in config.addresses.items():
        registry.register(name, address)
    return registry
