"""harness/ports.py: free ports for the servers the tests, bench and e2e start."""

from __future__ import annotations

import socket

from harness.ports import LOOPBACK, free_ports

# Enough that ports picked one at a time, each socket closed before the next bind, would
# repeat one (the kernel may hand a port it just freed out again).
MANY = 256


def test_ports_picked_together_are_distinct_and_free() -> None:
    ports = free_ports(MANY)

    assert len(set(ports)) == MANY
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, port))


def test_ports_picked_after_others_are_none_of_them() -> None:
    """A test picks a port to restart a server on, then starts the server, whose other ports
    are picked while that one is free again: they must not be it."""
    earlier = free_ports(MANY)

    later = free_ports(MANY, besides=earlier)

    assert len(set(later)) == MANY and not set(later) & set(earlier)
