"""The body reader both services share (services/common: mlstack_common.body), in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest
from mlstack_common.asgi import first_header
from mlstack_common.body import BodyError, read_body


def read(
    headers: Iterable[tuple[bytes, bytes]], chunks: list[bytes], limit: int = 10
) -> tuple[bytes | bytearray, int]:
    """The body read from ``chunks`` (one ASGI message each), and how many were received."""
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        return messages[received - 1]

    return asyncio.run(read_body(receive, headers, limit)), received


def test_a_header_is_read_as_its_first_value() -> None:
    assert first_header([(b"host", b"x"), (b"content-length", b"5")], b"content-length") == b"5"
    repeated = [(b"content-length", b"5"), (b"content-length", b"99")]
    assert first_header(repeated, b"content-length") == b"5"
    assert first_header([(b"host", b"x")], b"content-length") is None


def test_the_first_content_length_is_the_one_checked() -> None:
    headers = [(b"content-length", b"5"), (b"content-length", b"99")]
    assert read(headers, [b"ab", b"cde"]) == (b"abcde", 2)
    with pytest.raises(BodyError) as caught:
        read(headers[::-1], [b"abcde"])
    assert (caught.value.status, caught.value.message) == (
        413,
        "request body too large: 99 bytes, at most 10",
    )


@pytest.mark.parametrize(
    ("length", "status"), [(b"11", 413), (b"9" * 5000, 413), (b"-1", 400), (b"1e3", 400)]
)
def test_a_declared_length_refused_is_refused_before_a_byte_is_read(
    length: bytes, status: int
) -> None:
    async def receive() -> dict[str, Any]:
        raise AssertionError("a byte was read")

    with pytest.raises(BodyError) as caught:
        asyncio.run(read_body(receive, [(b"content-length", length)], 10))
    assert caught.value.status == status


def test_without_a_declared_length_the_limit_holds_as_the_body_arrives() -> None:
    assert read([], [b"abcde", b"fghij"]) == (b"abcdefghij", 2)
    with pytest.raises(BodyError) as caught:
        read([], [b"abcde", b"fghij", b"k"])
    assert caught.value.status == 413
