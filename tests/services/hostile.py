"""Probing a server as a hostile client does: raw HTTP/1.1 on a socket (the two services' POSTs
among it), HTTP/2 frame by frame as a gRPC client's connection carries them, and the memory a
process has used, from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Self

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


# -- HTTP/2, frame by frame (RFC 9113) ----------------------------------------------------------

# What a client sends first on a connection that speaks HTTP/2 from its first byte (h2c "with
# prior knowledge", as gRPC's plaintext channels do), before its SETTINGS frame.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Flags: END_STREAM on DATA and HEADERS, and ACK on SETTINGS and PING, are the same bit.
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
# GOAWAY's error codes.
NO_ERROR = 0x0
ENHANCE_YOUR_CALM = 0xB


class FrameType(IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8


@dataclass(frozen=True)
class Frame:
    type: int
    flags: int
    stream: int
    payload: bytes


@dataclass(frozen=True)
class GoAway:
    """A GOAWAY's payload: the last stream the server processes, why, and its debug text."""

    last_stream: int
    error: int
    debug: bytes


def _hpack_literal(name: str, value: str) -> bytes:
    """One header field as HPACK's "literal without indexing, new name", neither string Huffman
    coded: what any decoder reads, with no table on either side."""
    encoded = b"\x00"
    for text in (name, value):
        data = text.encode()
        assert len(data) < 127, "a length that needs more than HPACK's 7-bit prefix"
        encoded += bytes([len(data)]) + data
    return encoded


class Http2Client:
    """A client's HTTP/2 connection to ``target`` (``host:port``) without TLS, driven frame by
    frame: it sends what the test tells it, and what every client must (the preface, its
    SETTINGS, an ACK of the server's SETTINGS and PINGs). ``goaway`` is the last GOAWAY the
    server sent, ``closed`` whether the server has closed (or reset) the connection. Every read
    waits at most ``timeout`` seconds, then fails the test."""

    def __init__(self, target: str, timeout: float = 30.0) -> None:
        host, _, port = target.rpartition(":")
        self.timeout = timeout
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.goaway: GoAway | None = None
        self.closed = False
        self.sock.sendall(H2_PREFACE + self._frame(FrameType.SETTINGS, 0, 0))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    @staticmethod
    def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
        return (
            len(payload).to_bytes(3, "big")
            + bytes([kind, flags])
            + stream.to_bytes(4, "big")
            + payload
        )

    def send(self, kind: int, flags: int, stream: int, payload: bytes = b"") -> bool:
        """One frame; whether it went out (not when the server has closed the connection)."""
        try:
            self.sock.sendall(self._frame(kind, flags, stream, payload))
        except OSError:
            self.closed = True
            return False
        return True

    def _receive(self, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            try:
                chunk = self.sock.recv(size - len(data))
            except TimeoutError:
                waited = f"{self.timeout:g} s"
                raise AssertionError(f"no frame from the server within {waited}") from None
            except ConnectionError:
                chunk = b""
            if not chunk:
                self.closed = True
                return None
            data += chunk
        return data

    def read(self) -> Frame | None:
        """The server's next frame, or None once it has closed the connection. Its SETTINGS and
        PINGs are acknowledged, its GOAWAY kept in ``goaway``."""
        head = self._receive(9)
        if head is None:
            return None
        length = int.from_bytes(head[:3], "big")
        payload = self._receive(length) if length else b""
        if payload is None:
            return None
        frame = Frame(head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload)
        if frame.type in (FrameType.SETTINGS, FrameType.PING) and not frame.flags & ACK:
            self.send(frame.type, ACK, 0, payload if frame.type == FrameType.PING else b"")
        elif frame.type == FrameType.GOAWAY:
            self.goaway = GoAway(
                int.from_bytes(payload[:4], "big") & 0x7FFFFFFF,
                int.from_bytes(payload[4:8], "big"),
                payload[8:],
            )
        return frame

    def read_until(self, wanted: Callable[[Frame], bool]) -> Frame | None:
        """Read until a frame that is ``wanted``, which it returns; None if the server closes
        the connection first."""
        while (frame := self.read()) is not None:
            if wanted(frame):
                return frame
        return None

    def accepted(self) -> bool:
        """Whether the server serves the connection: its SETTINGS come, rather than a close."""
        served = self.read_until(
            lambda frame: frame.type == FrameType.SETTINGS and not frame.flags & ACK
        )
        return served is not None

    def ping(self, data: bytes = b"\0" * 8) -> bool:
        """A PING of 8 bytes ``data``: whether the server acknowledged it before it closed the
        connection."""
        assert len(data) == 8
        if not self.send(FrameType.PING, 0, 0, data):
            return False
        acked = self.read_until(
            lambda frame: (
                frame.type == FrameType.PING and bool(frame.flags & ACK) and frame.payload == data
            )
        )
        return acked is not None

    def wait_goaway(self) -> GoAway | None:
        """Read until the server sends GOAWAY: its payload, or None if it closed without one."""
        self.read_until(lambda frame: frame.type == FrameType.GOAWAY)
        return self.goaway

    def wait_closed(self) -> list[Frame]:
        """Read until the server closes the connection: the frames it sent meanwhile."""
        frames = []
        while (frame := self.read()) is not None:
            frames.append(frame)
        return frames

    def start_call(self, stream: int, path: str, authority: str = "127.0.0.1") -> None:
        """A gRPC call of method ``path`` on ``stream`` (odd, each higher than the last): its
        headers alone, so that it is in flight until ``finish_call`` sends its message."""
        fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        block = b"".join(_hpack_literal(name, value) for name, value in fields)
        assert self.send(FrameType.HEADERS, END_HEADERS, stream, block), "the server closed"

    def finish_call(self, stream: int, message: bytes) -> bool:
        """The call's one ``message`` (gRPC's length-prefixed framing, uncompressed), ending
        its stream; whether it went out."""
        framed = b"\x00" + len(message).to_bytes(4, "big") + message
        return self.send(FrameType.DATA, END_STREAM, stream, framed)

    def answer(self, stream: int) -> bytes | None:
        """The message the server answers on ``stream``, read until the stream ends (its
        trailers); None if it ends, or the connection closes, without one."""
        message: bytes | None = None
        while (frame := self.read()) is not None:
            if frame.stream != stream:
                continue
            if frame.type == FrameType.DATA and len(frame.payload) >= 5:
                message = frame.payload[5 : 5 + int.from_bytes(frame.payload[1:5], "big")]
            if frame.type == FrameType.RST_STREAM or frame.flags & END_STREAM:
                return message
        return None
