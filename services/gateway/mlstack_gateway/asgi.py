"""Answering a bare ASGI request, with no Starlette objects: the hot path and the refusals."""

from __future__ import annotations

from starlette.types import Send

Headers = tuple[tuple[bytes, bytes], ...]

RETRY_AFTER: Headers = ((b"retry-after", b"1"),)


async def send_json(send: Send, status: int, body: bytes, headers: Headers = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
