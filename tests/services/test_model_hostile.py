"""The model server against hostile clients, as a real process, with numbers.

Each test sends what an attacker or a broken client would (an answer amplified by repeated
outputs, numbers outside their datatype, a burst of large requests, oversized or half-sent
headers, idle sockets) over REST, the binary extension and gRPC, and asserts the answer and the
cost: the memory peak from /proc/<pid>/status; never an upper bound on seconds (the machine is
shared). The header size limit and the read timeouts, the gateway's too, are probed in
test_http_limits.py. The figures measured before and after these limits existed are in
bench/results/hardening.md.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from components.app import MODEL_NAME, MODEL_RESOURCES
from harness.http import request
from harness.poll import eventually
from harness.services import SETOSA, ModelProcess, start_model
from tests.services import oip
from tests.services.hostile import (
    INFER,
    Raw,
    assert_burst_shed_within,
    exchange,
    memory_limit_mib,
    memory_mib,
    read_answer,
    with_content_length,
)
from tests.services.oip import INFER_PATH, SERVICE, infer_body, raw_message, typed_message

POD_MEMORY_LIMIT_MIB = memory_limit_mib(MODEL_RESOURCES)


def rest_infer(model: ModelProcess, body: dict[str, Any] | bytes, **headers: str) -> Any:
    return request("POST", model.url + INFER_PATH, body, headers, timeout=60)


def grpc_infer(target: str, message: pb.ModelInferRequest) -> grpc.RpcError | None:
    """The error a ModelInfer call ends with, or None when it succeeds."""
    with grpc.insecure_channel(target) as channel:
        try:
            oip.infer(channel, message, timeout=30)
        except grpc.RpcError as exc:
            return exc
    return None


@pytest.fixture
def fresh_model(model_dir: Path, log_dir: Path) -> Iterator[ModelProcess]:
    """A model server of its own, so that its memory peak is this test's."""
    service = start_model(model_dir, log_dir)
    yield service
    service.stop()


# -- outputs: named once each, so an answer is bounded by the batch --------------------------------


def test_repeated_outputs_are_refused_before_the_answer_is_built(
    fresh_model: ModelProcess,
) -> None:
    # 2,000 rows and 2,000 outputs: a small request that asked for an answer of tens of MB.
    rows = [[5.10001, 3.50001, 1.40001, 0.20001], [6.70001, 3.00001, 5.20001, 2.30001]] * 1000
    outputs = [{"name": "predict_proba"}, {"name": "predict"}] * 1000
    body = json.dumps(infer_body(rows, outputs=outputs)).encode()
    assert 100_000 < len(body) < 200_000
    reply = rest_infer(fresh_model, body)
    memory = memory_mib(fresh_model.pid)
    print(f"2,000 outputs over 2,000 rows: {reply.status}, {len(reply.body)} bytes, {memory}")
    assert reply.status == 400
    assert reply.json() == {"error": "output 'predict_proba' is requested more than once"}
    assert len(reply.body) < 1000
    assert memory["VmHWM"] < 256

    message = typed_message([SETOSA])
    for _ in range(2):
        message.outputs.add(name="predict")
    error = grpc_infer(fresh_model.grpc_target, message)
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "output 'predict' is requested more than once"


def test_the_largest_answer_is_bounded_by_the_batch_limit(model_server: ModelProcess) -> None:
    # Every output once, for the most rows a request may carry (MAX_BATCH_ROWS).
    rows = [SETOSA] * 4096
    outputs = [{"name": "predict"}, {"name": "predict_proba"}]
    reply = rest_infer(model_server, infer_body(rows, outputs=outputs))
    assert reply.status == 200
    print(f"largest answer: {len(reply.body)} bytes")
    assert len(reply.body) < 1024 * 1024


# -- datatypes: every value within its type, on every path ----------------------------------------


@pytest.mark.parametrize(
    ("datatype", "value", "message"),
    [
        ("INT8", 1000, "input value 1000 is outside the range of INT8 (-128 to 127)"),
        ("INT8", -129, "input value -129 is outside the range of INT8 (-128 to 127)"),
        ("UINT8", -1, "input value -1 is outside the range of UINT8 (0 to 255)"),
        ("INT16", 40_000, "outside the range of INT16"),
        ("UINT16", 70_000, "outside the range of UINT16"),
        ("INT32", 2**31, "outside the range of INT32"),
        ("UINT32", -5, "outside the range of UINT32"),
        ("UINT64", -1, "outside the range of UINT64"),
        ("INT64", 2**63, "outside the range of INT64"),
        ("FP32", 1e39, "found NaN or infinity, or a value too large for the datatype"),
        ("FP16", 70_000.0, "found NaN or infinity, or a value too large for the datatype"),
    ],
)
def test_rest_refuses_values_outside_their_datatype(
    model_server: ModelProcess, datatype: str, value: float, message: str
) -> None:
    reply = rest_infer(model_server, infer_body([[value, 1, 1, 1]], datatype))
    assert reply.status == 400, reply.body
    assert message in reply.json()["error"]


@pytest.mark.parametrize(
    ("datatype", "field", "value"),
    [
        ("INT8", "int_contents", 1000),
        ("INT16", "int_contents", -40_000),
        ("UINT8", "uint_contents", 256),
        ("UINT16", "uint_contents", 70_000),
        ("FP32", "fp32_contents", float("inf")),
    ],
)
def test_grpc_refuses_values_outside_their_datatype(
    model_server: ModelProcess, datatype: str, field: str, value: float
) -> None:
    error = grpc_infer(model_server.grpc_target, typed_message([[value, 1, 1, 1]], datatype, field))
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert datatype in (error.details() or "")


# Finite FP64 values each model cannot score: v1's (a linear model's) weighted sums pass the
# largest double; on v2 (a tree), a value beyond float32 becomes infinity in the features it
# compares (here one that a setosa's path never compares). Either way, the row can have no class
# and no probabilities.
OVERFLOWING = {
    "v1": ([1e308, -1e308, 1e308, 1e308], "its scores"),
    "v2": ([1e39, 3.5, 1.4, 0.2], "its float32 features"),
}
OUT_OF_RANGE = "input 'input-0' is out of the model's range: the values of row {} overflow {}"
Overflowing = tuple[ModelProcess, list[float], str]


@pytest.fixture(params=["v1", "v2"])
def overflowing(request: pytest.FixtureRequest) -> Overflowing:
    """A server of each version, a row whose values overflow its model's arithmetic, and what
    the refusal says overflows."""
    version: str = request.param
    server = request.getfixturevalue("model_v1" if version == "v1" else "model_server")
    return server, *OVERFLOWING[version]


@pytest.mark.parametrize(
    ("rows", "outputs", "row"),
    [
        (1, [{"name": "predict"}], 0),  # the one-row fast path
        (1, None, 0),
        (3, [{"name": "predict"}], 2),
        (2, [{"name": "predict_proba"}], 1),
    ],
    ids=["one-row-predict", "one-row-every-output", "batch-predict", "batch-proba"],
)
def test_rest_refuses_a_row_whose_scores_overflow(
    overflowing: Overflowing, rows: int, outputs: Any, row: int
) -> None:
    """Not a class picked from infinities and probabilities of NaN (null in JSON): 400 naming
    the input and the row (of ``rows`` setosas), over JSON and over the binary extension."""
    model, values, what = overflowing
    batch = [values if index == row else SETOSA for index in range(rows)]
    fields = {} if outputs is None else {"outputs": outputs}
    logged_before = model.log_path.stat().st_size
    reply = rest_infer(model, infer_body(batch, **fields))
    assert reply.status == 400, reply.body
    assert reply.json()["error"] == OUT_OF_RANGE.format(row, what)
    body, headers = oip.binary_body(batch, header=fields)
    binary = rest_infer(model, body, **headers)
    assert (binary.status, binary.json()) == (400, reply.json())
    with model.log_path.open("rb") as log:
        log.seek(logged_before)
        logged = log.read().decode(errors="replace")
    assert "Warning" not in logged and "Traceback" not in logged, logged


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_grpc_refuses_a_row_whose_scores_overflow(overflowing: Overflowing, raw: bool) -> None:
    model, values, what = overflowing
    rows = [SETOSA, values]
    message = raw_message(rows) if raw else typed_message(rows)
    error = grpc_infer(model.grpc_target, message)
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == OUT_OF_RANGE.format(1, what)
    one_row = raw_message([values]) if raw else typed_message([values])
    one_row.outputs.add(name="predict")
    error = grpc_infer(model.grpc_target, one_row)
    assert error is not None
    assert error.details() == OUT_OF_RANGE.format(0, what)


def test_large_finite_scores_are_answered(model_v1: ModelProcess) -> None:
    """Values far beyond the data set whose scores stay finite are still answered."""
    reply = rest_infer(model_v1, infer_body([[1e300, 1e300, -1e300, 1e300], SETOSA]))
    assert reply.status == 200, reply.body
    labels, proba = reply.json()["outputs"]
    assert labels["data"][1] == 0
    assert None not in proba["data"]


def test_binary_fp32_infinity_is_refused(model_server: ModelProcess) -> None:
    body, headers = oip.binary_body([[float("inf"), 1, 1, 1]], "FP32")
    reply = request("POST", model_server.url + INFER_PATH, body, headers)
    assert reply.status == 400
    assert "finite numbers of FP32" in reply.json()["error"]


def test_an_unknown_input_name_is_refused(model_server: ModelProcess) -> None:
    body = infer_body([SETOSA])
    body["inputs"][0]["name"] = "sepal"
    reply = rest_infer(model_server, body)
    assert reply.status == 400
    assert reply.json() == {"error": "unknown input 'sepal'; the model takes one input, 'input-0'"}
    message = typed_message([SETOSA], name="sepal")
    error = grpc_infer(model_server.grpc_target, message)
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_errors_carry_our_words_not_the_parsers(model_server: ModelProcess) -> None:
    reply = rest_infer(model_server, b'{"inputs": [}')
    assert reply.status == 400
    assert reply.json() == {"error": "malformed JSON at line 1, column 13"}


# -- a burst of large requests: a bounded number admitted, the rest 503 at once -----------------


def large_infer_body(size: int = 1_000_000) -> bytes:
    """A valid infer of 1,000 rows whose numbers are written with enough digits to weigh
    ``size`` bytes: every byte is parsed, none is padding."""
    digits = size // 4000 - 6
    number = "5." + "1" * digits
    row = "[" + ", ".join([number] * 4) + "]"
    tensor = '{"name": "input-0", "datatype": "FP64", "shape": [1000, 4], "data": ['
    body = '{"inputs": [' + tensor + ", ".join([row] * 1000) + "]}]}"
    return body.encode()


def test_300_concurrent_2mb_infers_stay_under_the_pod_memory_limit(
    fresh_model: ModelProcess,
) -> None:
    # Each just within MAX_BODY_BYTES (2 MiB).
    payload = large_infer_body(2_000_000)
    assert 1_900_000 < len(payload) <= 2 * 1024 * 1024
    # Under the pod limit with room to spare (the figures before and after: hardening.md).
    assert_burst_shed_within(fresh_model, INFER.head, payload, POD_MEMORY_LIMIT_MIB)
    assert rest_infer(fresh_model, infer_body([SETOSA])).status == 200


async def _grpc_burst(target: str, message: pb.ModelInferRequest, calls: int) -> list[str]:
    """``calls`` ModelInfer calls of ``message`` at once on one channel: each one's status code
    name."""
    options = [("grpc.max_send_message_length", 8 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        rpc = channel.unary_unary(
            oip.method_path("ModelInfer"),
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )

        async def one() -> str:
            try:
                await rpc(message, timeout=60)
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
            return "OK"

        return list(await asyncio.gather(*(one() for _ in range(calls))))


def test_grpc_bursts_of_300_calls_stay_under_the_pod_memory_limit(
    fresh_model: ModelProcess,
) -> None:
    # 2 MB messages (within MAX_BODY_BYTES, far beyond any valid batch), three bursts on one
    # channel: refused before they are read.
    oversized = raw_message([SETOSA] * 62_500)
    assert oversized.ByteSize() > 2_000_000
    for _ in range(3):
        codes = asyncio.run(_grpc_burst(fresh_model.grpc_target, oversized, 300))
        assert set(codes) == {"RESOURCE_EXHAUSTED"}, set(codes)
    oversized_peak = memory_mib(fresh_model.pid)
    # The largest valid batch (MAX_BATCH_ROWS rows): admitted up to the bound, the rest
    # UNAVAILABLE (busy, or a stream beyond max_concurrent_streams refused).
    codes = asyncio.run(_grpc_burst(fresh_model.grpc_target, raw_message([SETOSA] * 4096), 300))
    assert set(codes) <= {"OK", "UNAVAILABLE"}, set(codes)
    assert "OK" in codes
    memory = memory_mib(fresh_model.pid)
    answered = codes.count("OK")
    print(
        f"gRPC: 3 x 300 calls of 2 MB: {oversized_peak}; 300 of 4,096 rows: {answered} OK, {memory}"
    )
    # Under the pod limit with room to spare (the figures before and after: hardening.md).
    assert memory["VmHWM"] < POD_MEMORY_LIMIT_MIB * 0.875


def test_a_full_server_sheds_rest_and_grpc_at_once_and_still_answers_probes(
    model_dir: Path, log_dir: Path
) -> None:
    """The request beyond the bound is turned away while the one in flight still holds its slot,
    not once it frees: that one's body never comes, and its timeout is ten minutes. No bound on
    the seconds is asserted: a server that waited for the slot would not answer within the
    minute the test's client waits."""
    model = start_model(model_dir, log_dir, MAX_CONCURRENT_REQUESTS="1", BODY_TIMEOUT_SECONDS="600")
    try:
        # A request whose body never comes holds the one slot (until the body timeout).
        with socket.create_connection(("127.0.0.1", model.port)) as holder:
            holder.sendall(with_content_length(INFER.head, 100))
            # Answered until the holder is admitted, then shed.
            replies: list[Any] = []

            def shed() -> bool:
                replies.append(rest_infer(model, infer_body([SETOSA])))
                return bool(replies[-1].status == 503)

            eventually(shed, "an infer shed while the slot is held", 10, interval=0.05)
            reply = replies[-1]
            assert {answer.status for answer in replies[:-1]} <= {200}
            assert reply.headers["retry-after"] == "1"
            assert reply.json() == {"error": "server busy: 1 requests in flight, retry shortly"}
            error = grpc_infer(model.grpc_target, typed_message([SETOSA]))
            assert error is not None
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error.details() == "server busy: 1 requests in flight, retry shortly"
            assert request("GET", model.url + "/v2/health/ready").status == 200
            assert request("GET", f"{model.url}/v2/models/{MODEL_NAME}").status == 200
        # The slot is given back when its client goes.
        eventually(
            lambda: rest_infer(model, infer_body([SETOSA])).status == 200,
            "the slot given back when its client went",
            5,
            interval=0.05,
        )
        assert grpc_infer(model.grpc_target, typed_message([SETOSA])) is None
    finally:
        model.stop()


def test_a_long_zero_padded_content_length_is_read_as_its_value(
    model_server: ModelProcess,
) -> None:
    """The shared body reader (mlstack_common.body) never hands int() thousands of digits: a
    length padded with zeros is its value, one with more digits than the limit is 413 at once."""
    zeros = b"0" * 5000

    def infer_declaring(length: bytes) -> Raw:
        return exchange(model_server.port, with_content_length(INFER.head, length) + INFER.one_row)

    assert infer_declaring(zeros + b"%d" % len(INFER.one_row)).status == 200
    refused = infer_declaring(zeros + b"9" * 8)
    assert (refused.status, refused.error()) == (
        413,
        "request body too large: more than 2097152 bytes",
    )


# -- SIGTERM: not ready at once, in-flight requests finished -------------------------------------


def health_status(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    status: int = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
    return status


def test_sigterm_turns_readiness_off_at_once_and_finishes_an_infer_in_flight(
    model_dir: Path, log_dir: Path
) -> None:
    """Every readiness signal turns off at once: /v2/health/ready, gRPC ServerReady, and the
    grpc.health.v1 status of the service's own name (GrpcServer.start); the overall status
    ("", liveness) stays SERVING until the server stops."""
    model = start_model(model_dir, log_dir)
    serving = health_pb2.HealthCheckResponse.SERVING
    whole = with_content_length(INFER.head, len(INFER.one_row)) + INFER.one_row
    with (
        grpc.insecure_channel(model.grpc_target) as channel,
        socket.create_connection(("127.0.0.1", model.port), timeout=10) as sock,
    ):
        assert health_status(channel, SERVICE) == serving
        # All but the last bytes: the infer request holds its slot, waiting for the rest.
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
        answer = read_answer(sock)
    assert answer.status == 200
    assert json.loads(answer.body)["outputs"][0]["data"] == [0]
    assert model.wait_for_exit(30) == 0
    assert "Application shutdown complete" in model.log_tail()
