"""The model server against requests and settings that once crashed a handler or slipped past a
check, each probed on a real process (or, for settings, read in-process as the process reads
them)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from mlstack_common.env import SettingsError
from mlstack_model.settings import ModelSettings

from harness.http import request
from harness.services import SETOSA, ModelProcess
from tests.services import oip
from tests.services.hostile import INFER, exchange, raw_request
from tests.services.oip import INFER_PATH, INPUT

# -- bad requests are the client's mistake: 400, never a 500 ------------------------------------


@pytest.mark.parametrize(
    "datatype", [[], ["FP64"], {"FP64": 1}], ids=["list", "list-of-name", "object"]
)
def test_a_datatype_that_is_not_a_string_is_400(model_server: ModelProcess, datatype: Any) -> None:
    body = {"inputs": [{"name": INPUT, "shape": [1, 4], "datatype": datatype, "data": SETOSA}]}
    reply = request("POST", model_server.url + INFER_PATH, body)
    assert reply.status == 400, reply.body
    assert reply.json()["error"].startswith(f"input datatype {datatype!r} is not supported")


# Nested as deep as JSON is read (orjson: 1024 levels), deeper than orjson writes (255) and than
# repr() goes (Python's recursion limit): each refusal names the value without quoting all of it.
DEEP = b"[" * 1000 + b"]" * 1000


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        (
            b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", '
            b'"data": [[' + DEEP + b", 3.5, 1.4, 0.2]]}]}",
            "input 'data' must hold only numbers; found a list nested too deep to quote",
        ),
        (
            b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": '
            + DEEP
            + b', "data": [5.1, 3.5, 1.4, 0.2]}]}',
            "input datatype [[[[[[[...]]]]]]] is not supported",
        ),
        (
            b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", '
            b'"data": [5.1, 3.5, 1.4, 0.2]}], "outputs": [{"name": ' + DEEP + b"}]}",
            "unknown output [[[[[[[...]]]]]]]",
        ),
    ],
    ids=["data", "datatype", "output-name"],
)
def test_a_value_nested_too_deep_to_quote_is_400(
    model_server: ModelProcess, body: bytes, refusal: str
) -> None:
    reply = request("POST", model_server.url + INFER_PATH, body)
    assert reply.status == 400, reply.body
    assert reply.json()["error"].startswith(refusal)


def renamed(message: Any, model_name: str) -> Any:
    message.model_name = model_name
    return message


# A name or shape as long as these, quoted whole, passes the 8 KiB a gRPC client takes of the
# trailer that carries the message: the call ends RESOURCE_EXHAUSTED and the reason is lost.
LONG = 20_000


@pytest.mark.parametrize(
    ("message", "code", "refusal"),
    [
        (
            lambda: oip.typed_message([SETOSA], name="x" * LONG),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown input 'xxxxxxxxxxxx...xxxxxxxxxxxxx'",
        ),
        (
            lambda: oip.raw_message([SETOSA], shape=[1] * LONG),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input shape must be [rows, 4], got [1, 1, 1, 1, 1, 1, ...]",
        ),
        (
            lambda: renamed(oip.typed_message([SETOSA]), "z" * LONG),
            grpc.StatusCode.NOT_FOUND,
            "unknown model 'zzzzzzzzzzzz...zzzzzzzzzzzzz'",
        ),
        (
            lambda: oip.typed_message([SETOSA], model_version="v" * LONG),
            grpc.StatusCode.NOT_FOUND,
            "model 'iris' has no version 'vvvvvvvvvvvv...vvvvvvvvvvvvv' here",
        ),
    ],
    ids=["input-name", "shape", "model-name", "model-version"],
)
def test_a_long_value_is_refused_for_what_it_is_over_grpc(
    model_server: ModelProcess,
    message: Callable[[], Any],
    code: grpc.StatusCode,
    refusal: str,
) -> None:
    sent = message()
    with (
        grpc.insecure_channel(model_server.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        oip.infer(channel, sent)
    assert refused.value.code() == code, refused.value.details()
    assert (refused.value.details() or "").startswith(refusal)


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


def test_whitespace_around_the_header_length_is_not_part_of_it(model_server: ModelProcess) -> None:
    answer = infer_with_header_length(model_server, f" {len(INFER.one_row)} \t")
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
