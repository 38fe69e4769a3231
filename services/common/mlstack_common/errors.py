"""The body of every error both services answer: ``{"error": message}``."""

from __future__ import annotations

import orjson


def error_body(message: str) -> bytes:
    """The JSON body of an error answer: ``message`` and nothing else."""
    return orjson.dumps({"error": message})
