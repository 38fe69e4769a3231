"""The gateway's connections over real sockets: the TLS handshake under the header timeout, a cap
on open connections (MAX_CONNECTIONS, shared with the model: test_http_limits.py), and a client
that never reads its answer cut off after WRITE_TIMEOUT_SECONDS."""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from pathlib import Path

import pytest

from harness.http import request
from harness.poll import eventually
from harness.services import API_KEY, SETOSA, ServiceProcess, start_gateway
from tests.certificates import self_signed_certificate
from tests.services.hostile import raw_request, seconds_until_closed
from tests.services.support import (
    fill_with_copies,
    metric,
    predict,
    serves_https,
)

# The first bytes of a TLS record holding a ClientHello, and no more of it.
HALF_A_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


@pytest.mark.parametrize("sent", [b"", HALF_A_CLIENT_HELLO], ids=["nothing", "half a hello"])
def test_a_tls_handshake_that_does_not_end_is_cut_off_at_the_header_timeout(
    model_server: ServiceProcess, log_dir: Path, tmp_path: Path, sent: bytes
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    gateway = start_gateway(
        model_server.url,
        log_dir,
        wait=None,
        TLS_CERT_FILE=str(cert),
        TLS_KEY_FILE=str(key),
        HEADER_TIMEOUT_SECONDS="1",
    )
    try:
        gateway.wait_for("serving HTTPS", lambda: serves_https(gateway, cert))
        with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
            sock.sendall(sent)
            # asyncio's own bound, without the gateway's, is 60 s.
            seconds, _ = seconds_until_closed(sock, limit=30)
        print(f"TLS handshake ({sent[:5]!r}) cut off after {seconds:.2f} s")
        # Within the 30 s it is waited for, so not by asyncio's bound; no tighter bound is
        # asserted (the machine is shared).
        assert seconds > 0.8
        assert serves_https(gateway, cert)
    finally:
        gateway.stop()


def test_a_client_that_never_reads_its_answer_is_cut_off_and_its_slot_freed(
    model_server: ServiceProcess, log_dir: Path
) -> None:
    data_dir = log_dir / f"never-reads-{uuid.uuid4().hex[:8]}"
    budget = 32 * 1024 * 1024
    gateway = start_gateway(
        model_server.url,
        log_dir,
        DATA_DIR=str(data_dir),
        HISTORY_MAX_BYTES=str(budget),
        WRITE_TIMEOUT_SECONDS="1",
        MAX_CONCURRENT_REQUESTS="1",
    )
    try:
        # About 20 MB of history in one page: more than the socket buffers on both sides hold.
        assert predict(gateway.url, [[5.123456789012345, 3.5, 1.4, 0.2]] * 1024).status == 200
        fill_with_copies({"DATA_DIR": str(data_dir)}, 300)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # A small receive window, so that the answer waits on the gateway's side.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", gateway.port))
            sock.sendall(
                raw_request("GET", "/api/v1/predictions?limit=1000", [("X-API-Key", API_KEY)])
            )
            started = time.monotonic()
            # Without the write timeout the client is never cut off: a minute is only a bound
            # on the wait.
            deadline = started + 60
            refused = "mlstack_gateway_refused_requests_total"
            eventually(
                lambda: metric(gateway, refused, reason="write_timeout") >= 1,
                "the client cut off",
                deadline - time.monotonic(),
                interval=0.1,
            )
            seconds = time.monotonic() - started
            # The gateway holds the connection no more; this side has it still.
            eventually(
                lambda: metric(gateway, "mlstack_gateway_open_connections") <= 0,
                "the connection closed",
                deadline - time.monotonic(),
                interval=0.1,
            )
            # The slot is free: the only one there is serves another request.
            assert predict(gateway.url, [SETOSA]).status == 200
            # What the kernels held is all that comes: the rest of the answer was dropped.
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
        print(f"a client that never reads: cut off after {seconds:.2f} s, {received} bytes sent")
        assert received < 20_000_000
        assert seconds >= 1
    finally:
        gateway.stop()


def test_connections_beyond_the_cap_get_503_while_open_ones_are_served(
    model_server: ServiceProcess, log_dir: Path
) -> None:
    gateway = start_gateway(
        model_server.url, log_dir, MAX_CONNECTIONS="8", HEADER_TIMEOUT_SECONDS="30"
    )
    held: list[socket.socket] = []
    try:
        port = gateway.port
        deadline = time.monotonic() + 15
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        eventually(
            lambda: metric(gateway, "mlstack_gateway_open_connections") >= 8,
            "8 connections open",
            deadline - time.monotonic(),
            interval=0.05,
        )
        refused = request("GET", gateway.url + "/healthz")
        assert refused.status == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json() == {"error": "server busy: 8 connections open, retry shortly"}
        refusals = metric(
            gateway, "mlstack_gateway_refused_requests_total", reason="max_connections"
        )
        assert refusals == 1
        # The connections already open are served.
        held[0].sendall(raw_request("GET", "/healthz", []))
        assert held[0].recv(65536).startswith(b"HTTP/1.1 200 ")
        # One closed, a new one is served.
        held.pop().close()
        eventually(
            lambda: metric(gateway, "mlstack_gateway_open_connections") < 8,
            "one of the 8 connections closed",
            deadline - time.monotonic(),
            interval=0.05,
        )
        assert request("GET", gateway.url + "/healthz").status == 200
    finally:
        for sock in held:
            sock.close()
        gateway.stop()
