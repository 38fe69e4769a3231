"""What the bench's bare ASGI apps (echo, proxy) share: the lifespan handshake and the whole
request body. Nothing more, so that they stay the floor they measure; they answer with the
services' own send_json (mlstack_common.asgi), whose source is on their path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.types import Receive, Send


async def lifespan(
    receive: Receive, send: Send, on_shutdown: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Answer the server's startup and shutdown; `on_shutdown` runs before the shutdown's."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if on_shutdown is not None:
                await on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Receive) -> bytes:
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = bool(message.get("more_body", False))
    return body
