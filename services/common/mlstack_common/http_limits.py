"""uvicorn's httptools protocol with the limits it lacks: header size, read and write timeouts,
and a cap on open connections; and header values without the whitespace after them.

- The request line and headers may take ``max_header_bytes``; more is answered 431. httptools
  gathers a header's whole value before it hands it over, so a head that is still incomplete is
  measured as it arrives: memory stays within the limit plus one read, whatever a client sends.
  The trailer fields after a chunked body's last chunk are gathered the same way, and held to
  the same limit.
- The head must arrive within ``header_timeout`` of the connection opening, or of its first byte
  on a kept-alive connection; a connection that sends nothing is closed, one that sent part of a
  head gets 408.
- The body must arrive within ``body_timeout`` of the head's end; else 408 (or, if the
  application has answered already, the connection is simply closed).
- An idle kept-alive connection is closed after uvicorn's ``timeout_keep_alive``.
- A request httptools cannot parse gets 400, as JSON like every other error.
- A header's value reaches the application without the spaces and tabs around it, as RFC 9112
  reads a field line: httptools drops those before the value, not those after it, so
  ``Content-Length: 33 `` or ``X-API-Key: <key> `` would read as another value than the client's.
- A client that takes none of what is sent to it for ``write_timeout`` (the connection's send
  buffer above uvicorn's high-water mark all that time) is cut off: the connection is aborted,
  its unsent bytes dropped, and a request still sending sees a client that has gone.
- A connection beyond ``max_connections`` open on the server is answered 503 with
  ``Retry-After`` at once and closed, without its request being read; the connections already
  open are served as before. Over TLS a connection is counted from the end of its handshake (the
  handshake's own bound is the server's: serving.py).

The timeouts are deadlines on each connection, checked every ``TICK_SECONDS`` by one timer per
server while it has connections: with uvloop, arming and cancelling a timer for each request
costs more than the rest of these limits together (bench/results/hardening.md).

Every refusal closes the connection, and is reported to ``HttpLimits.on_refusal``; so is a client
that closes its connection in the middle of a request's body, before any answer
(``client_disconnected``). Either way, an application still reading that body sees a client that
has gone (mlstack_common.body's ClientDisconnectedError), and answers and counts nothing. The close
lingers: the answer goes out, then the connection's sending side is shut and what the client still
sends is read and dropped for up to ``LINGER_SECONDS``, so that the client can read the answer
instead of a reset that would discard it (its own end of sending closes the connection at once).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from mlstack_common.env import env_integer, env_number
from mlstack_common.errors import busy_connections, error_body


def _ignore(reason: str) -> None:
    pass


LINGER_SECONDS = 2.0
TICK_SECONDS = 0.25


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    write_timeout: float
    max_connections: int
    # Told the reason of every refusal (header_too_large, header_timeout, body_timeout,
    # malformed, write_timeout, max_connections) and of every request whose client went away
    # in the middle of its body (client_disconnected).
    on_refusal: Callable[[str], None] = _ignore

    @classmethod
    def from_env(cls, env: dict[str, str]) -> HttpLimits:
        """MAX_HEADER_BYTES, HEADER_TIMEOUT_SECONDS, BODY_TIMEOUT_SECONDS, WRITE_TIMEOUT_SECONDS
        and MAX_CONNECTIONS, or their defaults."""
        return cls(
            # The request line and headers of one request, in bytes; its trailer fields too.
            max_header_bytes=env_integer(env, "MAX_HEADER_BYTES", 16 * 1024, minimum=1024),
            # From a connection's first byte of a request (or its opening) to the headers' end.
            header_timeout=env_number(env, "HEADER_TIMEOUT_SECONDS", 5.0, 0.1),
            # From the end of the headers to the end of the body.
            body_timeout=env_number(env, "BODY_TIMEOUT_SECONDS", 10.0, 0.1),
            # How long the answer may wait for a client that takes none of it.
            write_timeout=env_number(env, "WRITE_TIMEOUT_SECONDS", 10.0, 0.1),
            # Connections open at once on one server (its listening port); the model's gRPC port
            # holds as many again (mlstack_model.grpc.connections).
            max_connections=env_integer(env, "MAX_CONNECTIONS", 1024),
        )


class LimitedHttpProtocol(HttpToolsProtocol):
    """One connection. Subclassed by ``limited_protocol`` with the limits to apply."""

    limits: ClassVar[HttpLimits]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # Reading a head: from the connection's start, and again after each request's end.
        self._reading_head = True
        # Bytes received while reading the current head: an upper bound of its size, unless
        # the head began within a read that was not counted (one that ended the previous
        # request), which ``_head_uncounted`` then says.
        self._head_received = 0
        self._read_counted = False
        self._head_uncounted = False
        # When the head (while reading one) or the body (after the head) must have arrived.
        self._deadline: float | None = None
        # While the client takes none of what is sent: when it is cut off.
        self._write_deadline: float | None = None
        self._refused = False
        # Answered 503 at once, beyond max_connections: never one of the server's connections.
        self._turned_away = False
        # Chunked bodies: the chunk headers so far (on this connection), whether no chunk data
        # has come since the latest (only the last chunk, of size 0, is never followed by data:
        # what follows it is the trailer section), the bytes received since then in reads that
        # began after it (a bound of a trailer section still arriving), and the request's
        # header fields before its trailer fields, which uvicorn appends to them.
        self._chunk_headers = 0
        self._after_chunk_header = False
        self._trailer_received = 0
        self._head_fields = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.server_state.connections) >= self.limits.max_connections:
            self._turn_away(transport)
            return
        super().connection_made(transport)
        self._deadline = self.loop.time() + self.limits.header_timeout
        _watch(self.loop, self.server_state)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._turned_away:
            return
        cycle = self.cycle
        if (
            not self._refused
            and not self._reading_head
            and cycle is not None
            and not cycle.response_started
        ):
            # A request's head arrived, not all of its body, and nothing was answered yet.
            self.limits.on_refusal("client_disconnected")
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_deadline = self.loop.time() + self.limits.write_timeout

    def resume_writing(self) -> None:
        self._write_deadline = None
        super().resume_writing()

    def data_received(self, data: bytes) -> None:
        if self._refused or self._turned_away:
            return
        self._read_counted = self._reading_head
        if self._reading_head:
            self._head_received += len(data)
            if self._deadline is None:
                # The first byte after an idle keep-alive wait: the head's clock starts now.
                self._deadline = self.loop.time() + self.limits.header_timeout
        trailing, chunk_headers = self._after_chunk_header, self._chunk_headers
        super().data_received(data)
        # (The parser's callbacks may have refused the request meanwhile.)
        refused, limit = self._refused, self.limits.max_header_bytes
        if not refused and self._reading_head and self._head_received > limit:
            self._refuse(431, "header_too_large", self._too_large_message())
        elif (
            not refused
            and trailing
            and self._after_chunk_header
            and self._chunk_headers == chunk_headers
        ):
            # No chunk data in all of this read: the trailer section, or a chunk whose data
            # has not come yet (which the next read's data ends).
            self._trailer_received += len(data)
            if self._trailer_received > limit:
                self._refuse(431, "header_too_large", self._trailers_too_large_message())

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        # Spaces and tabs only: any other byte at the end is part of the value.
        super().on_header(name, value.rstrip(b" \t"))

    def on_message_begin(self) -> None:
        self._head_uncounted = not self._read_counted
        if self._deadline is None:
            # A head that began in the read which ended the previous request.
            self._deadline = self.loop.time() + self.limits.header_timeout
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        limit = self.limits.max_header_bytes
        # The exact size is summed only when the bytes received do not already bound it.
        if (self._head_uncounted or self._head_received > limit) and self._head_size() > limit:
            self._refuse(431, "header_too_large", self._too_large_message())
            return
        self._reading_head = False
        self._head_received = 0
        self._read_counted = False
        self._deadline = self.loop.time() + self.limits.body_timeout
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._after_chunk_header = False
        if not self._refused:
            super().on_body(body)

    def on_chunk_header(self) -> None:
        self._chunk_headers += 1
        self._after_chunk_header = True
        self._trailer_received = 0
        # Trailer fields come only after the last chunk's header.
        self._head_fields = len(self.headers)

    def on_chunk_complete(self) -> None:
        if self._refused or not self._after_chunk_header:
            return
        # The last chunk, its trailer fields all handed over: their exact size, which the reads
        # counted in data_received do not bound when the section began in an uncounted one.
        trailers = self.headers[self._head_fields :]
        if (
            sum(len(name) + len(value) + 4 for name, value in trailers)
            > self.limits.max_header_bytes
        ):
            self._refuse(431, "header_too_large", self._trailers_too_large_message())

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._deadline = None
        self._reading_head = True
        self._head_received = 0
        self._read_counted = False
        self._after_chunk_header = False
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # httptools refused the bytes (a malformed request line, header or Content-Length):
        # the same JSON error and lingering close as every other refusal.
        if not self._refused:
            self._refuse(400, "malformed", "malformed HTTP request")

    # the limits
    def _head_size(self) -> int:
        """The request line and headers as sent, give or take the spaces around the values."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _too_large_message(self) -> str:
        return (
            f"request headers too large: at most {self.limits.max_header_bytes} bytes "
            "for the request line and headers"
        )

    def _trailers_too_large_message(self) -> str:
        return f"request trailers too large: at most {self.limits.max_header_bytes} bytes"

    def _turn_away(self, transport: asyncio.Transport) -> None:
        """Answer 503 without reading a request, and close (lingering, as ``_refuse`` does)."""
        self._turned_away = True
        self.limits.on_refusal("max_connections")
        body = error_body(busy_connections(self.limits.max_connections))
        _answer_and_close(self.loop, transport, 503, body, b"retry-after: 1\r\n")

    def expire(self, now: float) -> None:
        """Cut off a client that took none of its answer for the write timeout at ``now``;
        refuse the request if its head or body is late."""
        if self._write_deadline is not None and now >= self._write_deadline:
            self._write_deadline = None
            # Reported once: a pipelined request whose body was still coming goes with it.
            self._refused = True
            self.limits.on_refusal("write_timeout")
            # close() would wait for the unsent bytes to go, which is what does not happen.
            self.transport.abort()
            return
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        if self._refused or self.transport.is_closing():
            return
        if self._reading_head:
            self._head_timed_out()
        else:
            self._body_timed_out()

    def _head_timed_out(self) -> None:
        if self._head_received == 0 and not self._head_uncounted:
            # Nothing of a request came: there is nobody to answer.
            self.limits.on_refusal("header_timeout")
            self._refused = True
            self.transport.close()
            return
        seconds = f"{self.limits.header_timeout:g}"
        self._refuse(408, "header_timeout", f"request headers not received within {seconds} s")

    def _body_timed_out(self) -> None:
        seconds = f"{self.limits.body_timeout:g}"
        self._refuse(408, "body_timeout", f"request body not received within {seconds} s")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``status`` with a JSON error where that cannot garble a response, and close."""
        self._refused = True
        self._deadline = None
        self.limits.on_refusal(reason)
        cycle = self.cycle
        if self._reading_head:
            # The refused request has no cycle yet; ``cycle`` is the previous request's.
            answer = cycle is None or cycle.response_complete
        else:
            # Once the application has answered, a second answer would be one too many.
            answer = not cycle.response_started
        if cycle is not None and not cycle.response_complete:
            # The application's next receive or send sees a client that has gone.
            cycle.disconnected = True
            cycle.message_event.set()
        if answer:
            _answer_and_close(self.loop, self.transport, status, error_body(message))
        else:
            self.transport.close()


def _answer_and_close(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    status: int,
    body: bytes,
    headers: bytes = b"",
) -> None:
    """Write a JSON answer, then close the connection, lingering where the transport can."""
    transport.write(
        b"".join(
            (
                STATUS_LINE[status],
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                headers,
                b"connection: close\r\n\r\n",
                body,
            )
        )
    )
    if transport.can_write_eof():
        transport.write_eof()
        loop.call_later(LINGER_SECONDS, transport.close)
    else:
        transport.close()


# The servers whose connections a tick is checking.
_watched: weakref.WeakSet[ServerState] = weakref.WeakSet()


def _watch(loop: asyncio.AbstractEventLoop, server_state: ServerState) -> None:
    """Check the deadlines of ``server_state``'s connections every tick while it has any."""
    if server_state in _watched:
        return
    _watched.add(server_state)

    def tick() -> None:
        now = loop.time()
        for connection in list(server_state.connections):
            if isinstance(connection, LimitedHttpProtocol):
                connection.expire(now)
        if server_state.connections:
            loop.call_later(TICK_SECONDS, tick)
        else:
            _watched.discard(server_state)

    loop.call_later(TICK_SECONDS, tick)


def limited_protocol(limits: HttpLimits) -> type[LimitedHttpProtocol]:
    """The protocol class to give uvicorn's ``Config(http=...)``, bound to ``limits``."""
    return type("BoundLimitedHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})
