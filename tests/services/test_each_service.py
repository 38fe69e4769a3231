"""What the gateway and the model server do alike, through the code they share (services/common),
probed on each as a real process: a bad setting stops it at start (mlstack_common.serving), a
wrong path or method is answered with a JSON error and never a redirect (mlstack_common.app), a
body over the limit is refused (mlstack_common.body), a header's value is read without the
whitespace around it (mlstack_common.http_limits)."""

from __future__ import annotations

import pytest

from components.app import MODEL_NAME
from harness.http import request
from tests.services.hostile import exchange, raw_request, with_content_length
from tests.services.oip import INFER_PATH
from tests.services.support import (
    SERVICES,
    Server,
    error_of,
    refused_at_start,
    service_process,
)


@pytest.mark.parametrize(
    ("service", "env", "reason"),
    [
        pytest.param(
            "gateway", {"MLSTACK_API_KEY": ""}, "MLSTACK_API_KEY", id="gateway-without-api-key"
        ),
        pytest.param(
            "gateway", {"MODEL_URL": ""}, "MODEL_URL must give", id="gateway-without-model-url"
        ),
        *(
            pytest.param(
                service,
                {"MAX_CONCURRENT_REQUESTS": "0"},
                "MAX_CONCURRENT_REQUESTS must be >= 1, got 0",
                id=f"{service}-shared-limit-out-of-range",
            )
            for service in SERVICES
        ),
    ],
)
def test_a_bad_setting_stops_the_service_at_start(
    request: pytest.FixtureRequest, service: str, env: dict[str, str], reason: str
) -> None:
    assert reason in refused_at_start(service_process(request, service, **env))


# Paths Starlette would answer with a redirect built from the Host header, which the client
# controls: a trailing slash, and a path that begins with a host.
FOREIGN_HOST_BAIT = [
    ("gateway", "POST", "/api/v1/predict/"),
    ("gateway", "GET", "/api/v1/predictions/"),
    ("gateway", "GET", "/healthz/"),
    ("gateway", "POST", "//evil.example/api/v1/predict"),
    ("model", "GET", "/v2/health/ready/"),
    ("model", "GET", f"/v2/models/{MODEL_NAME}/"),
    ("model", "POST", f"{INFER_PATH}/"),
    ("model", "GET", "//evil.example/v2/health/ready"),
]


@pytest.mark.parametrize(("server", "method", "path"), FOREIGN_HOST_BAIT, indirect=["server"])
def test_no_redirect_is_built_from_a_foreign_host(server: Server, method: str, path: str) -> None:
    body = server.post.one_row if method == "POST" else b""
    data = raw_request(method, path, server.post.headers, body, host="evil.example")
    answer = exchange(server.port, data)
    assert not 300 <= answer.status < 400
    assert "location" not in answer.headers
    assert answer.status == 404
    assert answer.error()


def test_a_wrong_method_and_an_unknown_path_are_answered_with_json_errors(server: Server) -> None:
    headers = dict(server.post.headers)
    wrong = request("GET", server.process.url + server.post.path, headers=headers)
    assert wrong.status == 405
    assert error_of(wrong)
    missing = request("GET", server.process.url + "/v3/nothing", headers=headers)
    assert missing.status == 404
    assert error_of(missing)


def test_a_body_over_the_limit_is_413(server: Server) -> None:
    # A row the service answers, behind more whitespace than either service's limit allows.
    body = b" " * (9 * 1024 * 1024) + server.post.one_row
    reply = request("POST", server.process.url + server.post.path, body, dict(server.post.headers))
    assert reply.status == 413
    assert "too large" in error_of(reply)


def test_whitespace_around_a_header_value_is_not_part_of_it(server: Server) -> None:
    # RFC 9112 lets optional whitespace (spaces, tabs) precede and follow a field's value.
    post = server.post
    data = with_content_length(post.head, b" \t%d \t" % len(post.one_row))
    answer = exchange(server.port, data + post.one_row)
    assert answer.status == 200, answer.body
