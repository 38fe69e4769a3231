"""Probing a server as a hostile client does: raw HTTP/1.1 on a socket (the two services' POSTs
among it), and the memory a process has used, from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from components import pod
from components.quantity import quantity_bytes
from harness.services import API_KEY, SETOSA, ServiceProcess
from tests.services.oip import INFER_PATH, infer_body


def error_message(body: bytes) -> str:
    """The message of an error answer's JSON ``body``, which must hold nothing else."""
    document = json.loads(body)
    assert set(document) == {"error"}, document
    message: str = document["error"]
    return message


@dataclass
class Raw:
    """An answer read off a socket: status, lower-cased headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> str:
        return error_message(self.body)


def read_answer(sock: socket.socket) -> Raw:
    """One HTTP/1.1 answer, with a Content-Length, from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Raw(int(status_line.split()[1]), headers, body)


def exchange(port: int, data: bytes, timeout: float = 10.0) -> Raw:
    """Send ``data`` as it is on a fresh connection and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_answer(sock)


def raw_request(
    method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes = b"", host: str = "x"
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{n}: {v}" for n, v in headers)]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True)
class Post:
    """The POST a service reads a body for: its path, the headers a client's requests to that
    service carry, and a body of one row it answers 200."""

    path: str
    headers: tuple[tuple[str, str], ...]
    one_row: bytes

    @property
    def head(self) -> bytes:
        """Its head, declaring no body (``Content-Length: 0``): ``with_content_length`` sets
        what it declares."""
        return raw_request("POST", self.path, self.headers)


PREDICT = Post(
    "/api/v1/predict", (("X-API-Key", API_KEY),), json.dumps({"instances": [SETOSA]}).encode()
)
# The model's one-row request as its client, the gateway, sends it: naming `predict`, the one
# output the gateway reads.
INFER = Post(
    INFER_PATH,
    (("Content-Type", "application/json"),),
    json.dumps(infer_body([SETOSA], outputs=[{"name": "predict"}])).encode(),
)


def with_content_length(head: bytes, length: int | bytes) -> bytes:
    """``head`` (a POST's from ``raw_request`` without a body, as ``Post.head``) declaring
    ``length`` instead of 0: a number of bytes, or the header's value as it is sent."""
    value = b"%d" % length if isinstance(length, int) else length
    zero = b"\r\nContent-Length: 0\r\n"
    assert head.count(zero) == 1, head
    return head.replace(zero, b"\r\nContent-Length: " + value + b"\r\n")


def memory_limit_mib(resources: pod.Resources) -> float:
    """The memory limit, in MiB, of a pod of `resources`: what a service must stay under."""
    return quantity_bytes(resources.memory_limit) / (1024 * 1024)


def memory_mib(pid: int) -> dict[str, float]:
    """VmHWM (the peak resident set since the process started) and VmRSS, in MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmHWM", "VmRSS"}:
            values[name] = int(value.split()[0]) / 1024
    return values


def seconds_until_closed(sock: socket.socket, limit: float = 30.0) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock``, and what it sent before."""
    started = time.monotonic()
    sock.settimeout(limit)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return time.monotonic() - started, received


async def post_and_read(
    port: int, head: bytes, payload: bytes, all_sent: asyncio.Barrier | None = None
) -> Raw:
    """Send ``head`` and ``payload`` on a fresh connection; the answer. A payload is declared
    in place of the ``Content-Length: 0`` of a POST's head (``with_content_length``); a request
    without one (a GET) sends none. With ``all_sent``, the last byte waits until every client
    sharing the barrier has sent the rest: each request is in flight, its body unfinished, at
    once."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if payload:
            head = with_content_length(head, len(payload))
        if all_sent is None:
            writer.write(head + payload)
            await writer.drain()
        else:
            writer.write(head + payload[:-1])
            await writer.drain()
            await all_sent.wait()
            # A request that was shed has its answer already and may find the socket closed.
            with contextlib.suppress(ConnectionError):
                writer.write(payload[-1:])
                await writer.drain()
        status_line = await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in {b"\r\n", b""}:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
        return Raw(int(status_line.split()[1]), headers, body)
    finally:
        writer.close()


async def burst(
    port: int, head: bytes, payload: bytes, clients: int, hold: bool = False
) -> list[Raw]:
    """``clients`` POSTs of ``payload`` at once, one connection each. With ``hold``, no body is
    finished until every client has sent all of its body but the last byte: however quickly the
    server answers, all of them are in flight together."""
    all_sent = asyncio.Barrier(clients) if hold else None
    return await asyncio.gather(
        *(post_and_read(port, head, payload, all_sent) for _ in range(clients))
    )


def send_64_mb_header(port: int, path: str) -> Raw:
    """A GET of ``path`` whose one header is 64 MB long, sent in 1 MB writes; the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode())
        chunk = b"a" * (1 << 20)
        with contextlib.suppress(OSError):  # the server may close before it has all 64 MB
            for _ in range(64):
                sock.sendall(chunk)
        return read_answer(sock)


def send_and_wait_for_close(port: int, data: bytes) -> tuple[float, bytes]:
    """Send ``data`` (part of a request, or nothing) and wait: the seconds until the server
    closes the connection, and what it sent before."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        if data:
            sock.sendall(data)
        return seconds_until_closed(sock)


def burst_statuses(port: int, head: bytes, payload: bytes, clients: int) -> list[int]:
    """The statuses of ``clients`` POSTs of ``payload`` in flight together (``burst`` with
    ``hold``), each checked to be a 200 or a 503 that says the server is busy and when to retry."""
    answers = asyncio.run(asyncio.wait_for(burst(port, head, payload, clients, hold=True), 180))
    for answer in answers:
        assert answer.status in {200, 503}, answer
        if answer.status == 503:
            assert answer.headers["retry-after"] == "1"
            assert "server busy" in answer.error()
    return [answer.status for answer in answers]


def assert_burst_shed_within(
    service: ServiceProcess, head: bytes, payload: bytes, memory_limit_mib: float
) -> None:
    """300 POSTs of ``payload`` at once, every body held unfinished until all are sent: the
    service's peak memory stays under 7/8 of its pod's limit, and some are admitted while the rest
    are shed. (Without the hold, a quick machine can answer each request before the next arrives,
    the bound is never reached and nothing is shown.)"""
    statuses = burst_statuses(service.port, head, payload, 300)
    memory = memory_mib(service.pid)
    size = len(payload) / 1e6
    print(f"300 concurrent {size:.0f} MB POSTs: {statuses.count(200)} answered, {memory}")
    assert memory["VmHWM"] < memory_limit_mib * 0.875
    assert 0 < statuses.count(200) < 300
