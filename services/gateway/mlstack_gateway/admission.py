"""What the gateway lets in: a bound on requests in flight, and the drain after SIGTERM.

Every request but the probes counts against ``max_in_flight``; one more is answered 503 with
``Retry-After`` at once, before its body is read, so memory stays bounded by the requests
admitted (each at most MAX_BODY_BYTES of body) however many clients arrive together.

Draining (after SIGTERM): ``/readyz`` answers 503 at once; other requests are still served,
each answer closing its connection so that keep-alive clients move to another replica;
``drained()`` returns when no request is in flight.
"""

from __future__ import annotations

import asyncio

import orjson
from mlstack_common.asgi import RETRY_AFTER, send_json
from mlstack_common.errors import busy_in_flight, error_body
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.routes import HEALTH_PATH, READY_PATH

_DRAINING = orjson.dumps({"ready": False, "draining": True})
_CLOSE = (b"connection", b"close")


class Admission:
    def __init__(self, app: ASGIApp, max_in_flight: int, metrics: GatewayMetrics) -> None:
        self._app = app
        self._max = max_in_flight
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = error_body(busy_in_flight(max_in_flight))
        self._shed = metrics.shed
        metrics.in_flight.set_function(lambda: self._in_flight)
        self.draining = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = scope["path"]
        if path == READY_PATH and self.draining:
            await send_json(send, 503, _DRAINING, (_CLOSE,))
            return
        if path in (HEALTH_PATH, READY_PATH):
            await self._app(scope, receive, send)
            return
        if self._in_flight >= self._max:
            self._shed.inc()
            await send_json(send, 503, self._busy, RETRY_AFTER)
            return
        self._in_flight += 1
        self._idle.clear()
        try:
            await self._app(scope, receive, send if not self.draining else _closing(send))
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def drained(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()


def _closing(send: Send) -> Send:
    """``send``, with ``Connection: close`` added to the response's headers."""

    async def send_and_close(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
        await send(message)

    return send_and_close
