"""Tensors whatever carried them: datatypes, shapes and elements, checked one way for every path.

A request's input tensor arrives as JSON numbers (REST), as raw little-endian bytes (REST's binary
tensor data extension, gRPC's ``raw_input_contents``) or as a typed list (gRPC's ``contents``).
Each transport hands its pieces to the functions here, so that every path accepts and refuses the
same requests, with the same limits and the same messages, and yields the same ``InferRequest``.
"""

from __future__ import annotations

import math
import reprlib
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlstack_common.errors import quote_json
from mlstack_common.tensor_names import INPUT_NAME, OUTPUT_PREDICT, OUTPUT_PROBA

from mlstack_model.errors import invalid

# The model's outputs, in the order its metadata lists them (metadata.model_metadata).
OUTPUT_NAMES = (OUTPUT_PREDICT, OUTPUT_PROBA)

FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
# The datatypes this model takes as input (BOOL and BYTES make no sense as features).
NUMERIC_DATATYPES = FLOAT_TYPES | INT_TYPES
# The protocol's binary layout of each numeric datatype (little-endian, native size) as a
# `struct` format character: struct reads and writes a handful of elements several times faster
# than a round trip through numpy, and a request is usually one row.
BINARY_FORMAT: dict[str, str] = {
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
}
# The values each integer datatype holds; anything outside is refused, not wrapped or clipped.
INT_RANGES: dict[str, tuple[int, int]] = {
    name: (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if name[0] == "I" else (0, 2**bits - 1)
    for name, bits in (
        ("INT8", 8),
        ("INT16", 16),
        ("INT32", 32),
        ("INT64", 64),
        ("UINT8", 8),
        ("UINT16", 16),
        ("UINT32", 32),
        ("UINT64", 64),
    )
}
_NUMBER_TYPES = frozenset({int, float})
# From this size on, numpy decodes binary tensors faster than struct.
_NUMPY_FROM_BYTES = 4096


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    # Whether the answer carries this tensor as raw bytes (the binary tensor data extension over
    # REST, raw_output_contents over gRPC) rather than as a list of numbers.
    binary: bool = False


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, which
# costs a measurable share of answering one row; nothing changes these after they are made.
@dataclass(slots=True)
class InferRequest:
    """One validated infer request, however it arrived."""

    request_id: str | None
    rows: int
    # The input tensor's elements, row-major, every one a finite int or float.
    data: list[Any]
    outputs: tuple[RequestedOutput, ...]


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    # The elements, row-major, as Python numbers.
    data: list[Any]

    def raw(self) -> bytes:
        """The elements in the protocol's binary layout."""
        return struct.pack(f"<{len(self.data)}{BINARY_FORMAT[self.datatype]}", *self.data)


# What a request that names no outputs gets, as the protocol says: every output the model
# produces, in the order its metadata lists them, all as numbers or all as raw bytes.
DEFAULT_OUTPUTS: dict[bool, tuple[RequestedOutput, ...]] = {
    binary: tuple(RequestedOutput(name, binary) for name in OUTPUT_NAMES)
    for binary in (False, True)
}


def predict_output(labels: list[int]) -> OutputTensor:
    return OutputTensor(OUTPUT_PREDICT, "INT64", (len(labels),), labels)


def proba_output(rows: int, n_classes: int, flat: list[float]) -> OutputTensor:
    return OutputTensor(OUTPUT_PROBA, "FP64", (rows, n_classes), flat)


def check_datatype(datatype: object) -> str:
    # A JSON list or object is unhashable: the set lookup alone would raise TypeError (a 500);
    # and repr() of one nested as deep as JSON is read (1024 levels) passes Python's recursion
    # limit, so the message quotes it with reprlib's bounded repr.
    if type(datatype) is not str or datatype not in NUMERIC_DATATYPES:
        allowed = ", ".join(sorted(NUMERIC_DATATYPES))
        raise invalid(
            f"input datatype {reprlib.repr(datatype)} is not supported; use one of {allowed}"
        )
    return datatype


def check_shape(raw: object, n_features: int, max_rows: int) -> int:
    """The number of rows of an input shaped ``[rows, n_features]``, within the batch limit."""
    if not isinstance(raw, list) or not all(type(d) is int and d >= 0 for d in raw):
        raise invalid("input 'shape' must be a list of non-negative integers")
    if len(raw) != 2:
        # Bounded, as every quote of the request here: gRPC carries the message in a trailer,
        # which a client refuses past 8 KiB (RESOURCE_EXHAUSTED, the reason lost).
        raise invalid(f"input shape must be [rows, {n_features}], got {reprlib.repr(raw)}")
    rows, features = raw
    if features != n_features:
        raise invalid(f"input shape {raw}: the model takes {n_features} features per row")
    if rows == 0:
        raise invalid("empty batch: input shape has 0 rows")
    if rows > max_rows:
        raise invalid(f"batch too large: {rows} rows, at most {max_rows}")
    return int(rows)


def check_input_name(name: object) -> None:
    if name != INPUT_NAME:
        raise invalid(
            f"unknown input {reprlib.repr(name)}; the model takes one input, {INPUT_NAME!r}"
        )


def check_output(name: object) -> str:
    if name not in OUTPUT_NAMES:
        # A bounded repr, as in check_datatype.
        produced = ", ".join(OUTPUT_NAMES)
        raise invalid(f"unknown output {reprlib.repr(name)}; the model produces {produced}")
    assert isinstance(name, str)
    return name


def check_outputs(requested: Sequence[RequestedOutput]) -> tuple[RequestedOutput, ...]:
    """The requested outputs, each named once: with the model's outputs named at most once
    each, an answer holds at most one tensor of each, whatever the request repeats."""
    names = [output.name for output in requested]
    if len(set(names)) != len(names):
        repeated = next(name for name in names if names.count(name) > 1)
        raise invalid(f"output {repeated!r} is requested more than once")
    return tuple(requested)


def _check_range(values: list[Any], datatype: str) -> None:
    """Refuse an integer outside ``datatype``'s range, or a float that it rounds to infinity."""
    if datatype in INT_RANGES:
        low, high = INT_RANGES[datatype]
        if values and (min(values) < low or max(values) > high):
            bad = next(v for v in values if not low <= v <= high)
            raise invalid(f"input value {bad} is outside the range of {datatype} ({low} to {high})")
    elif not all(map(math.isfinite, values)):
        raise invalid(
            f"input data must hold only finite numbers of {datatype}; "
            "found NaN or infinity, or a value too large for the datatype"
        )


def _check_count(count: int, rows: int, n_features: int, what: str) -> None:
    expected = rows * n_features
    if count != expected:
        raise invalid(
            f"input {what} has {count} elements; shape [{rows}, {n_features}] needs {expected}"
        )


def _flatten(data: list[Any]) -> list[Any]:
    # The protocol allows the tensor's contents flattened (row-major) or nested by shape.
    if data and type(data[0]) is list:
        flat: list[Any] = []
        for row in data:
            if type(row) is not list:
                raise invalid("input 'data' mixes nested lists and scalars")
            flat.extend(row)
        return flat
    return data


def elements_from_json(data: object, datatype: str, rows: int, n_features: int) -> list[Any]:
    """The elements of a JSON ``data`` list (flat or nested), as the datatype reads them."""
    if type(data) is not list:
        raise invalid("input 'data' must be a list of numbers")
    flat = _flatten(data)
    _check_count(len(flat), rows, n_features, "'data'")
    # type() rather than isinstance: JSON true/false arrive as bool, a subclass of int.
    if not {type(v) for v in flat} <= _NUMBER_TYPES:
        bad = next(v for v in flat if type(v) not in _NUMBER_TYPES)
        raise invalid(f"input 'data' must hold only numbers; found {quote_json(bad)}")
    if datatype in INT_TYPES:
        if any(type(v) is not int for v in flat):
            bad = next(v for v in flat if type(v) is not int)
            # The JSON parser reads an integer below INT64's range or above UINT64's as a
            # double, rounded (to -2**63 itself, just below): out of range, not a real number.
            if bad <= -(2**63) or bad >= 2**64:
                low, high = INT_RANGES[datatype]
                raise invalid(
                    f"input holds an integer beyond 64 bits, outside the range of {datatype} "
                    f"({low} to {high})"
                )
            raise invalid(f"input datatype {datatype} needs integers; use FP64 for real numbers")
    elif datatype == "FP32":
        # array("f") stores a float beyond FP32's range as infinity, which _check_range refuses.
        flat = array("f", flat).tolist()
    elif datatype == "FP16":
        with np.errstate(over="ignore"):
            flat = np.asarray(flat, dtype=np.float16).astype(np.float64).tolist()
    elif datatype == "FP64":
        # Nothing to check: the JSON parser gives only finite doubles and 64-bit integers (it
        # refuses NaN, Infinity and numbers that overflow a double).
        return flat
    _check_range(flat, datatype)
    return flat


def elements_from_bytes(
    raw: bytes | bytearray, datatype: str, rows: int, n_features: int
) -> list[Any]:
    """The elements of a tensor in the protocol's binary layout."""
    layout = f"<{rows * n_features}{BINARY_FORMAT[datatype]}"
    expected = struct.calcsize(layout)
    if len(raw) != expected:
        raise invalid(
            f"input binary data has {len(raw)} bytes; shape [{rows}, {n_features}] of "
            f"{datatype} needs {expected}"
        )
    if expected < _NUMPY_FROM_BYTES:
        values = list(struct.unpack(layout, raw))
        finite = datatype in INT_TYPES or all(map(math.isfinite, values))
    else:
        array_ = np.frombuffer(raw, dtype=layout[0] + layout[-1])
        finite = datatype in INT_TYPES or bool(np.isfinite(array_).all())
        values = array_.astype(np.float64 if datatype in FLOAT_TYPES else array_.dtype).tolist()
    if not finite:
        raise invalid(
            f"input data must hold only finite numbers of {datatype}; found NaN or infinity"
        )
    return values


def elements_from_values(
    values: Sequence[Any], datatype: str, rows: int, n_features: int
) -> list[Any]:
    """The elements of a typed list that already holds the datatype's values (gRPC contents)."""
    _check_count(len(values), rows, n_features, "contents")
    flat = list(values)
    # INT8 and INT16 travel in 32-bit contents, UINT8 and UINT16 in unsigned 32-bit ones.
    _check_range(flat, datatype)
    return flat
