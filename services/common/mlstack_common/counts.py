"""A count a client writes in a header or a query string (a body's length, a page's size), read
without letting int() see more digits than the largest count the reader takes has: int() refuses
thousands of digits, and leading zeros count for it."""

from __future__ import annotations


def read_count(text: str, largest: int) -> int | None:
    """The count ``text`` writes; None when it has more digits than ``largest`` has, so is larger.
    ValueError when it is not ASCII digits (str.isdigit() alone also takes Latin-1's superscripts,
    which int() refuses)."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"not a count: {text!r}")
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= len(str(largest)) else None
