"""API key rotation: the gateway accepts the current key and, while one is configured, the
previous one; anything else stays 401, and metrics count requests by which key, never by key."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlstack_common.env import SettingsError
from mlstack_gateway.auth import ApiKeyChecker
from mlstack_gateway.errors import ApiError
from mlstack_gateway.settings import GatewaySettings

from harness.http import request
from harness.metrics import samples
from harness.services import SETOSA, ServiceProcess, start_gateway
from tests.services.hostile import PREDICT, exchange, raw_request
from tests.services.support import GATEWAY_REQUIRED, history, predict

NEW_KEY = "new-key-after-rotation"
OLD_KEY = "old-key-being-replaced"


@pytest.fixture(scope="module")
def rotating(model_server: ServiceProcess, log_dir: Path) -> Iterator[ServiceProcess]:
    """A gateway mid-rotation: the new key is current, the old one previous."""
    service = start_gateway(
        model_server.url, log_dir, MLSTACK_API_KEY=NEW_KEY, MLSTACK_API_KEY_PREVIOUS=OLD_KEY
    )
    yield service
    service.stop()


def key_counts(gateway: ServiceProcess) -> dict[str, float]:
    assert gateway.metrics_url is not None
    text = request("GET", gateway.metrics_url + "/metrics").body.decode()
    assert NEW_KEY not in text and OLD_KEY not in text
    return {
        sample.labels["key"]: sample.value
        for sample in samples(text)
        if sample.name == "mlstack_gateway_api_key_requests_total"
    }


def test_old_and_new_key_are_both_answered_while_both_are_configured(
    rotating: ServiceProcess,
) -> None:
    for key in (OLD_KEY, NEW_KEY):
        assert predict(rotating.url, [SETOSA], key=key).status == 200
        assert history(rotating, key=key).status == 200


@pytest.mark.parametrize(
    "key", ["wrong", "", OLD_KEY + NEW_KEY, OLD_KEY[:-1], NEW_KEY + "x", NEW_KEY.upper()]
)
def test_any_other_key_is_401(rotating: ServiceProcess, key: str) -> None:
    assert predict(rotating.url, [SETOSA], key=key).status == 401
    assert history(rotating, key=key).status == 401


@pytest.mark.parametrize("key", [" " + NEW_KEY, NEW_KEY + " ", "\t" + OLD_KEY + " \t"])
def test_whitespace_around_a_key_is_not_part_of_it(rotating: ServiceProcess, key: str) -> None:
    # RFC 9112: the spaces and tabs around a header's value are not part of it (and the gateway
    # strips the keys it is given of theirs).
    assert predict(rotating.url, [SETOSA], key=key).status == 200
    assert history(rotating, key=key).status == 200


def test_a_missing_key_is_401(rotating: ServiceProcess) -> None:
    assert predict(rotating.url, [SETOSA], key=None).status == 401


@pytest.mark.parametrize("keys", [(OLD_KEY, NEW_KEY), (NEW_KEY, OLD_KEY), (OLD_KEY, OLD_KEY)])
def test_two_valid_keys_in_one_request_are_a_repeated_header(
    rotating: ServiceProcess, keys: tuple[str, str]
) -> None:
    headers = [("X-API-Key", key) for key in keys]
    answer = exchange(rotating.port, raw_request("POST", PREDICT.path, headers, PREDICT.one_row))
    assert answer.status == 401
    assert answer.error() == "repeated X-API-Key header: send it once"


def test_metrics_count_requests_by_key_id_never_the_key(rotating: ServiceProcess) -> None:
    before = key_counts(rotating)
    assert set(before) == {"current", "previous"}
    for _ in range(3):
        assert predict(rotating.url, [SETOSA], key=OLD_KEY).status == 200
    assert predict(rotating.url, [SETOSA], key=NEW_KEY).status == 200
    assert history(rotating, key=NEW_KEY).status == 200
    assert predict(rotating.url, [SETOSA], key="wrong").status == 401
    after = key_counts(rotating)
    assert after["previous"] - before["previous"] == 3
    assert after["current"] - before["current"] == 2


def test_without_a_previous_key_the_old_one_is_401(
    model_server: ServiceProcess, log_dir: Path
) -> None:
    gateway = start_gateway(model_server.url, log_dir, MLSTACK_API_KEY=NEW_KEY)
    try:
        assert predict(gateway.url, [SETOSA], key=NEW_KEY).status == 200
        assert predict(gateway.url, [SETOSA], key=OLD_KEY).status == 401
        assert set(key_counts(gateway)) == {"current"}
    finally:
        gateway.stop()


def test_the_previous_key_is_read_from_the_file_kubernetes_mounts(tmp_path: Path) -> None:
    (tmp_path / "api-key-previous").write_text(OLD_KEY + "\n")
    settings = GatewaySettings.from_env(
        {
            **GATEWAY_REQUIRED,
            "MLSTACK_API_KEY": NEW_KEY,
            "MLSTACK_API_KEY_PREVIOUS_FILE": str(tmp_path / "api-key-previous"),
        }
    )
    assert dict(settings.api_keys) == {"current": NEW_KEY, "previous": OLD_KEY}


def test_an_absent_previous_key_file_means_none(tmp_path: Path) -> None:
    """The pods name the file whether or not a rotation is under way; the Secret has the key
    only during one."""
    settings = GatewaySettings.from_env(
        {
            **GATEWAY_REQUIRED,
            "MLSTACK_API_KEY": NEW_KEY,
            "MLSTACK_API_KEY_PREVIOUS_FILE": str(tmp_path / "api-key-previous"),
        }
    )
    assert dict(settings.api_keys) == {"current": NEW_KEY}


def test_an_absent_current_key_file_stops_the_gateway(tmp_path: Path) -> None:
    missing = tmp_path / "api-key"
    with pytest.raises(SettingsError, match=f"MLSTACK_API_KEY_FILE={missing} cannot be read"):
        GatewaySettings.from_env({"MLSTACK_API_KEY_FILE": str(missing)})


def test_an_empty_previous_key_means_none() -> None:
    settings = GatewaySettings.from_env(
        {**GATEWAY_REQUIRED, "MLSTACK_API_KEY": NEW_KEY, "MLSTACK_API_KEY_PREVIOUS": ""}
    )
    assert dict(settings.api_keys) == {"current": NEW_KEY}


def test_a_previous_key_equal_to_the_current_one_stops_the_gateway() -> None:
    with pytest.raises(SettingsError, match="MLSTACK_API_KEY_PREVIOUS is the same key"):
        GatewaySettings.from_env(
            {**GATEWAY_REQUIRED, "MLSTACK_API_KEY": NEW_KEY, "MLSTACK_API_KEY_PREVIOUS": NEW_KEY}
        )


@pytest.mark.parametrize("sent", [NEW_KEY, OLD_KEY, "wrong"])
def test_every_key_is_compared_whichever_matches(
    monkeypatch: pytest.MonkeyPatch, sent: str
) -> None:
    """No early exit: the comparisons made do not depend on which key (if any) matches."""
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", compare_digest)
    checker = ApiKeyChecker({"current": NEW_KEY, "previous": OLD_KEY})
    headers = [(b"x-api-key", sent.encode())]
    try:
        found: str | None = checker.check(headers)
    except ApiError as refused:
        assert refused.status == 401
        found = None
    assert found == {NEW_KEY: "current", OLD_KEY: "previous"}.get(sent)
    assert len(compared) == 2
    # Fixed-length MACs, never the keys themselves: the time says nothing of their lengths.
    assert {len(a) for pair in compared for a in pair} == {32}
    assert all(sent.encode() not in pair for pair in compared)
