"""Per-method Prometheus metrics and one structured (JSON) log line per RPC."""

from __future__ import annotations

import json
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

rpc_log = logging.getLogger("mpo.rpc")


class RpcMetrics:
    """Metrics of one server, in its own registry so several servers can share a process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mpo_rpc_requests", "Finished RPCs by method and status code.", ["method", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "mpo_rpc_latency_seconds", "RPC wall time by method.", ["method"], registry=self.registry
        )
        self.in_flight = Gauge("mpo_rpc_in_flight", "RPCs currently running.", registry=self.registry)

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method=method, code=code).inc()
        self.latency.labels(method=method).observe(seconds)

    def count(self, method: str, code: str) -> float:
        """Finished calls of `method` with `code` so far (0 when none)."""
        value = self.registry.get_sample_value("mpo_rpc_requests_total", {"method": method, "code": code})
        return value or 0.0


def log_rpc(*, service: str, method: str, request_id: str, code: str, seconds: float, peer: str, detail: str) -> None:
    record = {
        "event": "rpc",
        "service": service,
        "method": method,
        "request_id": request_id,
        "code": code,
        "ms": round(seconds * 1000, 3),
        "peer": peer,
    }
    if detail:
        record["detail"] = detail
    level = logging.INFO if code == "OK" else logging.WARNING
    rpc_log.log(level, json.dumps(record, sort_keys=True))
