"""Free TCP ports for the servers the tests and the e2e machinery start."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Collection

LOOPBACK = "127.0.0.1"


def free_ports(count: int, host: str = LOOPBACK, *, besides: Collection[int] = ()) -> list[int]:
    """`count` distinct ports nothing listens on at `host` right now (the kernel's picks for
    port 0), none of `besides` (ports the caller picked earlier and has not bound yet), each
    held until all are picked: two calls of `free_port` in a row may be given the same one.
    Another process may take one before the caller binds it: good enough for throwaway
    servers."""
    with contextlib.ExitStack() as held:
        socks = [
            held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count + len(besides))
        ]
        for sock in socks:
            sock.bind((host, 0))
        picked = [int(sock.getsockname()[1]) for sock in socks]
    return [port for port in picked if port not in besides][:count]


def free_port(host: str = LOOPBACK) -> int:
    """One port of `free_ports`: for a server that needs one."""
    return free_ports(1, host)[0]
