"""The model server speaks the Open Inference Protocol over gRPC (`inference.GRPCInferenceService`),
checked with tritonclient's gRPC client at its defaults and with raw calls built from that
client's own messages, so the wire format is the one real clients use."""

from __future__ import annotations

import math
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mlstack_model import artifacts
from sklearn.datasets import load_iris
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from components.app import MODEL_NAME
from harness.services import MODEL_SRC, SETOSA, VIRGINICA, ModelProcess, start_model
from tests.services import oip
from tests.services.oip import SERVICE, raw_message, typed_message


@pytest.fixture(scope="module")
def channel(model_server: ModelProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(model_server.grpc_target) as opened:
        yield opened


@pytest.fixture(scope="module")
def client(model_server: ModelProcess) -> Iterator[Any]:
    opened = grpcclient.InferenceServerClient(model_server.grpc_target)
    yield opened
    opened.close()


def failure(channel: grpc.Channel, method: str, request: Any, response_type: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        oip.call(channel, method, request, response_type)
    error: grpc.RpcError = caught.value
    return error


def code_and_details(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    return error.code(), error.details() or ""


# --- tritonclient, default options ----------------------------------------------------------


def test_client_health_and_readiness(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL_NAME)
    assert client.is_model_ready(MODEL_NAME, "v2")


def test_client_server_and_model_metadata(client: Any) -> None:
    server = client.get_server_metadata()
    assert server.name == "mlstack-model"
    assert list(server.extensions) == ["binary_tensor_data"]
    model = client.get_model_metadata(MODEL_NAME, "v2")
    assert (model.name, list(model.versions), model.platform) == (MODEL_NAME, ["v2"], "sklearn")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("input-0", "FP64", [-1, 4])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [
        ("predict", "INT64", [-1]),
        ("predict_proba", "FP64", [-1, 3]),
    ]


@pytest.mark.parametrize("dtype", ["FP32", "FP64", "FP16"])
def test_client_infers_with_set_data_from_numpy(client: Any, dtype: str) -> None:
    rows = np.asarray(
        [SETOSA, VIRGINICA],
        dtype={"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}[dtype],
    )
    tensor = grpcclient.InferInput("input-0", list(rows.shape), dtype)
    tensor.set_data_from_numpy(rows)
    result = client.infer(MODEL_NAME, [tensor], request_id="grpc-1")
    assert result.as_numpy("predict").tolist() == [0, 2]
    # No outputs named: every output the model produces.
    assert result.as_numpy("predict_proba").tolist() == [[1, 0, 0], [0, 0, 1]]
    response = result.get_response()
    assert response.model_name == MODEL_NAME
    assert (response.model_version, response.id) == ("v2", "grpc-1")


def test_client_requests_probabilities_at_a_version(client: Any) -> None:
    rows = np.asarray([SETOSA, VIRGINICA])
    tensor = grpcclient.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    outputs = [
        grpcclient.InferRequestedOutput("predict_proba"),
        grpcclient.InferRequestedOutput("predict"),
    ]
    result = client.infer(MODEL_NAME, [tensor], model_version="v2", outputs=outputs)
    proba = result.as_numpy("predict_proba")
    assert proba.shape == (2, 3)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert result.as_numpy("predict").tolist() == [0, 2]


def test_client_large_batch_matches_the_estimator(
    client: Any, model_server: ModelProcess, model_dir: Path
) -> None:
    data = load_iris().data
    rows = np.asarray([data[i % len(data)] for i in range(1500)])
    tensor = grpcclient.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    outputs = [grpcclient.InferRequestedOutput("predict")]
    labels = client.infer(MODEL_NAME, [tensor], outputs=outputs).as_numpy("predict").tolist()
    assert labels == artifacts.load(model_dir, MODEL_NAME, "v2").estimator.predict(rows).tolist()


def test_client_unknown_version_is_not_found_naming_the_served_one(client: Any) -> None:
    rows = np.asarray([SETOSA])
    tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
    tensor.set_data_from_numpy(rows)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL_NAME, [tensor], model_version="v7")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert "served versions: v2" in caught.value.message()


# --- raw calls ------------------------------------------------------------------------------


def test_server_live_ready_and_model_ready(channel: grpc.Channel) -> None:
    assert oip.call(channel, "ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse).live
    assert oip.call(channel, "ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse).ready
    ready = oip.call(
        channel, "ModelReady", pb.ModelReadyRequest(name=MODEL_NAME), pb.ModelReadyResponse
    )
    assert ready.ready


def metadata_outputs(channel: grpc.Channel) -> list[tuple[str, str]]:
    """The name and datatype of each output the model's metadata lists, in its order."""
    request = pb.ModelMetadataRequest(name=MODEL_NAME)
    metadata = oip.call(channel, "ModelMetadata", request, pb.ModelMetadataResponse)
    return [(o.name, o.datatype) for o in metadata.outputs]


def test_typed_contents_are_answered_with_typed_contents(channel: grpc.Channel) -> None:
    """No outputs named: every output, in the metadata's order, each in its typed contents."""
    response = oip.infer(channel, typed_message([SETOSA, VIRGINICA], id="typed"))
    assert response.id == "typed"
    assert len(response.raw_output_contents) == 0
    labels, proba = response.outputs
    assert [(o.name, o.datatype) for o in response.outputs] == metadata_outputs(channel)
    assert (labels.name, labels.datatype, list(labels.shape)) == ("predict", "INT64", [2])
    assert list(labels.contents.int64_contents) == [0, 2]
    assert (proba.name, proba.datatype, list(proba.shape)) == ("predict_proba", "FP64", [2, 3])
    assert list(proba.contents.fp64_contents) == [1, 0, 0, 0, 0, 1]


def test_raw_contents_naming_no_outputs_get_every_output_raw(channel: grpc.Channel) -> None:
    response = oip.infer(channel, raw_message([SETOSA, VIRGINICA]))
    assert [(o.name, o.datatype) for o in response.outputs] == metadata_outputs(channel)
    assert [list(o.shape) for o in response.outputs] == [[2], [2, 3]]
    assert all(not o.contents.ListFields() for o in response.outputs)
    labels_raw, proba_raw = response.raw_output_contents
    assert np.frombuffer(labels_raw, dtype="<i8").tolist() == [0, 2]
    proba = np.frombuffer(proba_raw, dtype="<f8").reshape(2, 3)
    assert proba.tolist() == [[1, 0, 0], [0, 0, 1]]


def test_naming_predict_answers_predict_alone(channel: grpc.Channel) -> None:
    request = raw_message([SETOSA])
    request.outputs.add(name="predict")
    response = oip.infer(channel, request)
    assert [(o.name, list(o.shape)) for o in response.outputs] == [("predict", [1])]
    (labels_raw,) = response.raw_output_contents
    assert np.frombuffer(labels_raw, dtype="<i8").tolist() == [0]


def test_raw_contents_are_answered_raw(channel: grpc.Channel) -> None:
    request = raw_message([SETOSA, VIRGINICA])
    request.outputs.add(name="predict_proba")
    request.outputs.add(name="predict")
    response = oip.infer(channel, request)
    proba_raw, labels_raw = response.raw_output_contents
    assert np.frombuffer(labels_raw, dtype="<i8").tolist() == [0, 2]
    proba = np.frombuffer(proba_raw, dtype="<f8").reshape(2, 3)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert [o.name for o in response.outputs] == ["predict_proba", "predict"]
    assert all(not o.contents.ListFields() for o in response.outputs)


def test_integer_inputs_are_accepted(channel: grpc.Channel) -> None:
    response = oip.infer(channel, raw_message([[5, 3, 1, 0]], "INT64"))
    assert np.frombuffer(response.raw_output_contents[0], dtype="<i8").tolist() == [0]
    typed = typed_message([[5, 3, 1, 0]], "INT32", "int_contents")
    assert list(oip.infer(channel, typed).outputs[0].contents.int64_contents) == [0]


def test_every_path_predicts_the_same(channel: grpc.Channel) -> None:
    rows = load_iris().data.tolist()
    raw = np.frombuffer(oip.infer(channel, raw_message(rows)).raw_output_contents[0], dtype="<i8")
    typed = oip.infer(channel, typed_message(rows)).outputs[0].contents.int64_contents
    assert raw.tolist() == list(typed)


def test_health_service_serves_probes(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == serving
    request = health_pb2.HealthCheckRequest(service=SERVICE)
    assert stub.Check(request, timeout=10).status == serving
    with pytest.raises(grpc.RpcError) as caught:
        stub.Check(health_pb2.HealthCheckRequest(service="nothing"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("method", "request_message", "response_type", "needle"),
    [
        ("ModelReady", pb.ModelReadyRequest(name="mnist"), pb.ModelReadyResponse, "'mnist'"),
        (
            "ModelReady",
            pb.ModelReadyRequest(name=MODEL_NAME, version="v7"),
            pb.ModelReadyResponse,
            "served versions: v2",
        ),
        (
            "ModelMetadata",
            pb.ModelMetadataRequest(name="mnist"),
            pb.ModelMetadataResponse,
            "'mnist'",
        ),
        (
            "ModelMetadata",
            pb.ModelMetadataRequest(name=MODEL_NAME, version="v1"),
            pb.ModelMetadataResponse,
            "served versions: v2",
        ),
        ("ModelInfer", raw_message([SETOSA], model_version="v7"), pb.ModelInferResponse, "v7"),
    ],
)
def test_unknown_model_or_version_is_not_found(
    channel: grpc.Channel, method: str, request_message: Any, response_type: Any, needle: str
) -> None:
    code, details = code_and_details(failure(channel, method, request_message, response_type))
    assert code == grpc.StatusCode.NOT_FOUND
    assert needle in details


def _with(request: pb.ModelInferRequest, change: Any) -> pb.ModelInferRequest:
    changed = pb.ModelInferRequest()
    changed.CopyFrom(request)
    change(changed)
    return changed


def _second_input(request: pb.ModelInferRequest) -> None:
    request.inputs.add(name="input-1", datatype="FP64", shape=[1, 4])
    request.raw_input_contents.append(oip.raw_bytes([SETOSA]))


def _clear_inputs(request: pb.ModelInferRequest) -> None:
    del request.inputs[:]
    del request.raw_input_contents[:]


BAD_REQUESTS: list[tuple[str, pb.ModelInferRequest, str]] = [
    ("no input", _with(raw_message([SETOSA]), _clear_inputs), "'inputs' must hold one"),
    ("two inputs", _with(raw_message([SETOSA]), _second_input), "'inputs' must hold one"),
    (
        "BYTES",
        _with(raw_message([SETOSA]), lambda r: setattr(r.inputs[0], "datatype", "BYTES")),
        "datatype 'BYTES'",
    ),
    (
        "one-dimensional shape",
        _with(raw_message([SETOSA]), lambda r: r.inputs[0].shape.__delitem__(0)),
        "shape must be [rows, 4]",
    ),
    (
        "negative shape",
        _with(raw_message([SETOSA]), lambda r: r.inputs[0].shape.__setitem__(1, -4)),
        "non-negative integers",
    ),
    ("three features", raw_message([SETOSA[:3]]), "takes 4 features"),
    (
        "empty batch",
        _with(raw_message([SETOSA]), lambda r: r.inputs[0].shape.__setitem__(0, 0)),
        "empty batch",
    ),
    (
        "bytes short of the shape",
        _with(raw_message([SETOSA]), lambda r: r.inputs[0].shape.__setitem__(0, 2)),
        "has 32 bytes; shape [2, 4] of FP64 needs 64",
    ),
    (
        "two raw entries",
        _with(raw_message([SETOSA]), lambda r: r.raw_input_contents.append(b"")),
        "raw_input_contents has 2 entries",
    ),
    (
        "raw and typed contents",
        _with(raw_message([SETOSA]), lambda r: r.inputs[0].contents.fp64_contents.append(1.0)),
        "cannot have 'contents'",
    ),
    ("NaN", raw_message([[math.nan, 3.5, 1.4, 0.2]]), "finite"),
    ("infinity in FP32", raw_message([[math.inf, 3.5, 1.4, 0.2]], "FP32"), "finite"),
    ("typed infinity", typed_message([[-math.inf, 3.5, 1.4, 0.2]]), "finite"),
    (
        "typed count",
        _with(typed_message([SETOSA]), lambda r: r.inputs[0].contents.fp64_contents.append(1.0)),
        "contents has 5 elements; shape [1, 4] needs 4",
    ),
    (
        "typed FP16",
        _with(typed_message([SETOSA]), lambda r: setattr(r.inputs[0], "datatype", "FP16")),
        "FP16 has no typed contents",
    ),
    (
        "typed in the wrong field",
        _with(typed_message([SETOSA]), lambda r: setattr(r.inputs[0], "datatype", "FP32")),
        "contents.fp32_contents",
    ),
    (
        "unknown output",
        _with(raw_message([SETOSA]), lambda r: r.outputs.add(name="logits")),
        "'logits'",
    ),
    ("batch too large", raw_message([SETOSA] * 4097), "batch too large"),
]


@pytest.mark.parametrize(
    ("request_message", "needle"),
    [pytest.param(request, needle, id=name) for name, request, needle in BAD_REQUESTS],
)
def test_bad_infer_requests_are_invalid_argument_naming_the_problem(
    channel: grpc.Channel, request_message: pb.ModelInferRequest, needle: str
) -> None:
    code, details = code_and_details(
        failure(channel, "ModelInfer", request_message, pb.ModelInferResponse)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in details


def bytes_call(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    """A call of `method` that puts its bytes on the wire as they are, no serializer between."""
    return channel.unary_unary(
        oip.method_path(method), request_serializer=None, response_deserializer=None
    )


# Bytes no message parses from: a tag cut short, a field longer than what follows, a wire type
# that does not exist.
UNDECODABLE = {
    "truncated tag": b"\xff\xff\xff",
    "truncated field": b"\x0a\x05ab",
    "wire type 7": b"\x0f",
}


# Every method the .proto declares (read as text: its module would clash with tritonclient's
# messages, which this process holds under the same names).
PROTO_METHODS = re.findall(
    r"^\s*rpc\s+(\w+)\s*\(",
    (MODEL_SRC / "mlstack_model" / "proto" / "open_inference.proto").read_text(),
    re.MULTILINE,
)


@pytest.mark.parametrize("method", PROTO_METHODS)
def test_undecodable_messages_are_invalid_argument_without_a_traceback(
    model_server: ModelProcess, channel: grpc.Channel, method: str
) -> None:
    rpc = bytes_call(channel, method)
    logged_before = model_server.log_path.stat().st_size
    for name, garbage in UNDECODABLE.items():
        with pytest.raises(grpc.RpcError) as caught:
            rpc(garbage, timeout=10)
        code, details = code_and_details(caught.value)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, details)
        assert details == f"the request is not a valid inference.{method}Request message", name
    with model_server.log_path.open("rb") as log:
        log.seek(logged_before)
        logged = log.read().decode(errors="replace")
    assert "Traceback" not in logged, logged
    assert len(logged.splitlines()) <= len(UNDECODABLE), logged


def test_a_string_field_that_is_not_utf8_is_invalid_argument(channel: grpc.Channel) -> None:
    # model_name (field 1, a proto3 string) holding two bytes that are not UTF-8.
    rpc = bytes_call(channel, "ModelInfer")
    with pytest.raises(grpc.RpcError) as caught:
        rpc(b"\x0a\x02\xff\xfe", timeout=10)
    assert code_and_details(caught.value) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the request is not a valid inference.ModelInferRequest message",
    )


def test_oversized_message_is_resource_exhausted(channel: grpc.Channel) -> None:
    request = raw_message([SETOSA], id="x" * (9 * 1024 * 1024))
    code, _ = code_and_details(failure(channel, "ModelInfer", request, pb.ModelInferResponse))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unknown_method_is_unimplemented(channel: grpc.Channel) -> None:
    error = failure(channel, "RepositoryIndex", pb.ServerLiveRequest(), pb.ServerLiveResponse)
    assert code_and_details(error)[0] == grpc.StatusCode.UNIMPLEMENTED


# --- lifecycle ------------------------------------------------------------------------------


def test_a_taken_grpc_port_stops_the_start_up(model_dir: Path, log_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = ModelProcess(model_dir, log_dir, grpc_port=port)
        service.start()
        assert service.wait_for_exit(60) != 0
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in service.log_tail()


def test_sigterm_stops_rest_and_grpc_cleanly(model_dir: Path, log_dir: Path) -> None:
    service = start_model(model_dir, log_dir)
    with grpc.insecure_channel(service.grpc_target) as opened:
        assert oip.call(opened, "ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse).live
    service.signal(signal.SIGTERM)
    # The drain handles the signal (mlstack_common.serving): a clean exit, not death by it.
    assert service.wait_for_exit(30) == 0
    assert "Application shutdown complete" in service.log_tail()
    with grpc.insecure_channel(service.grpc_target) as opened:
        error = failure(opened, "ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse)
    assert code_and_details(error)[0] == grpc.StatusCode.UNAVAILABLE
