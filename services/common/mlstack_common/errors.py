"""The body of every error both services answer, ``{"error": message}``, the messages of the
refusals they share, and how their messages quote a client's JSON."""

from __future__ import annotations

import orjson


def error_body(message: str) -> bytes:
    """The JSON body of an error answer: ``message`` and nothing else."""
    return orjson.dumps({"error": message})


def quote_json(value: object) -> str:
    """A value from a client's JSON body, written back as JSON for the message that refuses it.
    orjson reads lists and objects nested up to 1024 deep but writes them only up to 255 deep:
    one nested deeper is named by its kind instead of quoted."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        kind = "an object" if isinstance(value, dict) else "a list"
        return f"{kind} nested too deep to quote"


def busy_in_flight(max_in_flight: int) -> str:
    """Why a request is refused while ``max_in_flight`` requests are being served."""
    return _busy(f"{max_in_flight} requests in flight")


def busy_connections(max_connections: int) -> str:
    """Why a connection is refused while ``max_connections`` are open."""
    return _busy(f"{max_connections} connections open")


def _busy(what: str) -> str:
    return f"server busy: {what}, retry shortly"
