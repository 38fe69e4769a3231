"""The ceiling: a bare ASGI app that answers every request with the body it was sent.

Served by the same uvicorn, event loop and HTTP parser as the model server, it does no routing,
no validation and no inference: the most a Python ASGI server answers on this machine.
"""

from __future__ import annotations

from mlstack_common.asgi import send_json
from starlette.types import Receive, Scope, Send

from bench.bare_asgi import lifespan, read_body


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    await send_json(send, 200, await read_body(receive))
