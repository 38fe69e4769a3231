"""Calls on the connections the gateway pooled to a model pod whose node then died, or to a live
pod one of whose packets was lost: their packets dropped in a network of the test's own
(tests/services/dead_model_pod.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from harness.private_network import in_own_network, unavailable
from harness.program import ROOT

WHY_NOT = unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))


def one_call(loop: str, scenario: str, ack_timeout: str = "") -> dict[str, Any]:
    argv = [sys.executable, "-m", "tests.services.dead_model_pod", loop, scenario, ack_timeout]
    done = subprocess.run(
        in_own_network(argv), check=False, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    outcome: dict[str, Any] = json.loads(done.stdout)
    return outcome


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_call_no_pooled_connection_acknowledges_is_sent_again_on_a_new_one(loop: str) -> None:
    """By default (MODEL_ACK_TIMEOUT_SECONDS 0.3) the pooled connection the call goes out on, on
    which nothing of the request is acknowledged, is closed, and the call is sent again on a new
    connection, not the other pooled one to the same pod: answered within MODEL_TIMEOUT_SECONDS
    (0.5), the closed connection and the retry counted."""
    assert one_call(loop, "dead") == {
        "pooled": 2,
        "predictions": [2],
        "retries": 1.0,
        "unacknowledged": 1.0,
        "connections": 3,
    }


def test_with_the_look_off_the_call_waits_for_its_deadline() -> None:
    """MODEL_ACK_TIMEOUT_SECONDS 0 (never looked at): the same call is a 503 at
    MODEL_TIMEOUT_SECONDS, and nothing is sent again."""
    assert one_call("asyncio", "dead", "0") == {
        "pooled": 2,
        "refused": [503, "model unavailable: timed out"],
        "retries": 0.0,
        "unacknowledged": 0.0,
        "connections": 2,
    }


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_live_pod_whose_request_was_lost_once_keeps_its_connection(loop: str) -> None:
    """The request's packet lost on its way to a live pod: the kernel sends it again (about
    0.2 s later), the pod acknowledges and answers it before the default MODEL_ACK_TIMEOUT_SECONDS
    has passed, so the call is answered on its connection, sent once."""
    assert one_call(loop, "lost-once") == {
        "pooled": 2,
        "predictions": [2],
        "retries": 0.0,
        "unacknowledged": 0.0,
        "connections": 2,
    }
