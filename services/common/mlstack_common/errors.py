"""The body of every error both services answer, ``{"error": message}``, and the messages of the
refusals they share."""

from __future__ import annotations

import orjson


def error_body(message: str) -> bytes:
    """The JSON body of an error answer: ``message`` and nothing else."""
    return orjson.dumps({"error": message})


def busy_in_flight(max_in_flight: int) -> str:
    """Why a request is refused while ``max_in_flight`` requests are being served."""
    return _busy(f"{max_in_flight} requests in flight")


def busy_connections(max_connections: int) -> str:
    """Why a connection is refused while ``max_connections`` are open."""
    return _busy(f"{max_connections} connections open")


def _busy(what: str) -> str:
    return f"server busy: {what}, retry shortly"
