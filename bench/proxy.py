"""The hop's floor: a bare ASGI app that forwards each request to the model and returns its answer.

It uses the gateway's own HTTP client (``HttpPool``) under the same uvicorn settings, but does no
authentication, validation or storage: what any Python hop in front of the model costs on this
machine. The gateway's latency over this proxy's is the price of its own work, above all the
durable commit. The model's URL comes from PROXY_MODEL_URL.
"""

from __future__ import annotations

import os

from mlstack_gateway.http_pool import HttpPool
from starlette.types import Receive, Scope, Send

_INFER = "/v2/models/iris/infer"
_pool: HttpPool | None = None


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global _pool  # noqa: PLW0603 - one pool per process, made on the first request's loop
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _pool is not None:
                    await _pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = bool(message.get("more_body", False))
    if scope["method"] == "GET":  # readiness
        status, answer = 200, b"{}"
    else:
        if _pool is None:
            _pool = HttpPool(os.environ["PROXY_MODEL_URL"], max_connections=64, connect_timeout=1)
        response = await _pool.request("POST", _INFER, body, timeout=5)
        status, answer = response.status, response.body
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(answer)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer})
