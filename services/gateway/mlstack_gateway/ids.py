"""Request ids: UUIDv7 (RFC 9562), time-ordered so that the database indexes them cheaply.

A random (version 4) id lands on a random page of the unique index on ``request_id``, so a group
commit of N rows dirties up to N index pages, each written to the WAL and synced; ids that grow
with time all land on the index's rightmost page (the measurement: bench/results/gateway.md).
"""

from __future__ import annotations

import os
import time

_VARIANT = "89ab"  # the RFC 4122/9562 variant: the group's top two bits are 10


def new_request_id() -> str:
    """48 bits of Unix time in milliseconds, version 7, then 74 random bits, as UUID text."""
    stamp = f"{time.time_ns() // 1_000_000:012x}"
    rand = os.urandom(10).hex()
    variant = _VARIANT[int(rand[3], 16) & 3]
    return f"{stamp[:8]}-{stamp[8:]}-7{rand[:3]}-{variant}{rand[4:7]}-{rand[7:19]}"
