"""What a user of the protocol sees: tools/oip_check.py (tritonclient, HTTP and gRPC, default
options) passes against each model version, and a request that is wrong the same way is refused
the same way over every transport."""

from __future__ import annotations

import grpc
import pytest

from harness.http import request
from harness.services import ModelProcess
from tests.services import oip
from tools import oip_check


def test_tritonclient_defaults_pass_against_the_default_version(
    model_server: ModelProcess,
) -> None:
    http = model_server.url.removeprefix("http://")
    assert oip_check.main(["--http", http, "--grpc", model_server.grpc_target]) == 0
    assert oip_check.check_grpc(model_server.grpc_target) == "v2"


def test_tritonclient_defaults_pass_against_v1(model_v1: ModelProcess) -> None:
    assert oip_check.check_http(model_v1.url.removeprefix("http://")) == "v1"
    assert oip_check.check_grpc(model_v1.grpc_target) == "v1"


def test_the_check_fails_against_a_server_that_is_not_there() -> None:
    assert oip_check.main(["--http", "127.0.0.1:9", "--grpc", "127.0.0.1:9"]) == 1


@pytest.mark.parametrize(
    ("shape", "datatype"),
    [([1, 3], "FP64"), ([4097, 4], "FP64"), ([1, 4], "BOOL"), ([0, 4], "FP64")],
)
def test_rest_json_rest_binary_and_grpc_refuse_alike(
    model_server: ModelProcess, shape: list[int], datatype: str
) -> None:
    count = shape[0] * shape[1]
    values = [1.0] * count
    url = model_server.url + oip.INFER_PATH
    json_reply = request("POST", url, {"inputs": [oip.tensor(values, shape, datatype)]})
    # The same bytes (the values as FP64) on the binary extension and gRPC, whatever the datatype.
    data = oip.raw_bytes(values)
    body, headers = oip.binary_body(values, datatype, shape=shape, raw=data)
    binary_reply = request("POST", url, body, headers)
    message = oip.raw_message(values, datatype, shape=shape, raw=data)
    channel = grpc.insecure_channel(model_server.grpc_target)
    with channel, pytest.raises(grpc.RpcError) as caught:
        oip.infer(channel, message)
    error = caught.value
    assert json_reply.status == binary_reply.status == 400
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert json_reply.json() == binary_reply.json() == {"error": error.details()}
