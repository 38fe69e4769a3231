"""The hop's floor: a bare ASGI app that forwards each request to the model, at the path it was
sent to, and returns its answer.

It uses the gateway's own HTTP client (``HttpPool``) under the same uvicorn settings, but does no
authentication, validation or storage: what any Python hop in front of the model costs on this
machine. The gateway's latency over this proxy's is the price of its own work, above all the
durable commit. The model's URL comes from PROXY_MODEL_URL.
"""

from __future__ import annotations

import os

from mlstack_common.asgi import send_json
from mlstack_gateway.http_pool import HttpPool
from starlette.types import Receive, Scope, Send

from bench.bare_asgi import lifespan, read_body

_pool: HttpPool | None = None


async def _close_pool() -> None:
    if _pool is not None:
        await _pool.close()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global _pool  # noqa: PLW0603 - one pool per process, made on the first request's loop
    if scope["type"] == "lifespan":
        await lifespan(receive, send, on_shutdown=_close_pool)
        return
    body = await read_body(receive)
    if scope["method"] == "GET":  # readiness
        status, answer = 200, b"{}"
    else:
        if _pool is None:
            _pool = HttpPool(os.environ["PROXY_MODEL_URL"], max_connections=64, connect_timeout=1)
        response = await _pool.request("POST", scope["path"], body, timeout=5)
        status, answer = response.status, response.body
    await send_json(send, status, answer)
