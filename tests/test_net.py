"""free_ports: distinct ports that the caller can bind right after."""

from __future__ import annotations

import socket
from contextlib import ExitStack

import pytest

from mpo.net import free_port, free_ports


@pytest.mark.parametrize("host", ["127.0.0.1", ""])
def test_free_ports_are_distinct_and_bindable(host: str) -> None:
    ports = free_ports(16, host)
    assert len(set(ports)) == 16
    with ExitStack() as stack:  # all at once: none is taken by another of them
        for port in ports:
            stack.enter_context(socket.socket()).bind((host, port))


def test_free_port_is_bindable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
