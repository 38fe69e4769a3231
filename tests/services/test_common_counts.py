"""The count reader the services share (services/common: mlstack_common.counts), in-process."""

from __future__ import annotations

import pytest
from mlstack_common.counts import read_count


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("0", 0),
        ("0" * 5000 + "12", 12),  # leading zeros are no digits of the count
        ("99", 99),  # above the largest, but as many digits: the caller compares
        ("100", None),  # more digits than the largest has: larger
        ("9" * 5000, None),  # more digits than int() reads
    ],
)
def test_a_count_is_read_without_int_seeing_more_digits_than_the_largest(
    text: str, count: int | None
) -> None:
    assert read_count(text, 10) == count


@pytest.mark.parametrize("text", ["", "-1", "+1", " 1", "1.0", "\u00b2", "1\u00b9", "0x10"])
def test_a_count_is_ascii_digits_only(text: str) -> None:
    with pytest.raises(ValueError, match="not a count"):
        read_count(text, 10)
