"""The gateway's public API, in both database modes (SQLite and PostgreSQL), over real HTTP."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from mlstack_gateway.errors import API_KEY_CHALLENGE

from components.app import MODEL_NAME
from harness.http import Reply, request
from harness.services import API_KEY, SETOSA, VIRGINICA, ServiceProcess
from tests.services.oip import INFER_PATH, infer_body
from tests.services.support import error_of, history, predict


def test_predict_answers_predictions_version_and_request_id(gateway: ServiceProcess) -> None:
    reply = predict(gateway.url, [SETOSA, VIRGINICA])
    assert reply.status == 200
    body = reply.json()
    assert set(body) == {"predictions", "model_version", "request_id"}
    assert body["predictions"] == [0, 2]
    assert body["model_version"] == "v2"
    assert uuid.UUID(body["request_id"])


def test_predictions_match_the_model_server(
    gateway: ServiceProcess, model_server: ServiceProcess
) -> None:
    rows = [[4.9 + i / 10, 3.0, 1.4 + i / 5, 0.2 + i / 10] for i in range(30)]
    direct = request(
        "POST",
        model_server.url + INFER_PATH,
        infer_body(rows, outputs=[{"name": "predict"}]),
    ).json()["outputs"][0]["data"]
    assert predict(gateway.url, rows).json()["predictions"] == direct


def test_answered_prediction_is_in_the_history(gateway: ServiceProcess) -> None:
    body = predict(gateway.url, [VIRGINICA]).json()
    reply = history(gateway, "?limit=5")
    assert reply.status == 200
    items = reply.json()["items"]
    newest = items[0]
    assert newest["request_id"] == body["request_id"]
    assert newest["instances"] == [VIRGINICA]
    assert newest["predictions"] == [2]
    assert newest["model_name"] == MODEL_NAME
    assert newest["model_version"] == "v2"
    assert newest["created_at"]


def test_history_limit_is_honoured(gateway: ServiceProcess) -> None:
    for _ in range(3):
        assert predict(gateway.url, [SETOSA]).status == 200
    assert len(history(gateway, "?limit=2").json()["items"]) == 2


@pytest.mark.parametrize("query", ["?limit=0", "?limit=-1", "?limit=abc", "?limit=100000"])
def test_bad_history_limit_is_422(gateway: ServiceProcess, query: str) -> None:
    reply = history(gateway, query)
    assert reply.status == 422
    assert "limit" in error_of(reply)


def test_concurrent_predictions_are_all_answered_and_stored(gateway: ServiceProcess) -> None:
    def one(i: int) -> Reply:
        return predict(gateway.url, [[5.0 + (i % 20) / 10, 3.0, 1.5 + (i % 30) / 10, 0.5]])

    with ThreadPoolExecutor(max_workers=24) as pool:
        replies = list(pool.map(one, range(240)))
    assert [r.status for r in replies] == [200] * 240
    ids = {r.json()["request_id"] for r in replies}
    assert len(ids) == 240
    stored = {item["request_id"] for item in history(gateway, "?limit=1000").json()["items"]}
    assert ids <= stored


@pytest.mark.parametrize(
    ("headers", "needle"),
    [
        ({}, "missing X-API-Key header"),
        ({"X-API-Key": "wrong"}, "invalid API key"),
        # An empty value is no key at all, not a key to compare.
        ({"X-API-Key": ""}, "missing X-API-Key header"),
    ],
    ids=["missing", "wrong", "empty"],
)
def test_predict_without_the_right_key_is_401(
    gateway: ServiceProcess, headers: dict[str, str], needle: str
) -> None:
    reply = request("POST", gateway.url + "/api/v1/predict", {"instances": [SETOSA]}, headers)
    assert reply.status == 401
    assert needle in error_of(reply)
    # The challenge says which credential to send, and where.
    assert reply.headers.get("www-authenticate") == API_KEY_CHALLENGE


def test_history_without_the_right_key_is_401(gateway: ServiceProcess) -> None:
    assert request("GET", gateway.url + "/api/v1/predictions").status == 401
    refused = history(gateway, key=API_KEY + "x")
    assert refused.status == 401
    assert refused.headers.get("www-authenticate") == API_KEY_CHALLENGE


BAD_BODIES: list[tuple[Any, int, str]] = [
    (b"{not json", 400, "malformed JSON"),
    (b'{"instances": [[NaN, 3.5, 1.4, 0.2]]}', 400, "malformed JSON"),
    (b'{"instances": [[Infinity, 3.5, 1.4, 0.2]]}', 400, "malformed JSON"),
    (b'{"instances": [[1e999, 3.5, 1.4, 0.2]]}', 400, "malformed JSON"),
    (b"", 400, "malformed JSON"),
    ([SETOSA], 422, "JSON object"),
    ({"rows": [SETOSA]}, 422, "missing 'instances'"),
    ({"instances": "5.1,3.5,1.4,0.2"}, 422, "'instances' must be a list"),
    ({"instances": []}, 422, "empty"),
    ({"instances": SETOSA}, 422, "instances[0] must be a list"),
    ({"instances": [[]]}, 422, "features"),
    ({"instances": [SETOSA[:3]]}, 422, "has 3 features; the model takes 4"),
    ({"instances": [[*SETOSA, 1.0]]}, 422, "has 5 features; the model takes 4"),
    ({"instances": [SETOSA, SETOSA[:2]]}, 422, "instances[1] has 2 features"),
    ({"instances": [SETOSA, "x"]}, 422, "instances[1] must be a list"),
    ({"instances": [[5.1, "3.5", 1.4, 0.2]]}, 422, 'instances[0][1] is not a number: "3.5"'),
    ({"instances": [SETOSA, [5.1, 3.5, True, 0.2]]}, 422, "instances[1][2] is not a number: true"),
    ({"instances": [[5.1, 3.5, 1.4, None]]}, 422, "instances[0][3] is not a number: null"),
    ({"instances": [[5.1, 3.5, 1.4, [0.2]]]}, 422, "instances[0][3] is not a number"),
    ({"instances": [[5.1, 3.5, 1.4, {"v": 1}]]}, 422, "instances[0][3] is not a number"),
    # Nested deeper than orjson writes JSON (it reads deeper): named without being quoted.
    (
        b'{"instances": [[' + b"[" * 300 + b"]" * 300 + b", 3.5, 1.4, 0.2]]}",
        422,
        "instances[0][0] is not a number: a list nested too deep to quote",
    ),
    (
        b'{"instances": [[' + b'{"v":' * 300 + b"1" + b"}" * 300 + b", 3.5, 1.4, 0.2]]}",
        422,
        "instances[0][0] is not a number: an object nested too deep to quote",
    ),
    ({"instances": [SETOSA] * 1025}, 422, "too many rows: 1025"),
]


@pytest.mark.parametrize(("body", "status", "needle"), BAD_BODIES)
def test_bad_input_is_4xx_naming_the_problem(
    gateway: ServiceProcess, body: Any, status: int, needle: str
) -> None:
    reply = request("POST", gateway.url + "/api/v1/predict", body, {"X-API-Key": API_KEY})
    assert reply.status == status
    assert needle in error_of(reply)


def test_largest_allowed_batch_is_answered(gateway: ServiceProcess) -> None:
    reply = predict(gateway.url, [SETOSA] * 1024)
    assert reply.status == 200
    assert reply.json()["predictions"] == [0] * 1024


def test_probes(gateway: ServiceProcess) -> None:
    live = request("GET", gateway.url + "/healthz")
    ready = request("GET", gateway.url + "/readyz")
    assert (live.status, live.json()) == (200, {"status": "ok"})
    assert ready.status == 200
    assert ready.json()["ready"] is True


def test_metrics_are_prometheus_text_on_the_metrics_port(gateway: ServiceProcess) -> None:
    assert predict(gateway.url, [SETOSA]).status == 200
    assert predict(gateway.url, [SETOSA], key="wrong").status == 401
    assert gateway.metrics_url is not None
    reply = request("GET", gateway.metrics_url + "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    text = reply.body.decode()
    assert 'mlstack_gateway_requests_total{endpoint="predict",status="200"}' in text
    assert 'mlstack_gateway_requests_total{endpoint="predict",status="401"}' in text
    assert "mlstack_gateway_db_commit_rows_count" in text
    assert "mlstack_gateway_model_circuit_open 0.0" in text
