"""The model server against requests and settings that once crashed a handler, slipped past a
check or left a probe saying the wrong thing, each probed on a real process (or, for settings,
read in-process as the process reads them)."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mlstack_common.env import SettingsError
from mlstack_model.settings import ModelSettings
from tritonclient.grpc import service_pb2 as pb

from harness.http import request
from harness.poll import eventually
from harness.services import SETOSA, ModelProcess, start_model
from tests.services import oip
from tests.services.hostile import INFER, exchange, raw_request, read_answer, with_content_length
from tests.services.oip import INFER_PATH, INPUT, SERVICE

# -- bad requests are the client's mistake: 400, never a 500 ------------------------------------


@pytest.mark.parametrize(
    "datatype", [[], ["FP64"], {"FP64": 1}], ids=["list", "list-of-name", "object"]
)
def test_a_datatype_that_is_not_a_string_is_400(model_server: ModelProcess, datatype: Any) -> None:
    body = {"inputs": [{"name": INPUT, "shape": [1, 4], "datatype": datatype, "data": SETOSA}]}
    reply = request("POST", model_server.url + INFER_PATH, body)
    assert reply.status == 400, reply.body
    assert reply.json()["error"].startswith(f"input datatype {datatype!r} is not supported")


def infer_with_header_length(model: ModelProcess, value: str) -> Any:
    """The one-row JSON infer request, with Inference-Header-Content-Length ``value`` (sent as
    Latin-1 bytes, as HTTP carries a header)."""
    headers = [("Content-Type", "application/json"), ("Inference-Header-Content-Length", value)]
    return exchange(model.port, raw_request("POST", INFER_PATH, headers, INFER.one_row))


@pytest.mark.parametrize(
    ("value", "refusal"),
    [
        # Latin-1 has digits that str.isdigit() takes and int() does not.
        ("\u00b2", "Inference-Header-Content-Length must be a byte count, got '\u00b2'"),
        ("1\u00b9", "Inference-Header-Content-Length must be a byte count, got '1\u00b9'"),
        # More digits than int() reads (4300).
        (
            "9" * 5000,
            "Inference-Header-Content-Length is 5000 digits long but the body has "
            f"{len(INFER.one_row)} bytes",
        ),
    ],
    ids=["superscript-two", "superscript-one", "5000-digits"],
)
def test_a_header_length_int_cannot_read_is_400(
    model_server: ModelProcess, value: str, refusal: str
) -> None:
    answer = infer_with_header_length(model_server, value)
    assert (answer.status, answer.error()) == (400, refusal)


def test_a_zero_padded_header_length_is_read_as_its_value(model_server: ModelProcess) -> None:
    answer = infer_with_header_length(model_server, "0" * 5000 + str(len(INFER.one_row)))
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["outputs"][0]["data"] == [0]


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["PORT", "GRPC_PORT"])
@pytest.mark.parametrize("value", ["65536", "70000"])
def test_a_port_beyond_65535_is_refused(variable: str, value: str) -> None:
    """Not taken modulo 65536 (70000 would listen on 4464) nor logged as if it were a port."""
    with pytest.raises(SettingsError) as refused:
        ModelSettings.from_env({variable: value})
    assert str(refused.value) == f"{variable} must be <= 65535, got {value}"


def test_the_highest_port_is_taken() -> None:
    settings = ModelSettings.from_env({"PORT": "65535", "GRPC_PORT": "65535"})
    assert (settings.port, settings.grpc_port) == (65535, 65535)


# -- the drain: every readiness signal turns off at once -----------------------------------------


def health_status(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    status: int = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
    return status


def test_sigterm_turns_the_grpc_health_readiness_off_and_keeps_liveness(
    model_dir: Path, log_dir: Path
) -> None:
    """The service's own name in grpc.health.v1 is its readiness (GrpcServer.start): it turns
    NOT_SERVING with /v2/health/ready and ServerReady, while the overall status ("", liveness)
    stays SERVING until the server stops."""
    model = start_model(model_dir, log_dir)
    serving = health_pb2.HealthCheckResponse.SERVING
    whole = with_content_length(INFER.head, len(INFER.one_row)) + INFER.one_row
    with (
        grpc.insecure_channel(model.grpc_target) as channel,
        socket.create_connection(("127.0.0.1", model.port), timeout=10) as sock,
    ):
        assert health_status(channel, SERVICE) == serving
        # An infer request in flight (its body not all sent) keeps the server draining.
        sock.sendall(whole[:-5])
        time.sleep(0.3)
        model.signal(signal.SIGTERM)
        eventually(
            lambda: request("GET", model.url + "/v2/health/ready").status == 503,
            "/v2/health/ready answering 503 while the model drains",
            2,
            interval=0.05,
        )
        ready = oip.call(channel, "ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse)
        assert not ready.ready
        assert health_status(channel, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health_status(channel, "") == serving
        sock.sendall(whole[-5:])
        assert read_answer(sock).status == 200
    assert model.wait_for_exit(30) == 0
