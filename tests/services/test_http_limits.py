"""The HTTP limits both servers share (services/common: mlstack_common.http_limits), probed on
each as a real process: a header size limit (431), and header and body read timeouts (408, or a
close when nothing came). The figures are in bench/results/hardening.md."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from harness.http import request
from harness.poll import poll
from tests.services.hostile import (
    exchange,
    memory_mib,
    raw_request,
    seconds_until_closed,
    send_64_mb_header,
    send_and_wait_for_close,
    with_content_length,
)
from tests.services.support import SERVICES, Server, serve

# Each service with its defaults is conftest's ``server``.


@pytest.fixture(scope="module", params=SERVICES)
def impatient(request: pytest.FixtureRequest) -> Iterator[Server]:
    """Each server with one-second read timeouts, so that the tests wait one second instead of
    the defaults. A server without them holds the connection past the 30 s the tests wait for
    it to close; no upper bound on the seconds is asserted (the machine is shared)."""
    yield from serve(request, HEADER_TIMEOUT_SECONDS="1", BODY_TIMEOUT_SECONDS="1")


# -- headers: a size limit -----------------------------------------------------------------------


def test_headers_over_the_limit_get_431(server: Server) -> None:
    path = server.probe_path
    answer = exchange(server.port, raw_request("GET", path, [("X-Padding", "a" * 20_000)]))
    assert answer.status == 431
    assert "request headers too large" in answer.error()
    many = raw_request("GET", path, [(f"X-Padding-{i}", "a" * 100) for i in range(200)])
    assert exchange(server.port, many).status == 431
    assert (
        exchange(server.port, raw_request("GET", path, [("X-Padding", "a" * 8000)])).status == 200
    )


def test_a_64_mb_header_is_refused_without_being_held(server: Server) -> None:
    pid = server.process.pid
    before = memory_mib(pid)["VmRSS"]
    meanwhile: list[float] = []

    def probe() -> None:
        for _ in range(5):
            started = time.monotonic()
            assert request("GET", server.process.url + server.probe_path).status == 200
            meanwhile.append(time.monotonic() - started)

    prober = threading.Thread(target=probe)
    prober.start()
    answer = send_64_mb_header(server.port, server.probe_path)
    prober.join()
    grown = memory_mib(pid)["VmRSS"] - before
    print(
        f"64 MB header: {answer.status}, RSS grew {grown:.1f} MiB, "
        f"slowest {server.probe_path} meanwhile {max(meanwhile):.3f} s"
    )
    assert grown < 16
    assert answer.status == 431
    # Served meanwhile: each probe answered 200 (no bound on its seconds: the machine is shared).
    assert len(meanwhile) == 5


# -- read timeouts -------------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    impatient: Server,
) -> None:
    seconds, received = send_and_wait_for_close(impatient.port, b"")
    assert received == b""
    assert seconds > 0.8


def test_half_a_head_gets_408_after_the_header_timeout(impatient: Server) -> None:
    half = impatient.post.head.partition(b"\r\n")[0] + b"\r\nHost: x\r\nX-Half-"
    seconds, received = send_and_wait_for_close(impatient.port, half)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"request headers not received within 1 s" in received
    assert seconds > 0.8


def test_half_a_body_gets_408_after_the_body_timeout(impatient: Server) -> None:
    head = with_content_length(impatient.post.head, 100)
    seconds, received = send_and_wait_for_close(impatient.port, head + b'{"inputs": [[5.1, ')
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"request body not received within 1 s" in received
    assert seconds > 0.8


def test_a_trickled_body_is_cut_off_at_the_body_timeout(impatient: Server) -> None:
    # One byte every 0.2 s: each read is quick, the whole body is not.
    head = with_content_length(impatient.post.head, 1000)
    with socket.create_connection(("127.0.0.1", impatient.port)) as sock:
        sock.sendall(head)

        def answered_or_one_more_byte() -> bool:
            """Whether the server has answered; if not, the next byte of the body."""
            sock.setblocking(False)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    return True
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
            sock.sendall(b" ")
            return False

        # Cut off while bytes still trickle in: the 1,000 bytes would take 200 s, and a minute
        # of them is far past the timeout (no tighter bound: the machine is shared).
        cut_off = True
        with contextlib.suppress(OSError):  # the server closed while a byte was on its way
            cut_off = poll(answered_or_one_more_byte, 60, interval=0.2)
        _, received = seconds_until_closed(sock)
    assert cut_off, "the body still trickled in after a minute"
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"request body not received within 1 s" in received


# -- open connections: a cap ---------------------------------------------------------------------


@pytest.fixture(scope="module", params=SERVICES)
def capped(request: pytest.FixtureRequest) -> Iterator[Server]:
    """Each server with room for 4 connections, each kept open while it sends nothing."""
    yield from serve(request, MAX_CONNECTIONS="4", HEADER_TIMEOUT_SECONDS="30")


def test_a_connection_beyond_the_cap_gets_503_at_once(capped: Server) -> None:
    held = [socket.create_connection(("127.0.0.1", capped.port)) for _ in range(4)]
    try:
        # Each held connection is served, so each is open on the server's side too.
        for sock in held:
            sock.sendall(raw_request("GET", capped.probe_path, []))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        answer = exchange(capped.port, raw_request("GET", capped.probe_path, []))
        assert answer.status == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.error() == "server busy: 4 connections open, retry shortly"
    finally:
        for sock in held:
            sock.close()
