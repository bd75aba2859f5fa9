"""Free TCP ports, for what must be told its port before it binds (a process group's rendezvous, a Ray
node's GCS, an actor whose port must outlive its restarts)."""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports free on `host` ("" or "0.0.0.0": every interface); all are held open until
    every one is chosen, so none comes back twice. Another process may still take one before its user binds it."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]
