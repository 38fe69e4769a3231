"""The settings both services share (services/common: mlstack_common.settings), in-process."""

from __future__ import annotations

from dataclasses import fields

import pytest
from mlstack_common.env import SettingsError
from mlstack_common.settings import ServiceSettings
from mlstack_gateway.settings import GatewaySettings, MigrateSettings
from mlstack_model.settings import ModelSettings

from components import migrations
from components.app import MODEL_NAME
from tests.services.support import GATEWAY_REQUIRED

SHARED = {
    "HOST": "127.0.0.1",
    "PORT": "9000",
    "MODEL_NAME": "lilies",
    "MAX_BATCH_ROWS": "7",
    "MAX_BODY_BYTES": "4096",
    "MAX_CONCURRENT_REQUESTS": "3",
    "MAX_HEADER_BYTES": "2048",
    "KEEPALIVE_TIMEOUT_SECONDS": "5",
    "SHUTDOWN_TIMEOUT_SECONDS": "2.5",
    "LOG_LEVEL": "DEBUG",
    "ACCESS_LOG": "yes",
}
# Each test it marks runs on the settings of each service.
each_service = pytest.mark.parametrize("service", [GatewaySettings, ModelSettings])


def shared_fields(settings: ServiceSettings) -> dict[str, object]:
    return {field.name: getattr(settings, field.name) for field in fields(ServiceSettings)}


def test_both_services_read_the_shared_variables_alike() -> None:
    gateway = GatewaySettings.from_env({**GATEWAY_REQUIRED, **SHARED})
    model = ModelSettings.from_env(SHARED)
    assert shared_fields(gateway) == shared_fields(model)
    assert shared_fields(model) == {
        "host": "127.0.0.1",
        "port": 9000,
        "model_name": "lilies",
        "max_batch_rows": 7,
        "max_body_bytes": 4096,
        "max_concurrent_requests": 3,
        "http_limits": model.http_limits,
        "keepalive_timeout_seconds": 5.0,
        "shutdown_timeout_seconds": 2.5,
        "log_level": "debug",
        "access_log": True,
    }
    assert model.http_limits.max_header_bytes == 2048


@each_service
def test_the_shared_settings_have_documented_defaults(
    service: type[GatewaySettings] | type[ModelSettings],
) -> None:
    settings = service.from_env(GATEWAY_REQUIRED)
    assert settings.port == 8080
    # The name the deployment gives the model server, which the tests' servers take by default.
    assert settings.model_name == MODEL_NAME
    assert settings.max_concurrent_requests == 64
    assert settings.http_limits.max_header_bytes == 16 * 1024
    assert settings.http_limits.header_timeout == 5.0
    assert settings.http_limits.body_timeout == 10.0
    assert settings.keepalive_timeout_seconds == 75.0
    assert settings.shutdown_timeout_seconds == 20.0


def test_each_service_keeps_its_own_request_limits_by_default() -> None:
    gateway = GatewaySettings.from_env(GATEWAY_REQUIRED)
    model = ModelSettings.from_env({})
    assert (gateway.max_batch_rows, gateway.max_body_bytes) == (1024, 1024 * 1024)
    assert (model.max_batch_rows, model.max_body_bytes) == (4096, 2 * 1024 * 1024)


@each_service
def test_a_shared_variable_out_of_range_is_refused_by_both(
    service: type[GatewaySettings] | type[ModelSettings],
) -> None:
    with pytest.raises(SettingsError) as refused:
        service.from_env({**GATEWAY_REQUIRED, "KEEPALIVE_TIMEOUT_SECONDS": "0.5"})
    assert str(refused.value) == "KEEPALIVE_TIMEOUT_SECONDS must be >= 1.0, got 0.5"


@each_service
@pytest.mark.parametrize(
    ("variable", "value", "refusal"),
    [
        ("ACCESS_LOG", "loud", "ACCESS_LOG must be true or false, got 'loud'"),
        (
            "LOG_LEVEL",
            "verbose",
            "LOG_LEVEL must be one of critical, error, warning, info, debug, got 'verbose'",
        ),
    ],
)
def test_a_word_neither_service_knows_is_refused_by_both(
    service: type[GatewaySettings] | type[ModelSettings], variable: str, value: str, refusal: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        service.from_env({**GATEWAY_REQUIRED, variable: value})
    assert str(refused.value) == refusal


@pytest.mark.parametrize(("value", "on"), [("ON", True), ("no", False), ("", False), (" 1 ", True)])
def test_access_log_takes_the_yes_and_no_words_of_every_flag(value: str, on: bool) -> None:
    assert ModelSettings.from_env({"ACCESS_LOG": value}).access_log is on


def test_the_migrations_jobs_deadline_counts_the_migrate_commands_own_timeout() -> None:
    """components/migrations.py sizes the Job's deadline on the command's default timeout."""
    settings = MigrateSettings.from_env({"DATABASE_URL": "postgresql://owner@db/mlstack"})
    assert settings.timeout_seconds == migrations.MIGRATE_TIMEOUT_SECONDS
