"""A small pooled HTTP/1.1 keep-alive client on asyncio and httptools: the gateway's model calls.

Why not aiohttp: with many calls in flight to the model server, aiohttp's client cost more CPU
per call than the model server spends answering it, several times what this client costs (the
measurement: bench/results/gateway.md). It does only what the gateway needs: one request at a
time per connection, a body known up front, a response read whole (bounded in size),
connections reused most-recently-used first and closed after ``idle_seconds`` unused, or once
they are ``max_age_seconds`` old (give or take a tenth, so that a pool's connections do not all
go at once). A Service's connections are spread over its pods as they are opened, not its
requests: a pod added since (an autoscaler's) gets a share of a steady load only as connections
made before it are replaced, which, under a load that never leaves one idle, is their age alone.

A connect that has no answer within ``connect_timeout`` is not given up: another is begun beside
it, and the first to complete is taken. A new connection to a Service's address is drawn to one
of its pods each time, so the second may reach a live pod where the first went to one on a node
that died (its SYN dropped); and a connect that did complete while the event loop was too busy
to see it in time is not thrown away.

A request that has had no answer within ``ack_timeout`` (and twice the connection's smoothed
round trip) is looked at: if the peer's TCP has acknowledged none of it, the connection is closed
and the call fails as an ``UnacknowledgedError``, which the caller may send again on a
connection that has answered since (``answered_since``). That is a pooled connection to a pod
whose node died, found well before the call's deadline (the kernel's own retransmissions would
give up after minutes). A live peer's kernel acknowledges a request within its delayed-ACK wait
(tens of milliseconds), however long its application takes to answer, and one that stops reading
a long body has still acknowledged its start. A request whose one packet was lost on the way is
sent again by the kernel (its tail-loss probe) twice the round trip and 0.2 s later:
``ack_timeout`` must leave its acknowledgement time to come, or the call is sent twice. Linux
only (the socket's unacknowledged bytes, SIOCOUTQ, and its round trip, tcp_info); elsewhere
nothing is looked at. Over TLS, a request longer than the socket's send buffer is never looked at
(what waits in the transport is counted in its plain bytes): it waits for its deadline.

It reports why a call failed, so that the caller can decide what is safe to send again:
``ConnectError`` (nothing was sent), ``DisconnectedError`` (the connection closed before any byte
of the answer: typically a pooled keep-alive connection the server had just closed; an
``UnacknowledgedError`` when it was closed because the request went unacknowledged),
``ResponseError`` (a malformed or truncated answer), and ``TimeoutError`` (the deadline passed).
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import ipaddress
import random
import socket
import ssl
import struct
import sys
import termios
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# Connects under way at once for one new connection: each begun ``connect_timeout`` after the one
# before, while none has completed.
_CONNECTS_AT_ONCE = 4
# Where a socket's unacknowledged bytes can be read (SIOCOUTQ, which is TIOCOUTQ's number) and
# its round trip: Linux's struct tcp_info, as far as tcpi_rtt (the smoothed round trip, in
# microseconds).
_CAN_LOOK_AT_ACKS = sys.platform == "linux"
_TCP_INFO_BYTES = 72
_RTT_OFFSET = 68


def _unacknowledged_bytes(sock: Any) -> int:
    """The bytes written to ``sock`` that its peer's TCP has not acknowledged yet."""
    queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", queued)[0])


def _round_trip(sock: Any) -> float:
    """``sock``'s smoothed round trip, in seconds."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
    return int(struct.unpack_from("I", info, _RTT_OFFSET)[0]) / 1e6


class HttpClientError(Exception):
    """A call that got no usable answer."""


class ConnectError(HttpClientError):
    """No connection could be opened: the request was never sent."""


class DisconnectedError(HttpClientError):
    """The connection closed before any byte of the answer arrived."""


class UnacknowledgedError(DisconnectedError):
    """The connection was closed: the peer's TCP acknowledged none of the request (most likely
    its host is gone), so no answer was coming."""


class ResponseError(HttpClientError):
    """The answer was malformed, too large, or cut short."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request in flight."""

    def __init__(self, pool: HttpPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._answered = False
        # The request in flight: its length, when it was sent, and its one timer (the look at
        # its acknowledgement, then its deadline).
        self._sent = 0
        self._sent_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self.idle_since = 0.0
        # The loop's time past which the connection is closed once its call is done; none: never.
        self.retire_at = float("inf")

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        if self._pool.max_age_seconds:
            age = self._pool.max_age_seconds * random.uniform(0.9, 1.1)
            self.retire_at = asyncio.get_running_loop().time() + age

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Nothing was asked: a server talking out of turn cannot be trusted with the next call.
            self.close()
            return
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ResponseError(f"malformed HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._forget(self)
        if self._answered:
            self._fail(ResponseError("connection closed in the middle of the response"))
        else:
            self._fail(DisconnectedError("connection closed before the response"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > _MAX_RESPONSE_BYTES:
            self._fail(ResponseError(f"response larger than {_MAX_RESPONSE_BYTES} bytes"))
            self.close()
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        self._waiter = None
        if not self._parser.should_keep_alive():
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(HttpResponse(self._parser.get_status_code(), body))

    # used by the pool
    def send(
        self, data: bytes, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> asyncio.Future[HttpResponse]:
        """Send a request, to be answered by ``deadline``; looked at after the pool's
        ``ack_timeout`` (0: never) if it is not answered by then."""
        assert self._transport is not None
        waiter: asyncio.Future[HttpResponse] = loop.create_future()
        self._waiter = waiter
        self._answered = False
        self._sent = len(data)
        self._transport.write(data)
        self._loop = loop
        self._sent_at = loop.time()
        ack_timeout = self._pool.ack_timeout
        self._set_timer(self._sent_at + ack_timeout if ack_timeout > 0 else None, deadline)
        return waiter

    def _set_timer(self, look_at: float | None, deadline: float) -> None:
        """The call's timer: a look at its acknowledgement at ``look_at`` when that comes before
        the deadline, else the deadline."""
        assert self._loop is not None
        if look_at is not None and look_at < deadline:
            self._timer = self._loop.call_at(look_at, self._look_at_acks, deadline)
        else:
            self._timer = self._loop.call_at(deadline, self.time_out)

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def busy(self) -> bool:
        return self._waiter is not None

    def time_out(self) -> None:
        self._fail(TimeoutError("no response before the deadline"))
        self.close()

    def _look_at_acks(self, deadline: float) -> None:
        """Close the connection if the peer's TCP has acknowledged none of the request in
        flight, twice its round trip past ``ack_timeout`` (the module's docstring); otherwise
        look again then, or wait for the deadline."""
        assert self._loop is not None
        gone_after = self._unacknowledged_until()
        if gone_after is None or self._loop.time() < gone_after:
            self._set_timer(gone_after, deadline)
            return
        self._timer = None
        self._pool._unacknowledged()
        self._fail(UnacknowledgedError("no acknowledgement of the request: connection closed"))
        self.close()

    def _unacknowledged_until(self) -> float | None:
        """None when the request in flight is answered, acknowledged in part, or cannot be told
        about; else the moment after which its peer counts as gone."""
        transport = self._transport
        if self._waiter is None or self._answered or transport is None:
            return None
        # What of the request reached the kernel (the rest waits in the transport's buffer).
        # Over TLS, the request's plain bytes: the records that carry them are longer, so as
        # many unacknowledged leaves at most their overhead acknowledged, shorter than any
        # segment.
        handed = self._sent - transport.get_write_buffer_size()
        if handed <= 0:
            return None
        sock = transport.get_extra_info("socket")
        try:
            if _unacknowledged_bytes(sock) < handed:
                return None
            # A round trip of seconds (a long way, or a congested one) puts the kernel's own
            # resend of a lost packet, and its acknowledgement, later: looked at again then.
            return self._sent_at + self._pool.ack_timeout + 2 * _round_trip(sock)
        except (OSError, AttributeError, ValueError, struct.error):
            return None  # the socket is already closed, or tells nothing: the deadline decides

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        self._chunks.clear()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()


def _retrieved(attempt: asyncio.Task[_Connection]) -> None:
    """Mark a connect's outcome as seen: one that fails after the connection was taken elsewhere
    is of no interest to anyone."""
    if not attempt.cancelled():
        attempt.exception()


def _close_all_but(attempts: list[asyncio.Task[_Connection]], taken: _Connection | None) -> None:
    """Stop the connects under way (a connect cancelled closes its socket) and close the
    connections made besides ``taken``."""
    for attempt in attempts:
        if not attempt.done():
            attempt.cancel()
        elif not attempt.cancelled() and attempt.exception() is None:
            made = attempt.result()
            if made is not taken:
                made.close()


def _address_family(host: str) -> int | None:
    """The family of ``host`` when it is a numeric address; None when it is a name."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return None
    return socket.AF_INET6 if version == 6 else socket.AF_INET


class HttpPool:
    """Keep-alive connections to one origin (``http://host:port``), at most ``max_connections``."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        connect_timeout: float,
        idle_seconds: float = 30.0,
        max_age_seconds: float = 0.0,
        user_agent: str = "mlstack-gateway",
        ack_timeout: float = 0.0,
        on_slow_connect: Callable[[], None] | None = None,
        on_unacknowledged: Callable[[], None] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = parts.hostname
        self._host_family = _address_family(parts.hostname)
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        self.base_path = parts.path.rstrip("/")
        host_header = parts.netloc.rsplit("@", 1)[-1]
        # Everything but the request line and the body's length, encoded once.
        self._headers = (
            f"Host: {host_header}\r\nUser-Agent: {user_agent}\r\nAccept: application/json\r\n"
        ).encode("latin-1")
        self._max = max_connections
        self._connect_timeout = connect_timeout
        # Called each time a connect is begun because none had an answer within connect_timeout.
        self._on_slow_connect = on_slow_connect
        # How long a request may go unanswered before its acknowledgement is looked at; 0: never.
        self.ack_timeout = ack_timeout if _CAN_LOOK_AT_ACKS else 0.0
        # Called each time a connection is closed with its request unacknowledged.
        self._on_unacknowledged = on_unacknowledged
        self._idle_seconds = idle_seconds
        # How old a connection may grow before it is closed once its call is done; 0: no bound.
        self.max_age_seconds = max_age_seconds
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._opening = 0
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._closed = False

    def _request_bytes(self, method: str, path: str, body: bytes | None) -> bytes:
        line = f"{method} {self.base_path}{path} HTTP/1.1\r\n".encode("latin-1")
        if body is None:
            return line + self._headers + b"\r\n"
        length = b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        return b"".join((line, self._headers, length, body))

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        timeout: float,
        answered_since: float | None = None,
    ) -> HttpResponse:
        """Send one request and read its whole answer, all within ``timeout`` seconds.
        ``answered_since`` (the loop's time): on a pooled connection only if it has answered a
        call since then, else on a new one (the pool's longest idle one closed when it is full)
        or one another call has just finished with. The pool's other idle connections may lead
        to the same gone peer as one that just went unacknowledged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._take_idle(loop.time(), answered_since)
        if conn is None:
            conn = await self._acquire(loop, deadline, answered_since)
        waiter = conn.send(self._request_bytes(method, path, body), loop, deadline)
        try:
            return await waiter
        finally:
            conn.stop_timer()
            self._release(conn, loop)

    def _take_idle(self, now: float, answered_since: float | None = None) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self._idle_seconds or now >= conn.retire_at:
                conn.close()
                continue
            if answered_since is not None and conn.idle_since < answered_since:
                idle.append(conn)  # the most recently used: none below has answered since
                return None
            return conn
        return None

    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, deadline: float, answered_since: float | None
    ) -> _Connection:
        while True:
            if self._closed:
                raise ConnectError("the client is closed")
            conn = self._take_idle(loop.time(), answered_since)
            if conn is not None:
                return conn
            full = len(self._open) + self._opening >= self._max
            if answered_since is not None and self._idle and full:
                # Room for the new one: the idle connection unused longest is let go.
                oldest = self._idle.pop(0)
                self._open.discard(oldest)
                oldest.close()
            if len(self._open) + self._opening < self._max:
                return await self._connect(loop, deadline)
            slot: asyncio.Future[_Connection | None] = loop.create_future()
            self._waiters.append(slot)
            try:
                async with asyncio.timeout_at(deadline):
                    handed = await slot
            except BaseException:
                # Timed out or cancelled: pass on what may have been handed over meanwhile.
                if not slot.done():
                    slot.cancel()
                elif not slot.cancelled():
                    late = slot.result()
                    if late is None:
                        self._wake_one(None)
                    else:
                        self._release(late, loop)
                raise
            if handed is not None:
                if not handed.closed:
                    return handed
                continue
            # A connection closed: there is room to open one.

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        self._opening += 1
        try:
            conn = await self._open_connection(loop, deadline)
        except BaseException:
            self._opening -= 1
            self._wake_one(None)  # the slot this call held is free again
            raise
        self._opening -= 1
        if conn.closed:
            self._wake_one(None)  # as above: a caller waiting for a slot may open one
            raise DisconnectedError("connection closed as soon as it opened")
        self._open.add(conn)
        return conn

    async def _addresses(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> list[tuple[int, tuple[Any, ...]]]:
        """The host's addresses (family, socket address), looked up within the call's deadline,
        not the connect timeout: a name server slow to answer (a Service's name, on a busy node)
        is no unanswered connect."""
        if self._host_family is not None:
            return [(self._host_family, (self._host, self._port))]
        try:
            async with asyncio.timeout_at(deadline):
                found = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ConnectError(f"cannot resolve {self._host}: {exc}") from exc
        # The whole socket address: an IPv6 one's scope is part of it.
        addresses = list(dict.fromkeys((int(info[0]), tuple(info[4])) for info in found))
        if not addresses:
            raise ConnectError(f"cannot resolve {self._host}: no address")
        return addresses

    async def _connect_to(
        self, loop: asyncio.AbstractEventLoop, family: int, address: tuple[Any, ...]
    ) -> _Connection:
        """A connection to one address the lookup gave. The loop connects to it as a numeric
        host (no second lookup: both loops know one when they see it), its IPv6 scope, if any,
        written into it, as uvloop reads no scope from a socket address."""
        host, port = address[0], address[1]
        if family == socket.AF_INET6 and len(address) > 3 and address[3] and "%" not in host:
            host = f"{host}%{address[3]}"
        _, conn = await loop.create_connection(
            lambda: _Connection(self),
            host,
            port,
            family=family,
            ssl=self._ssl,
            server_hostname=self._host if self._ssl else None,
        )
        return conn

    async def _open_connection(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> _Connection:
        """A connection to the host. A connect is begun to the first address; another beside
        those under way each ``connect_timeout`` in which none completed (at most
        _CONNECTS_AT_ONCE under way), and at once when one failed while an address is left
        untried; the addresses in turn, then again from the first. The first to complete is
        taken, the others closed. Every connect failed (refused): a ConnectError, nothing was
        sent; the deadline passing first: a TimeoutError."""
        addresses = await self._addresses(loop, deadline)
        attempts: list[asyncio.Task[_Connection]] = []
        pending: set[asyncio.Task[_Connection]] = set()
        taken: _Connection | None = None
        failure: OSError | None = None
        begin, slow = True, False
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    if begin and len(pending) < _CONNECTS_AT_ONCE:
                        if slow and self._on_slow_connect is not None:
                            self._on_slow_connect()
                        family, address = addresses[len(attempts) % len(addresses)]
                        attempt = loop.create_task(self._connect_to(loop, family, address))
                        attempt.add_done_callback(_retrieved)
                        attempts.append(attempt)
                        pending.add(attempt)
                    done, pending = await asyncio.wait(
                        pending, timeout=self._connect_timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                    for attempt in done:
                        error = attempt.exception()
                        if error is None:
                            taken = attempt.result()
                            return taken
                        if not isinstance(error, OSError):
                            raise error
                        failure = error
                    slow = not done
                    begin = slow or len(attempts) < len(addresses)
                    if not begin and not pending:
                        raise ConnectError(
                            f"cannot connect to {self._host}:{self._port}: {failure}"
                        ) from failure
        except TimeoutError as exc:
            raise TimeoutError("no connection before the deadline") from exc
        finally:
            _close_all_but(attempts, taken)

    def _release(self, conn: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        if conn.closed:
            return  # _forget has accounted for it
        if conn.busy:
            # Cancelled mid-call: the answer may still arrive, so the connection cannot be reused.
            conn.close()
            return
        if self._closed or loop.time() >= conn.retire_at:
            conn.close()  # a waiter is woken to open another (_forget)
            return
        if self._wake_one(conn):
            return
        conn.idle_since = loop.time()
        self._idle.append(conn)

    def _wake_one(self, conn: _Connection | None) -> bool:
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(conn)
                return True
        return False

    def _unacknowledged(self) -> None:
        if self._on_unacknowledged is not None:
            self._on_unacknowledged()

    def _forget(self, conn: _Connection) -> None:
        """A connection has closed: it no longer counts against the limit."""
        if conn in self._open:
            self._open.remove(conn)
            self._wake_one(None)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(None)
        # Let the transports run their connection_lost callbacks.
        await asyncio.sleep(0)
