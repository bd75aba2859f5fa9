"""ServerHandle: the ready line every service prints, and stopping the server before what it serves from."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mpo.serving.handle import ServerHandle


class FakeServer:
    address = "127.0.0.1:5005"

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps

    async def stop(self, grace: float | None = None) -> None:
        self.steps.append(f"server stopped (grace {grace})")


@dataclass
class RunningEcho(ServerHandle):
    steps: list[str]
    name = "echo"

    def ready_details(self) -> dict[str, object]:
        return {"replicas": 2}

    async def release(self) -> None:
        self.steps.append("replicas released")


def test_ready_line_names_the_service_its_address_and_its_details() -> None:
    steps: list[str] = []
    handle = RunningEcho(FakeServer(steps), steps)
    assert handle.address == "127.0.0.1:5005"
    assert handle.ready_event() == {"event": "serving", "service": "echo", "address": "127.0.0.1:5005", "replicas": 2}


def test_stop_releases_only_after_the_server_stops_taking_calls() -> None:
    steps: list[str] = []
    asyncio.run(RunningEcho(FakeServer(steps), steps).stop(0))
    assert steps == ["server stopped (grace 0)", "replicas released"]
