"""Answering a request without Starlette's objects (each service's hot path and its refusals), and
the JSON answers, errors included, of the routes Starlette serves."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from starlette.responses import Response
from starlette.types import Send

from mlstack_common.errors import error_body

Headers = tuple[tuple[bytes, bytes], ...]

JSON: Final = "application/json"
JSON_TYPE: Final = (b"content-type", JSON.encode())
# A refusal the client may send again a second later (busy, draining, still loading), as bare
# ASGI headers and as Starlette's.
RETRY_AFTER: Final[Headers] = ((b"retry-after", b"1"),)
RETRY_AFTER_HEADERS: Final[Mapping[str, str]] = {"Retry-After": "1"}


def first_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the first header `name` (lower-case, as ASGI gives names) among these, as
    Starlette's ``Headers.get`` gives it; None when there is none."""
    for key, value in headers:
        if key == name:
            return value
    return None


async def send_answer(send: Send, status: int, body: bytes, headers: Headers) -> None:
    """``body`` with ``headers`` (its content type among them) and its length."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, body: bytes, headers: Headers = ()) -> None:
    await send_answer(send, status, body, (JSON_TYPE, *headers))


def json_response(
    body: bytes, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(body, status_code=status, headers=headers, media_type=JSON)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """An error answer of either service: ``{"error": message}`` (error_body)."""
    return json_response(error_body(message), status, headers)
