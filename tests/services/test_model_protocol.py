"""The model server speaks the Open Inference Protocol (KServe v2 REST), over real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlstack_model import artifacts
from sklearn.datasets import load_iris

from components.app import MODEL_NAME
from harness.http import Reply, request
from harness.services import SETOSA, VIRGINICA, ServiceProcess
from tests.services.oip import INFER_PATH, tensor
from tests.services.support import error_of


def infer(server: ServiceProcess, body: Any, path: str = INFER_PATH) -> Reply:
    return request("POST", server.url + path, body)


def test_server_is_live_and_ready(model_server: ServiceProcess) -> None:
    live = request("GET", model_server.url + "/v2/health/live")
    ready = request("GET", model_server.url + "/v2/health/ready")
    assert (live.status, live.json()) == (200, {"live": True})
    assert (ready.status, ready.json()) == (200, {"ready": True})


def test_server_metadata(model_server: ServiceProcess) -> None:
    reply = request("GET", model_server.url + "/v2")
    assert reply.status == 200
    assert set(reply.json()) == {"name", "version", "extensions"}
    assert reply.json()["extensions"] == ["binary_tensor_data"]


def test_model_metadata_describes_tensors(model_server: ServiceProcess) -> None:
    reply = request("GET", model_server.url + f"/v2/models/{MODEL_NAME}")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {
        "name": MODEL_NAME,
        "versions": ["v2"],
        "platform": "sklearn",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
        ],
    }


def test_model_metadata_by_version(model_server: ServiceProcess) -> None:
    reply = request("GET", model_server.url + f"/v2/models/{MODEL_NAME}/versions/v2")
    assert reply.status == 200
    assert reply.json()["versions"] == ["v2"]


def test_model_ready(model_server: ServiceProcess) -> None:
    for path in (f"/v2/models/{MODEL_NAME}/ready", f"/v2/models/{MODEL_NAME}/versions/v2/ready"):
        reply = request("GET", model_server.url + path)
        assert (reply.status, reply.json()) == (200, {"name": MODEL_NAME, "ready": True})


def test_unknown_model_is_404_with_error(model_server: ServiceProcess) -> None:
    for method, path in (
        ("GET", "/v2/models/mnist"),
        ("GET", "/v2/models/mnist/ready"),
        ("POST", "/v2/models/mnist/infer"),
        ("GET", f"/v2/models/{MODEL_NAME}/versions/v7"),
        ("POST", f"/v2/models/{MODEL_NAME}/versions/v7/infer"),
    ):
        reply = request(method, model_server.url + path, {"inputs": [tensor(SETOSA, [1, 4])]})
        assert reply.status == 404, path
        expected = "served versions: v2" if "/versions/" in path else f"serves '{MODEL_NAME}'"
        assert expected in error_of(reply), path


def output_kinds(outputs: list[dict[str, Any]], rows: int) -> list[tuple[str, str, list[int]]]:
    """Each output's name, datatype and shape, a metadata's -1 (any number of rows) as ``rows``."""
    return [
        (o["name"], o["datatype"], [rows if d == -1 else d for d in o["shape"]]) for o in outputs
    ]


def test_infer_naming_no_outputs_answers_every_output(model_server: ServiceProcess) -> None:
    """The protocol: a request that names no outputs gets every output the model produces, in
    the order its metadata lists them."""
    reply = infer(model_server, {"id": "req-1", "inputs": [tensor(SETOSA, [1, 4])]})
    assert reply.status == 200
    assert reply.json() == {
        "model_name": MODEL_NAME,
        "model_version": "v2",
        "id": "req-1",
        "outputs": [
            {"name": "predict", "shape": [1], "datatype": "INT64", "data": [0]},
            {"name": "predict_proba", "shape": [1, 3], "datatype": "FP64", "data": [1, 0, 0]},
        ],
    }
    metadata = request("GET", model_server.url + f"/v2/models/{MODEL_NAME}").json()
    assert output_kinds(reply.json()["outputs"], 1) == output_kinds(metadata["outputs"], 1)


def test_a_batch_naming_no_outputs_gets_every_output_for_each_row(
    model_server: ServiceProcess,
) -> None:
    reply = infer(model_server, {"inputs": [tensor([SETOSA, VIRGINICA], [2, 4])]})
    assert reply.status == 200
    labels, proba = reply.json()["outputs"]
    assert (labels["name"], labels["shape"], labels["data"]) == ("predict", [2], [0, 2])
    assert (proba["name"], proba["shape"], proba["datatype"]) == ("predict_proba", [2, 3], "FP64")
    assert proba["data"] == [1, 0, 0, 0, 0, 1]


def test_infer_naming_predict_answers_predict_alone(model_server: ServiceProcess) -> None:
    body = {"inputs": [tensor(SETOSA, [1, 4])], "outputs": [{"name": "predict"}]}
    reply = infer(model_server, body)
    assert reply.status == 200
    assert reply.json()["outputs"] == [
        {"name": "predict", "shape": [1], "datatype": "INT64", "data": [0]}
    ]


def test_infer_without_id_answers_without_id(model_server: ServiceProcess) -> None:
    reply = infer(model_server, {"inputs": [tensor(SETOSA, [1, 4])]})
    assert reply.status == 200
    assert "id" not in reply.json()


def test_infer_batch_nested_and_flat_agree(model_server: ServiceProcess) -> None:
    nested = infer(model_server, {"inputs": [tensor([SETOSA, VIRGINICA], [2, 4])]})
    flat = infer(model_server, {"inputs": [tensor(SETOSA + VIRGINICA, [2, 4])]})
    assert nested.status == flat.status == 200
    assert nested.json()["outputs"] == flat.json()["outputs"]
    assert nested.json()["outputs"][0]["data"] == [0, 2]


def test_infer_through_the_versioned_path(model_server: ServiceProcess) -> None:
    reply = infer(
        model_server,
        {"inputs": [tensor(SETOSA, [1, 4])]},
        f"/v2/models/{MODEL_NAME}/versions/v2/infer",
    )
    assert reply.status == 200
    assert reply.json()["model_version"] == "v2"


def test_large_batch_matches_the_estimator(model_server: ServiceProcess, model_dir: Path) -> None:
    data = load_iris().data
    rows = [data[i % len(data)].tolist() for i in range(1500)]
    body = {"inputs": [tensor(rows, [len(rows), 4])], "outputs": [{"name": "predict"}]}
    reply = infer(model_server, body)
    assert reply.status == 200
    expected = artifacts.load(model_dir, MODEL_NAME, "v2").estimator.predict(rows).tolist()
    assert reply.json()["outputs"][0]["data"] == expected


def test_requested_outputs_include_probabilities(model_server: ServiceProcess) -> None:
    body = {
        "inputs": [tensor([SETOSA, VIRGINICA], [2, 4])],
        "outputs": [{"name": "predict_proba"}, {"name": "predict"}],
    }
    reply = infer(model_server, body)
    assert reply.status == 200
    proba, labels = reply.json()["outputs"]
    assert (proba["name"], proba["shape"], proba["datatype"]) == ("predict_proba", [2, 3], "FP64")
    assert len(proba["data"]) == 6
    assert abs(sum(proba["data"][:3]) - 1) < 1e-9
    assert labels["data"] == [0, 2]


def test_fp32_and_integer_datatypes_are_accepted(model_server: ServiceProcess) -> None:
    fp32 = infer(model_server, {"inputs": [tensor(SETOSA, [1, 4], "FP32")]})
    ints = infer(model_server, {"inputs": [tensor([5, 3, 1, 0], [1, 4], "INT32")]})
    assert fp32.status == ints.status == 200
    assert fp32.json()["outputs"][0]["data"] == [0]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "malformed JSON"),
        (
            b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", '
            b'"data": [NaN, 1, 2, 3]}]}',
            "malformed JSON",
        ),
        (
            b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", '
            b'"data": [1e999, 1, 2, 3]}]}',
            "malformed JSON",
        ),
        ([1, 2], "JSON object"),
        ({}, "'inputs'"),
        ({"inputs": []}, "'inputs'"),
        ({"inputs": [tensor(SETOSA, [1, 4]), tensor(SETOSA, [1, 4])]}, "'inputs'"),
        ({"inputs": [{"shape": [1, 4], "datatype": "FP64", "data": SETOSA}]}, "'name'"),
        ({"inputs": [tensor(["a", "b", "c", "d"], [1, 4], "BYTES")]}, "datatype 'BYTES'"),
        ({"inputs": [tensor(SETOSA, [1, 4], "BOOL")]}, "datatype 'BOOL'"),
        ({"inputs": [tensor(SETOSA, [4])]}, "shape must be [rows, 4]"),
        ({"inputs": [tensor(SETOSA[:3], [1, 3])]}, "takes 4 features"),
        ({"inputs": [tensor(SETOSA, [1, -4])]}, "non-negative integers"),
        ({"inputs": [tensor(SETOSA, "1x4")]}, "non-negative integers"),
        ({"inputs": [tensor([], [0, 4])]}, "empty batch"),
        ({"inputs": [tensor(SETOSA, [2, 4])]}, "needs 8"),
        ({"inputs": [tensor([5.1, 3.5, 1.4, "x"], [1, 4])]}, 'found "x"'),
        ({"inputs": [tensor([5.1, 3.5, 1.4, True], [1, 4])]}, "found true"),
        ({"inputs": [tensor([5.1, 3.5, 1.4, None], [1, 4])]}, "found null"),
        ({"inputs": [tensor([5.1, 3.5, 1.4, [0.2]], [1, 4])]}, "only numbers"),
        ({"inputs": [tensor("5.1,3.5", [1, 4])]}, "list of numbers"),
        ({"inputs": [tensor([5.5, 3, 1, 0], [1, 4], "INT64")]}, "needs integers"),
        # Integers beyond 64 bits, which the JSON parser reads as doubles: out of range.
        (
            {"inputs": [tensor([2**64, 3, 1, 0], [1, 4], "INT64")]},
            "input holds an integer beyond 64 bits, outside the range of INT64",
        ),
        (
            {"inputs": [tensor([-(2**70), 3, 1, 0], [1, 4], "UINT64")]},
            "outside the range of UINT64",
        ),
        (
            {"inputs": [tensor([-(2**63) - 1, 3, 1, 0], [1, 4], "INT64")]},
            "input holds an integer beyond 64 bits, outside the range of INT64",
        ),
        ({"id": 7, "inputs": [tensor(SETOSA, [1, 4])]}, "'id'"),
        ({"inputs": [tensor(SETOSA, [1, 4])], "outputs": [{"name": "logits"}]}, "'logits'"),
    ],
)
def test_bad_infer_requests_are_400_naming_the_problem(
    model_server: ServiceProcess, body: Any, needle: str
) -> None:
    reply = infer(model_server, body)
    assert reply.status == 400
    assert needle in error_of(reply)


def test_oversized_batch_is_refused(model_server: ServiceProcess) -> None:
    rows = 4097
    reply = infer(model_server, {"inputs": [tensor([0.0] * rows * 4, [rows, 4])]})
    assert reply.status == 400
    assert "batch too large" in error_of(reply)


def test_model_version_selects_the_artifact(
    model_v1: ServiceProcess, model_server: ServiceProcess
) -> None:
    data = load_iris().data.tolist()
    body = {"inputs": [tensor(data, [len(data), 4])]}
    v1, v2 = infer(model_v1, body).json(), infer(model_server, body).json()
    assert (v1["model_version"], v2["model_version"]) == ("v1", "v2")
    assert v1["outputs"][0]["data"] != v2["outputs"][0]["data"]
    metadata = request("GET", model_v1.url + f"/v2/models/{MODEL_NAME}").json()
    assert metadata["versions"] == ["v1"]
