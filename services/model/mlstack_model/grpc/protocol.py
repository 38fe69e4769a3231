"""Open Inference Protocol gRPC messages: parse ModelInferRequest, build the responses.

An input tensor travels either in ``raw_input_contents`` (the protocol's binary layout; what
tritonclient sends) or in its ``contents`` field of the datatype's type. The response answers in
kind: raw outputs in ``raw_output_contents`` for a raw request, typed ``contents`` otherwise.
"""

from __future__ import annotations

from mlstack_common.tensor_names import INPUT_NAME

from mlstack_model import tensors
from mlstack_model.artifacts import ArtifactMetadata
from mlstack_model.errors import invalid
from mlstack_model.metadata import model_metadata as metadata_fields
from mlstack_model.proto import open_inference_pb2 as pb
from mlstack_model.tensors import InferRequest, OutputTensor, RequestedOutput

# The InferTensorContents field of each datatype; FP16 has none (it travels raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parse_infer_request(
    message: pb.ModelInferRequest, n_features: int, max_rows: int
) -> InferRequest:
    if len(message.inputs) != 1:
        raise invalid(f"'inputs' must hold one tensor (the model's {INPUT_NAME!r})")
    tensor = message.inputs[0]
    tensors.check_input_name(tensor.name)
    datatype = tensors.check_datatype(tensor.datatype)
    rows = tensors.check_shape(list(tensor.shape), n_features, max_rows)
    raw = message.raw_input_contents
    given = (
        [field.name for field, _ in tensor.contents.ListFields()]
        if tensor.HasField("contents")
        else []
    )
    if raw:
        if len(raw) != 1:
            raise invalid(f"raw_input_contents has {len(raw)} entries for 1 input")
        if given:
            raise invalid("an input cannot have 'contents' when the request has raw_input_contents")
        data = tensors.elements_from_bytes(raw[0], datatype, rows, n_features)
    else:
        field = CONTENTS_FIELD.get(datatype)
        if field is None:
            raise invalid(
                f"input datatype {datatype} has no typed contents: send raw_input_contents"
            )
        if set(given) - {field}:
            raise invalid(f"input datatype {datatype} takes its elements in contents.{field}")
        data = tensors.elements_from_values(
            getattr(tensor.contents, field), datatype, rows, n_features
        )
    binary = bool(raw)
    if message.outputs:
        outputs = tensors.check_outputs(
            [RequestedOutput(tensors.check_output(out.name), binary) for out in message.outputs]
        )
    else:
        outputs = tensors.DEFAULT_OUTPUTS[binary]
    return InferRequest(request_id=message.id or None, rows=rows, data=data, outputs=outputs)


def infer_response(
    model_name: str, model_version: str, request: InferRequest, outputs: list[OutputTensor]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request.request_id or ""
    )
    for requested, tensor in zip(request.outputs, outputs, strict=True):
        entry = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if requested.binary:
            response.raw_output_contents.append(tensor.raw())
        else:
            getattr(entry.contents, CONTENTS_FIELD[tensor.datatype]).extend(tensor.data)
    return response


def model_metadata(meta: ArtifactMetadata) -> pb.ModelMetadataResponse:
    # The same description the REST endpoint gives.
    return pb.ModelMetadataResponse(**metadata_fields(meta))
