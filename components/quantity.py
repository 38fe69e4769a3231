"""Kubernetes quantities (`1Gi`, `500M`, `1.5G`) as the stack config gives sizes: the pattern the
config's checks read them by, and the bytes one stands for."""

from __future__ import annotations

import re
from typing import Final

QUANTITY: Final = re.compile(
    r"^(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
)
_FACTORS: Final = {
    "": 1,
    **{suffix: 1000**power for power, suffix in enumerate(("k", "M", "G", "T", "P", "E"), 1)},
    **{suffix: 1024**power for power, suffix in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)},
}


def quantity_bytes(quantity: str) -> int:
    """The bytes a Kubernetes quantity such as `1Gi` or `500M` stands for."""
    match = QUANTITY.match(quantity)
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    return int(float(match.group("number")) * _FACTORS[match.group("suffix") or ""])
