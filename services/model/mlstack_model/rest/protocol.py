"""Open Inference Protocol (KServe v2) REST payloads: parse infer requests, build responses.

Both of the protocol's REST encodings: JSON, and the binary tensor data extension, where the body
is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw bytes of every
tensor that names its size in the ``binary_data_size`` parameter. A request that names no
outputs gets every output the model produces (the protocol's default). An output is answered in
binary when its ``binary_data`` parameter says so, or else when the request's
``binary_data_output`` parameter does (for the default outputs, that parameter alone). Only what
the protocol defines goes over the wire; errors are ``{"error": "<message>"}`` (see ``errors``).
"""

from __future__ import annotations

from typing import Any

import orjson
from mlstack_common.counts import read_count
from mlstack_common.tensor_names import INPUT_NAME

from mlstack_model import tensors
from mlstack_model.errors import invalid
from mlstack_model.tensors import InferRequest, OutputTensor, RequestedOutput

HEADER_LENGTH = "inference-header-content-length"


def _parameters(holder: dict[str, Any], where: str) -> dict[str, Any]:
    raw = holder.get("parameters")
    if raw is None:
        return {}
    if type(raw) is not dict:
        raise invalid(f"{where} 'parameters' must be a JSON object")
    return raw


def _flag(parameters: dict[str, Any], name: str, where: str) -> bool | None:
    value = parameters.get(name)
    if value is not None and type(value) is not bool:
        raise invalid(f"{where} parameter {name!r} must be true or false")
    return value


def _split_body(
    body: bytes | bytearray, header_length: str | None
) -> tuple[bytes | bytearray, bytes | bytearray | None]:
    """The JSON header and, with the binary extension, the binary part that follows it."""
    if header_length is None:
        return body, None
    try:
        split = read_count(header_length, len(body))
    except ValueError:
        raise invalid(
            f"Inference-Header-Content-Length must be a byte count, got {header_length!r}"
        ) from None
    if split is None or split > len(body):
        said = header_length if len(header_length) <= 20 else f"{len(header_length)} digits long"
        raise invalid(
            f"Inference-Header-Content-Length is {said} but the body has {len(body)} bytes"
        )
    return body[:split], body[split:]


def _rows(shape: object, n_features: int, max_rows: int) -> int:
    """The rows of an input of ``shape``: the usual, valid shape checked in one expression, and
    any other one by ``check_shape`` (which words the refusal)."""
    if (
        type(shape) is list
        and len(shape) == 2
        and type(shape[0]) is int
        and shape[1] == n_features
        and type(shape[1]) is int
        and 0 < shape[0] <= max_rows
    ):
        rows: int = shape[0]
        return rows
    return tensors.check_shape(shape, n_features, max_rows)


def parse_infer_request(
    body: bytes | bytearray, header_length: str | None, n_features: int, max_rows: int
) -> InferRequest:
    """A REST infer request: ``body`` and its Inference-Header-Content-Length header, if any."""
    header, binary = (body, None) if header_length is None else _split_body(body, header_length)
    try:
        payload = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        # JSON has no NaN or Infinity, and orjson refuses numbers that overflow to infinity,
        # so non-finite values end here too. Our words and the place, not the parser's text.
        raise invalid(f"malformed JSON at line {exc.lineno}, column {exc.colno}") from None
    if type(payload) is not dict:
        raise invalid("request body must be a JSON object with 'inputs'")
    request_id = payload.get("id")
    if request_id is not None and type(request_id) is not str:
        raise invalid("'id' must be a string")
    binary_output = (
        None
        if "parameters" not in payload
        else _flag(_parameters(payload, "request"), "binary_data_output", "request")
    )
    tensor = _input_tensor(payload.get("inputs"))
    datatype = tensor.get("datatype")
    if datatype != "FP64":
        datatype = tensors.check_datatype(datatype)
    rows = _rows(tensor.get("shape"), n_features, max_rows)
    data = _elements(tensor, binary, datatype, rows, n_features)
    outputs = _parse_outputs(payload.get("outputs"), bool(binary_output))
    return InferRequest(request_id=request_id, rows=rows, data=data, outputs=outputs)


def _input_tensor(inputs: object) -> dict[str, Any]:
    """The request's one input tensor, named as the model's input."""
    if type(inputs) is not list or len(inputs) != 1 or type(inputs[0]) is not dict:
        raise invalid(f"'inputs' must be a list holding one tensor (the model's {INPUT_NAME!r})")
    tensor: dict[str, Any] = inputs[0]
    name = tensor.get("name")
    if type(name) is not str:
        raise invalid("input tensor needs a string 'name'")
    if name != INPUT_NAME:
        tensors.check_input_name(name)
    return tensor


def _elements(
    tensor: dict[str, Any],
    binary: bytes | bytearray | None,
    datatype: str,
    rows: int,
    n_features: int,
) -> list[Any]:
    """The input's elements: its JSON ``data``, or the binary part its parameters claim."""
    size = (
        None if "parameters" not in tensor else _parameters(tensor, "input").get("binary_data_size")
    )
    if size is None:
        if binary:
            raise invalid(
                f"the body carries {len(binary)} bytes after its JSON that no input claims "
                "with 'binary_data_size'"
            )
        return tensors.elements_from_json(tensor.get("data"), datatype, rows, n_features)
    if type(size) is not int or size < 0:
        raise invalid("input parameter 'binary_data_size' must be a non-negative integer")
    if binary is None:
        raise invalid(
            "input has 'binary_data_size' but the request has no "
            "Inference-Header-Content-Length header"
        )
    if "data" in tensor:
        raise invalid("input has both 'data' and 'binary_data_size'")
    if size != len(binary):
        raise invalid(
            f"input 'binary_data_size' is {size} but the body carries {len(binary)} bytes "
            "after its JSON"
        )
    return tensors.elements_from_bytes(binary, datatype, rows, n_features)


def _parse_outputs(raw: object, binary_default: bool) -> tuple[RequestedOutput, ...]:
    if raw is None:
        return tensors.DEFAULT_OUTPUTS[binary_default]
    if type(raw) is not list or not raw:
        raise invalid("'outputs' must be a non-empty list of {\"name\": ...} objects")
    requested: list[RequestedOutput] = []
    for item in raw:
        name = tensors.check_output(item.get("name") if type(item) is dict else None)
        binary = _flag(_parameters(item, "output"), "binary_data", "output")
        requested.append(RequestedOutput(name, binary_default if binary is None else binary))
    return tensors.check_outputs(requested)


def infer_response(
    model_name: str, model_version: str, request: InferRequest, outputs: list[OutputTensor]
) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON header when binary outputs follow it."""
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.request_id is not None:
        body["id"] = request.request_id
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for requested, tensor in zip(request.outputs, outputs, strict=True):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "shape": tensor.shape,
            "datatype": tensor.datatype,
        }
        if requested.binary:
            raw = tensor.raw()
            chunks.append(raw)
            entry["parameters"] = {"binary_data_size": len(raw)}
        else:
            entry["data"] = tensor.data
        entries.append(entry)
    body["outputs"] = entries
    header = orjson.dumps(body)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
