"""Request ids: UUIDv7 (RFC 9562), time-ordered so that the database indexes them cheaply, or
the client's own, its ``Idempotency-Key``.

A random (version 4) id lands on a random page of the unique index on ``request_id``, so a group
commit of N rows dirties up to N index pages, each written to the WAL and synced; ids that grow
with time all land on the index's rightmost page (the measurement: bench/results/gateway.md).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable

from mlstack_gateway.errors import ApiError

_VARIANT = "89ab"  # the RFC 4122/9562 variant: the group's top two bits are 10

IDEMPOTENCY_KEY_HEADER = b"idempotency-key"
# A UUID of any version in RFC 9562's textual form, hexadecimal digits in either case (RFC 9562:
# case-insensitive on input): bare, or as the structured-field string that the IETF httpapi
# draft defining the header gives in its examples.
_UUID = re.compile(rb'("?)([0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})\1')


def new_request_id() -> str:
    """48 bits of Unix time in milliseconds, version 7, then 74 random bits, as UUID text."""
    stamp = f"{time.time_ns() // 1_000_000:012x}"
    rand = os.urandom(10).hex()
    variant = _VARIANT[int(rand[3], 16) & 3]
    return f"{stamp[:8]}-{stamp[8:]}-7{rand[:3]}-{variant}{rand[4:7]}-{rand[7:19]}"


def idempotency_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The request's Idempotency-Key (lower-cased ASGI headers), as a lower-case UUID: the id
    its prediction is stored under, so that a retry with the key finds it. None without the
    header; 400 for a repeated header or one that is not a UUID."""
    values = [value for name, value in headers if name == IDEMPOTENCY_KEY_HEADER]
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, "repeated Idempotency-Key header: send it once")
    match = _UUID.fullmatch(values[0])
    if match is None:
        # At most 40 bytes of it, and "..." after a value cut there.
        shown = values[0][:40].decode("latin-1") + ("..." if len(values[0]) > 40 else "")
        raise ApiError(
            400,
            "Idempotency-Key must be a UUID in its textual form, 8-4-4-4-12 hexadecimal digits "
            f"(e.g. 0190c3a2-7b1e-7cde-8f00-1234567890ab), got {shown!r}",
        )
    return match[2].decode().lower()
