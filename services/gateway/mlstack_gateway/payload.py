"""Validation of the public predict payload ``{"instances": [[f1, f2, ...], ...]}``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from mlstack_common.errors import quote_json

from mlstack_gateway.errors import ApiError

_NUMBER_TYPES = frozenset({int, float})


@dataclass(frozen=True, slots=True)
class PredictInput:
    rows: list[list[float]]
    n_features: int
    # Row-major, as the Open Inference Protocol tensor wants it.
    flat: list[float]


def _invalid(message: str) -> ApiError:
    return ApiError(422, message)


def _flatten_rows(rows: list[Any], n_features: int | None) -> tuple[int, list[Any]]:
    """Check every row is a list of numbers of one width; return it and the row-major data."""
    first = rows[0]
    if type(first) is not list:
        raise _invalid("instances[0] must be a list of numbers")
    width = len(first)
    if n_features is not None and width != n_features:
        raise _invalid(f"instances[0] has {width} features; the model takes {n_features}")
    if width == 0:
        raise _invalid("instances[0] is empty: each row needs the model's features")
    flat: list[Any] = []
    for index, row in enumerate(rows):
        if type(row) is not list:
            raise _invalid(f"instances[{index}] must be a list of numbers")
        if len(row) != width:
            raise _invalid(f"instances[{index}] has {len(row)} features; instances[0] has {width}")
        flat.extend(row)
    # type() rather than isinstance: JSON true/false arrive as bool, a subclass of int.
    if not {type(v) for v in flat} <= _NUMBER_TYPES:
        position = next(i for i, v in enumerate(flat) if type(v) not in _NUMBER_TYPES)
        row_index, column = divmod(position, width)
        found = quote_json(flat[position])
        raise _invalid(f"instances[{row_index}][{column}] is not a number: {found}")
    return width, flat


def parse_predict_body(
    body: bytes | bytearray, max_rows: int, n_features: int | None
) -> PredictInput:
    """Validate the body; ``n_features`` is the model's input width when known."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # JSON has no NaN or Infinity and orjson refuses numbers that overflow, so non-finite
        # values are refused here.
        raise ApiError(400, f"malformed JSON: {exc}") from None
    if type(payload) is not dict:
        raise _invalid('body must be a JSON object like {"instances": [[...], ...]}')
    rows = payload.get("instances")
    if rows is None:
        raise _invalid("missing 'instances': a list of rows, each a list of numbers")
    if type(rows) is not list:
        raise _invalid("'instances' must be a list of rows, each a list of numbers")
    if not rows:
        raise _invalid("'instances' is empty: send at least one row")
    if len(rows) > max_rows:
        raise _invalid(f"too many rows: {len(rows)} instances, at most {max_rows} per request")
    width, flat = _flatten_rows(rows, n_features)
    return PredictInput(rows=rows, n_features=width, flat=flat)
