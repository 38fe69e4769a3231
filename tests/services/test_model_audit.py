"""The model server against requests and settings that once crashed a handler, slipped past a
check or left a probe saying the wrong thing, each probed on a real process (or, for settings,
read in-process as the process reads them)."""

from __future__ import annotations

from typing import Any

import pytest

from harness.http import request
from harness.services import SETOSA, ModelProcess
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
