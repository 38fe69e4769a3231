"""A request's body, read by a bare ASGI handler within a byte limit: the one reader the gateway's
predict and the model's infer share. Each service turns ``BodyError`` into its own error shape,
and answers nothing for ``ClientDisconnectedError``."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Receive

from mlstack_common.asgi import first_header
from mlstack_common.counts import read_count


class BodyError(Exception):
    """A body that is not taken: ``status`` is the HTTP status to answer it with (400, 413)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientDisconnectedError(Exception):
    """The client went away before its whole body arrived, or the server cut it off
    (http_limits, which reports either): nobody may read an answer, so there is no status to
    answer with, nor to count."""

    def __init__(self) -> None:
        super().__init__("client disconnected before sending the whole body")


def _too_large(limit: int) -> BodyError:
    return BodyError(413, f"request body too large: more than {limit} bytes")


async def read_body(
    receive: Receive, headers: Iterable[tuple[bytes, bytes]], limit: int
) -> bytes | bytearray:
    """The body of a request with these ASGI headers, refusing (413) anything larger than
    ``limit`` bytes.

    A body its Content-Length says is too large is refused before a byte of it is read. (The
    first one: the servers' HTTP parser refuses a request that repeats it, but an app called
    in-process may still see two.)
    """
    declared = first_header(headers, b"content-length")
    if declared is not None:
        try:
            count = read_count(declared.decode("latin-1"), limit)
        except ValueError:
            raise BodyError(400, "invalid Content-Length header") from None
        if count is None:
            raise _too_large(limit)
        if count > limit:
            raise BodyError(413, f"request body too large: {count} bytes, at most {limit}")
    body: bytes | bytearray = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError
        chunk: bytes = message.get("body", b"")
        if len(body) + len(chunk) > limit:
            raise _too_large(limit)
        more = message.get("more_body", False)
        if not body and not more:
            return chunk  # the whole body in one message: no copy
        if not body:
            # Grown in place: a large body is held once, not as chunks and their join.
            body = bytearray()
        body += chunk
        if not more:
            return body
