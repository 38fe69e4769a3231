"""A small pooled HTTP/1.1 keep-alive client on asyncio and httptools: the gateway's model calls.

Why not aiohttp: with many calls in flight to the model server, aiohttp's client cost more CPU
per call than the model server spends answering it, several times what this client costs (the
measurement: bench/results/gateway.md). It does only what the gateway needs: one request at a
time per connection, a body known up front, a response read whole (bounded in size),
connections reused most-recently-used first and closed after ``idle_seconds`` unused.

It reports why a call failed, so that the caller can decide what is safe to send again:
``ConnectError`` (nothing was sent), ``DisconnectedError`` (the connection closed before any byte
of the answer: typically a pooled keep-alive connection the server had just closed),
``ResponseError`` (a malformed or truncated answer), and ``TimeoutError`` (the deadline passed).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

_MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class HttpClientError(Exception):
    """A call that got no usable answer."""


class ConnectError(HttpClientError):
    """No connection could be opened: the request was never sent."""


class DisconnectedError(HttpClientError):
    """The connection closed before any byte of the answer arrived."""


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
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

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
    def send(self, data: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[HttpResponse]:
        assert self._transport is not None
        waiter: asyncio.Future[HttpResponse] = loop.create_future()
        self._waiter = waiter
        self._answered = False
        self._transport.write(data)
        return waiter

    @property
    def busy(self) -> bool:
        return self._waiter is not None

    def time_out(self) -> None:
        self._fail(TimeoutError("no response before the deadline"))
        self.close()

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


class HttpPool:
    """Keep-alive connections to one origin (``http://host:port``), at most ``max_connections``."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        connect_timeout: float,
        idle_seconds: float = 30.0,
        user_agent: str = "mlstack-gateway",
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = parts.hostname
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
        self._idle_seconds = idle_seconds
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
        self, method: str, path: str, body: bytes | None = None, *, timeout: float
    ) -> HttpResponse:
        """Send one request and read its whole answer, all within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._take_idle(loop.time())
        if conn is None:
            conn = await self._acquire(loop, deadline)
        waiter = conn.send(self._request_bytes(method, path, body), loop)
        timer = loop.call_at(deadline, conn.time_out)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._release(conn, loop)

    def _take_idle(self, now: float) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self._idle_seconds:
                conn.close()
                continue
            return conn
        return None

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        while True:
            if self._closed:
                raise ConnectError("the client is closed")
            conn = self._take_idle(loop.time())
            if conn is not None:
                return conn
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
            remaining = min(self._connect_timeout, deadline - loop.time())
            if remaining <= 0:
                raise TimeoutError("no time left to connect")
            async with asyncio.timeout(remaining):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), self._host, self._port, ssl=self._ssl
                )
        except BaseException as exc:
            self._opening -= 1
            self._wake_one(None)  # the slot this call held is free again
            # TimeoutError is an OSError too, but a connect that timed out is not retried.
            if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
                raise ConnectError(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
            raise
        self._opening -= 1
        if conn.closed:
            raise DisconnectedError("connection closed as soon as it opened")
        self._open.add(conn)
        return conn

    def _release(self, conn: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        if conn.closed:
            return  # _forget has accounted for it
        if conn.busy:
            # Cancelled mid-call: the answer may still arrive, so the connection cannot be reused.
            conn.close()
            return
        if self._closed:
            conn.close()
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
