"""The trailer fields of a chunked body, on each service as a real process: httptools gathers
them as it gathers a head, so they are held to the head's size limit (MAX_HEADER_BYTES, 431)
rather than growing with what a client sends until the body timeout."""

from __future__ import annotations

import contextlib
import socket

from tests.services.hostile import Raw, memory_mib, read_answer
from tests.services.support import Server

# Each service with its defaults is conftest's ``server``.


def chunked(server: Server, trailer: bytes) -> bytes:
    """The service's one-row POST with its body as one chunk, then the last chunk and
    ``trailer`` (header lines without the blank line that ends them)."""
    head = server.post.head.replace(
        b"\r\nContent-Length: 0\r\n", b"\r\nTransfer-Encoding: chunked\r\n"
    )
    body = server.post.one_row
    return head + b"%x\r\n" % len(body) + body + b"\r\n0\r\n" + trailer


def send(server: Server, data: bytes) -> Raw:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        return read_answer(sock)


def test_a_small_trailer_is_taken(server: Server) -> None:
    assert send(server, chunked(server, b"X-Checksum: 1234\r\n\r\n")).status == 200


def test_trailers_over_the_header_limit_get_431(server: Server) -> None:
    answer = send(server, chunked(server, b"X-Padding: " + b"a" * 20_000 + b"\r\n\r\n"))
    assert answer.status == 431
    assert answer.error() == "request trailers too large: at most 16384 bytes"
    many = b"".join(b"X-Padding-%d: %s\r\n" % (i, b"a" * 100) for i in range(200)) + b"\r\n"
    assert send(server, chunked(server, many)).status == 431


def test_a_64_mb_trailer_is_refused_without_being_held(server: Server) -> None:
    pid = server.process.pid
    before = memory_mib(pid)["VmHWM"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(chunked(server, b"X-Big: "))
        megabyte = b"a" * (1 << 20)
        with contextlib.suppress(OSError):  # the server may close before it has all 64 MB
            for _ in range(64):
                sock.sendall(megabyte)
            sock.sendall(b"\r\n\r\n")
        answer = read_answer(sock)
    peak = memory_mib(pid)["VmHWM"] - before
    print(f"64 MB trailer: {answer.status}, peak resident (VmHWM) grew {peak:.1f} MiB")
    assert answer.status == 431
    assert peak < 16
