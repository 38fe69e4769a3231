"""The binary tensor data extension over REST: tritonclient's HTTP client at its defaults (which
sends every tensor as binary data and asks for binary outputs), and raw requests for every way
such a request can be wrong."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from sklearn.datasets import load_iris
from tritonclient.utils import InferenceServerException

from components.app import MODEL_NAME
from harness.http import Reply, request
from harness.services import SETOSA, VIRGINICA, ModelProcess
from tests.services.oip import INFER_PATH, binary_body, infer_body, tensor
from tests.services.support import error_of


@pytest.fixture(scope="module")
def client(model_server: ModelProcess) -> Iterator[Any]:
    opened = httpclient.InferenceServerClient(model_server.url.removeprefix("http://"))
    yield opened
    opened.close()


def post(
    server: ModelProcess, body: bytes, headers: dict[str, str], path: str = INFER_PATH
) -> Reply:
    return request("POST", server.url + path, body, headers)


def split(reply: Reply) -> tuple[dict[str, Any], bytes]:
    length = int(reply.headers["inference-header-content-length"])
    header: dict[str, Any] = json.loads(reply.body[:length])
    return header, reply.body[length:]


# --- tritonclient, default options ----------------------------------------------------------


def test_client_health_and_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL_NAME)
    assert client.is_model_ready(MODEL_NAME, "v2")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert client.get_model_metadata(MODEL_NAME, "v2")["versions"] == ["v2"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int32])
def test_client_infers_with_set_data_from_numpy(client: Any, dtype: Any) -> None:
    rows = np.asarray([SETOSA, VIRGINICA]).astype(dtype)
    if dtype is np.int32:
        rows = np.asarray([[5, 3, 1, 0], [7, 3, 5, 2]], dtype=dtype)
    datatype = {np.float32: "FP32", np.float64: "FP64", np.float16: "FP16", np.int32: "INT32"}
    tensor = httpclient.InferInput("input-0", list(rows.shape), datatype[dtype])
    tensor.set_data_from_numpy(rows)
    result = client.infer(MODEL_NAME, [tensor], request_id="bin-1")
    assert result.as_numpy("predict").tolist() == [0, 2]
    assert result.as_numpy("predict_proba").tolist() == [[1, 0, 0], [0, 0, 1]]
    response = result.get_response()
    assert (response["model_version"], response["id"]) == ("v2", "bin-1")
    # No outputs named: the client asks for binary outputs, and gets every output, in binary.
    assert [(o["name"], o["parameters"]) for o in response["outputs"]] == [
        ("predict", {"binary_data_size": 16}),
        ("predict_proba", {"binary_data_size": 48}),
    ]


def test_client_requests_probabilities_binary_and_labels_as_json(client: Any) -> None:
    rows = np.asarray([SETOSA, VIRGINICA], dtype=np.float32)
    tensor = httpclient.InferInput("input-0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    outputs = [
        httpclient.InferRequestedOutput("predict_proba"),
        httpclient.InferRequestedOutput("predict", binary_data=False),
    ]
    result = client.infer(MODEL_NAME, [tensor], model_version="v2", outputs=outputs)
    proba = result.as_numpy("predict_proba")
    assert proba.shape == (2, 3)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert result.get_output("predict")["data"] == [0, 2]
    assert result.as_numpy("predict").tolist() == [0, 2]


def test_client_unknown_version_is_404_naming_the_served_one(client: Any) -> None:
    tensor = httpclient.InferInput("input-0", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.asarray([SETOSA]))
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL_NAME, [tensor], model_version="v7")
    assert caught.value.status() == "404"
    assert "served versions: v2" in caught.value.message()


# --- raw requests ---------------------------------------------------------------------------


def test_binary_input_with_json_output(model_server: ModelProcess) -> None:
    """No outputs named and no binary_data_output: every output, as JSON."""
    body, headers = binary_body([SETOSA, VIRGINICA], header={"id": "raw-1"})
    reply = post(model_server, body, headers)
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in reply.headers
    assert reply.json()["outputs"] == [
        {"name": "predict", "shape": [2], "datatype": "INT64", "data": [0, 2]},
        {"name": "predict_proba", "shape": [2, 3], "datatype": "FP64", "data": [1, 0, 0, 0, 0, 1]},
    ]


def test_binary_data_output_answers_every_default_output_in_binary(
    model_server: ModelProcess,
) -> None:
    """No outputs named: every output the model produces, in its metadata's order, each in
    binary as the request's binary_data_output asks."""
    body, headers = binary_body(
        [SETOSA, VIRGINICA], header={"parameters": {"binary_data_output": True}}
    )
    reply = post(model_server, body, headers)
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/octet-stream"
    header, data = split(reply)
    metadata = request("GET", f"{model_server.url}/v2/models/{MODEL_NAME}").json()
    assert [o["name"] for o in header["outputs"]] == [o["name"] for o in metadata["outputs"]]
    assert header["outputs"] == [
        {
            "name": "predict",
            "shape": [2],
            "datatype": "INT64",
            "parameters": {"binary_data_size": 16},
        },
        {
            "name": "predict_proba",
            "shape": [2, 3],
            "datatype": "FP64",
            "parameters": {"binary_data_size": 48},
        },
    ]
    assert np.frombuffer(data[:16], dtype="<i8").tolist() == [0, 2]
    assert np.frombuffer(data[16:], dtype="<f8").reshape(2, 3).tolist() == [[1, 0, 0], [0, 0, 1]]


def test_binary_outputs_follow_the_json_header(model_server: ModelProcess) -> None:
    body, headers = binary_body(
        [SETOSA, VIRGINICA],
        header={
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "predict_proba"}, {"name": "predict"}],
        },
    )
    reply = post(model_server, body, headers, f"/v2/models/{MODEL_NAME}/versions/v2/infer")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/octet-stream"
    header, data = split(reply)
    proba, labels = header["outputs"]
    assert proba == {
        "name": "predict_proba",
        "shape": [2, 3],
        "datatype": "FP64",
        "parameters": {"binary_data_size": 48},
    }
    assert labels["parameters"] == {"binary_data_size": 16}
    assert len(data) == 64
    assert np.allclose(np.frombuffer(data[:48], dtype="<f8").reshape(2, 3).sum(axis=1), 1.0)
    assert np.frombuffer(data[48:], dtype="<i8").tolist() == [0, 2]


def test_json_input_can_ask_for_binary_output(model_server: ModelProcess) -> None:
    body = {
        "inputs": [tensor(SETOSA, [1, 4])],
        "outputs": [{"name": "predict", "parameters": {"binary_data": True}}],
    }
    reply = request("POST", model_server.url + INFER_PATH, body)
    header, data = split(reply)
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(data, dtype="<i8").tolist() == [0]


def test_binary_and_json_inputs_predict_the_same(model_server: ModelProcess) -> None:
    rows = load_iris().data.tolist()
    json_reply = request("POST", model_server.url + INFER_PATH, infer_body(rows))
    body, headers = binary_body(rows)
    assert post(model_server, body, headers).json() == json_reply.json()


BAD_REQUESTS: list[tuple[str, tuple[bytes, dict[str, str]], str]] = [
    (
        "header length not a number",
        (binary_body([SETOSA])[0], {"Inference-Header-Content-Length": "12x"}),
        "must be a byte count",
    ),
    (
        "header length past the body",
        (binary_body([SETOSA])[0], {"Inference-Header-Content-Length": "100000"}),
        "but the body has",
    ),
    (
        "header length cuts the JSON",
        (binary_body([SETOSA])[0], {"Inference-Header-Content-Length": "20"}),
        "malformed JSON",
    ),
    ("binary body without the header", (binary_body([SETOSA])[0], {}), "malformed JSON"),
    (
        "binary_data_size without the header",
        (binary_body([SETOSA], raw=b"")[0], {}),
        "no Inference-Header-Content-Length header",
    ),
    (
        "size larger than the data",
        binary_body([SETOSA], tensor={"parameters": {"binary_data_size": 64}}),
        "is 64 but the body carries 32",
    ),
    (
        "bytes nobody claims",
        binary_body([SETOSA], extra=b"\0" * 8),
        "is 32 but the body carries 40",
    ),
    (
        "bytes short of the shape",
        binary_body([SETOSA], tensor={"shape": [2, 4]}),
        "shape [2, 4] of FP64 needs 64",
    ),
    (
        "data and binary_data_size",
        binary_body([SETOSA], tensor={"data": SETOSA}),
        "both 'data' and",
    ),
    (
        "negative size",
        binary_body([SETOSA], tensor={"parameters": {"binary_data_size": -1}}),
        "non-negative integer",
    ),
    (
        "size as text",
        binary_body([SETOSA], tensor={"parameters": {"binary_data_size": "32"}}),
        "non-negative integer",
    ),
    (
        "parameters not an object",
        binary_body([SETOSA], tensor={"parameters": [1]}),
        "'parameters' must be a JSON object",
    ),
    ("NaN", binary_body([[math.nan, 3.5, 1.4, 0.2]]), "finite"),
    ("infinity in FP32", binary_body([[math.inf, 3.5, 1.4, 0.2]], "FP32"), "finite"),
    ("BYTES", binary_body([SETOSA], tensor={"datatype": "BYTES"}), "datatype 'BYTES'"),
    ("three features", binary_body([SETOSA[:3]]), "takes 4 features"),
    ("batch too large", binary_body([SETOSA] * 4097), "batch too large"),
    (
        "binary_data_output not a flag",
        binary_body([SETOSA], header={"parameters": {"binary_data_output": 1}}),
        "'binary_data_output' must be true or false",
    ),
    (
        "binary_data not a flag",
        binary_body(
            [SETOSA],
            header={"outputs": [{"name": "predict", "parameters": {"binary_data": "yes"}}]},
        ),
        "'binary_data' must be true or false",
    ),
]


@pytest.mark.parametrize(
    ("body", "needle"),
    [pytest.param(body, needle, id=name) for name, body, needle in BAD_REQUESTS],
)
def test_bad_binary_requests_are_400_naming_the_problem(
    model_server: ModelProcess, body: tuple[bytes, dict[str, str]], needle: str
) -> None:
    reply = post(model_server, *body)
    assert reply.status == 400
    assert needle in error_of(reply)


def test_json_request_with_trailing_bytes_is_400(model_server: ModelProcess) -> None:
    payload = json.dumps({"inputs": [tensor(SETOSA, [1, 4])]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(payload))}
    reply = post(model_server, payload + b"\0" * 8, headers)
    assert reply.status == 400
    assert "no input claims" in error_of(reply)


def test_oversized_binary_body_is_413(model_server: ModelProcess) -> None:
    rows = 300_000
    body, headers = binary_body([[0.0] * 4], raw=b"\0" * (rows * 32), tensor={"shape": [rows, 4]})
    reply = post(model_server, body, headers)
    assert reply.status == 413
    assert "too large" in error_of(reply)
