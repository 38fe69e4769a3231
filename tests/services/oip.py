"""Open Inference Protocol requests to the model server, as the service tests build them: the REST
infer path and JSON bodies, the binary tensor data extension's bodies, gRPC ModelInfer messages
(tritonclient's own, so the wire format is the one real clients use) and a sync gRPC call.

Every builder sends the iris model's one input, ``input-0``; ``rows`` are its rows of features.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

from components.app import MODEL_NAME

INPUT = "input-0"
INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"
SERVICE = "inference.GRPCInferenceService"

# The numpy layout (little-endian) of each datatype's raw bytes, as the binary extension and
# gRPC's raw_input_contents carry them.
LAYOUT = {"FP64": "<f8", "FP32": "<f4", "FP16": "<f2", "INT64": "<i8", "INT32": "<i4"}


def method_path(method: str) -> str:
    """The gRPC path of one of the service's methods: ``/<SERVICE>/<method>``."""
    return f"/{SERVICE}/{method}"


def shape_of(rows: list[list[Any]]) -> list[int]:
    return [len(rows), len(rows[0])]


def raw_bytes(rows: list[Any], datatype: str = "FP64") -> bytes:
    """``rows`` (or their values, flat) as raw tensor data of ``datatype``."""
    return np.asarray(rows, dtype=LAYOUT[datatype]).tobytes()


# -- REST: JSON ---------------------------------------------------------------------------------


def tensor(data: Any, shape: Any, datatype: str = "FP64") -> dict[str, Any]:
    """An input tensor of a JSON infer request: ``data`` and ``shape`` as they are."""
    return {"name": INPUT, "shape": shape, "datatype": datatype, "data": data}


def infer_body(rows: list[list[Any]], datatype: str = "FP64", **fields: Any) -> dict[str, Any]:
    """A JSON infer request of ``rows`` (nested, their shape) and any other top-level fields."""
    return {"inputs": [tensor(rows, shape_of(rows), datatype)], **fields}


# -- REST: the binary tensor data extension -----------------------------------------------------


def binary_body(
    rows: list[Any],
    datatype: str = "FP64",
    *,
    shape: list[int] | None = None,
    header: dict[str, Any] | None = None,
    tensor: dict[str, Any] | None = None,
    raw: bytes | None = None,
    extra: bytes = b"",
) -> tuple[bytes, dict[str, str]]:
    """A body in the extension's layout and its Inference-Header-Content-Length header.
    ``shape`` (else the rows') and ``raw`` (else the rows' bytes) stand in for the rows';
    ``header`` adds top-level fields, ``tensor`` replaces the input's, ``extra`` trails the data."""
    data = raw_bytes(rows, datatype) if raw is None else raw
    entry = {
        "name": INPUT,
        "shape": shape_of(rows) if shape is None else shape,
        "datatype": datatype,
        "parameters": {"binary_data_size": len(data)},
        **(tensor or {}),
    }
    payload = json.dumps({"inputs": [entry], **(header or {})}).encode()
    headers = {"Inference-Header-Content-Length": str(len(payload))}
    return payload + data + extra, headers


# -- gRPC ---------------------------------------------------------------------------------------


def raw_message(
    rows: list[Any],
    datatype: str = "FP64",
    *,
    shape: list[int] | None = None,
    raw: bytes | None = None,
    **fields: Any,
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying ``rows`` in raw_input_contents (``shape`` and ``raw`` as in
    ``binary_body``), with any other fields of the message."""
    message = pb.ModelInferRequest(model_name=MODEL_NAME, **fields)
    message.inputs.add(
        name=INPUT, datatype=datatype, shape=shape_of(rows) if shape is None else shape
    )
    message.raw_input_contents.append(raw_bytes(rows, datatype) if raw is None else raw)
    return message


def typed_message(
    rows: list[list[Any]],
    datatype: str = "FP64",
    field: str = "fp64_contents",
    name: str = INPUT,
    **fields: Any,
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying ``rows`` in its input's typed ``contents.<field>``."""
    message = pb.ModelInferRequest(model_name=MODEL_NAME, **fields)
    typed = message.inputs.add(name=name, datatype=datatype, shape=shape_of(rows))
    getattr(typed.contents, field).extend(value for row in rows for value in row)
    return message


def call(
    channel: grpc.Channel, method: str, request: Any, response_type: Any, timeout: float = 10
) -> Any:
    """One unary call of ``method`` on ``channel``: its answer, or the grpc.RpcError raised."""
    rpc = channel.unary_unary(
        method_path(method),
        request_serializer=type(request).SerializeToString,
        response_deserializer=response_type.FromString,
    )
    return rpc(request, timeout=timeout)


def infer(channel: grpc.Channel, message: pb.ModelInferRequest, timeout: float = 10) -> Any:
    """One ModelInfer call: its ModelInferResponse, or the grpc.RpcError raised."""
    return call(channel, "ModelInfer", message, pb.ModelInferResponse, timeout)
