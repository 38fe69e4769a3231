"""Open Inference Protocol (KServe v2) REST payloads: parse infer requests, build responses.

Only what the protocol defines goes over the wire. Errors are ``{"error": "<message>"}`` with a
4xx status, the message naming what is wrong.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from mlstack_model.artifacts import ArtifactMetadata

INPUT_NAME = "input-0"
OUTPUT_PREDICT = "predict"
OUTPUT_PROBA = "predict_proba"
OUTPUT_NAMES = (OUTPUT_PREDICT, OUTPUT_PROBA)
PLATFORM = "sklearn"

# Tensor datatypes this model accepts as input (BOOL and BYTES make no sense for features).
_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
_INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
NUMERIC_DATATYPES = _FLOAT_TYPES | _INT_TYPES
_NUMBER_TYPES = frozenset({int, float})


class ProtocolError(Exception):
    """A request the protocol or this model cannot take: becomes ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class InferRequest:
    request_id: str | None
    rows: int
    # The input tensor's elements, row-major, every one a finite int or float.
    data: list[float]
    outputs: tuple[str, ...]


def _bad(message: str) -> ProtocolError:
    return ProtocolError(400, message)


def _parse_shape(raw: object, n_features: int, max_rows: int) -> int:
    if not isinstance(raw, list) or not all(type(d) is int and d >= 0 for d in raw):
        raise _bad("input 'shape' must be a list of non-negative integers")
    if len(raw) != 2:
        raise _bad(f"input shape must be [rows, {n_features}], got {raw}")
    rows, features = raw
    if features != n_features:
        raise _bad(f"input shape {raw}: the model takes {n_features} features per row")
    if rows == 0:
        raise _bad("empty batch: input shape has 0 rows")
    if rows > max_rows:
        raise _bad(f"batch too large: {rows} rows, at most {max_rows}")
    return int(rows)


def _flatten(data: list[Any]) -> list[Any]:
    # The protocol allows the tensor's contents flattened (row-major) or nested by shape.
    if data and type(data[0]) is list:
        flat: list[Any] = []
        for row in data:
            if type(row) is not list:
                raise _bad("input 'data' mixes nested lists and scalars")
            flat.extend(row)
        return flat
    return data


def _parse_data(data: object, datatype: str, rows: int, n_features: int) -> list[Any]:
    if type(data) is not list:
        raise _bad("input 'data' must be a list of numbers")
    flat = _flatten(data)
    expected = rows * n_features
    if len(flat) != expected:
        raise _bad(
            f"input 'data' has {len(flat)} elements; shape [{rows}, {n_features}] needs {expected}"
        )
    # type() rather than isinstance: JSON true/false arrive as bool, a subclass of int.
    if not {type(v) for v in flat} <= _NUMBER_TYPES:
        bad = next(v for v in flat if type(v) not in _NUMBER_TYPES)
        raise _bad(f"input 'data' must hold only numbers; found {orjson.dumps(bad).decode()}")
    if datatype in _INT_TYPES:
        if any(type(v) is not int for v in flat):
            raise _bad(f"input datatype {datatype} needs integers; use FP64 for real numbers")
    elif datatype == "FP32":
        flat = array("f", flat).tolist()
    elif datatype == "FP16":
        flat = _round_fp16(flat)
    return flat


def parse_infer_request(body: bytes, n_features: int, max_rows: int) -> InferRequest:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # JSON has no NaN or Infinity, and orjson refuses numbers that overflow to infinity,
        # so non-finite values end here too.
        raise _bad(f"malformed JSON: {exc}") from None
    if type(payload) is not dict:
        raise _bad("request body must be a JSON object with 'inputs'")
    request_id = payload.get("id")
    if request_id is not None and type(request_id) is not str:
        raise _bad("'id' must be a string")
    inputs = payload.get("inputs")
    if type(inputs) is not list or len(inputs) != 1 or type(inputs[0]) is not dict:
        raise _bad(f"'inputs' must be a list holding one tensor (the model's {INPUT_NAME!r})")
    tensor = inputs[0]
    name = tensor.get("name")
    if type(name) is not str:
        raise _bad("input tensor needs a string 'name'")
    datatype = tensor.get("datatype")
    if datatype not in NUMERIC_DATATYPES:
        allowed = ", ".join(sorted(NUMERIC_DATATYPES))
        raise _bad(f"input datatype {datatype!r} is not supported; use one of {allowed}")
    rows = _parse_shape(tensor.get("shape"), n_features, max_rows)
    flat = _parse_data(tensor.get("data"), datatype, rows, n_features)
    return InferRequest(
        request_id=request_id, rows=rows, data=flat, outputs=_parse_outputs(payload.get("outputs"))
    )


def _round_fp16(values: list[Any]) -> list[Any]:
    rounded: list[Any] = np.asarray(values, dtype=np.float16).astype(np.float64).tolist()
    return rounded


def _parse_outputs(raw: object) -> tuple[str, ...]:
    if raw is None:
        return (OUTPUT_PREDICT,)
    if type(raw) is not list or not raw:
        raise _bad("'outputs' must be a non-empty list of {\"name\": ...} objects")
    names: list[str] = []
    for item in raw:
        name = item.get("name") if type(item) is dict else None
        if name not in OUTPUT_NAMES:
            raise _bad(f"unknown output {name!r}; the model produces {', '.join(OUTPUT_NAMES)}")
        names.append(name)
    return tuple(names)


def predict_output(labels: list[int]) -> dict[str, Any]:
    return {"name": OUTPUT_PREDICT, "shape": [len(labels)], "datatype": "INT64", "data": labels}


def proba_output(rows: int, n_classes: int, flat: list[float]) -> dict[str, Any]:
    return {"name": OUTPUT_PROBA, "shape": [rows, n_classes], "datatype": "FP64", "data": flat}


def infer_response(
    model_name: str, model_version: str, request_id: str | None, outputs: list[dict[str, Any]]
) -> bytes:
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        body["id"] = request_id
    body["outputs"] = outputs
    return orjson.dumps(body)


def model_metadata(meta: ArtifactMetadata) -> dict[str, Any]:
    return {
        "name": meta.name,
        "versions": [meta.version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP64", "shape": [-1, meta.n_features]}],
        "outputs": [
            {"name": OUTPUT_PREDICT, "datatype": "INT64", "shape": [-1]},
            {"name": OUTPUT_PROBA, "datatype": "FP64", "shape": [-1, len(meta.class_labels)]},
        ],
    }


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
