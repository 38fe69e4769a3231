"""Gateway settings: secrets from files (as Kubernetes mounts them) or from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlstack_common.env import SettingsError
from mlstack_gateway.settings import GatewaySettings, MigrateSettings

from tests.services.support import GATEWAY_REQUIRED


def test_secrets_are_read_from_the_files_kubernetes_mounts(tmp_path: Path) -> None:
    (tmp_path / "api-key").write_text("key-from-file\n")
    (tmp_path / "database-url").write_text("postgresql://u:p@database:5432/mlstack\n")
    settings = GatewaySettings.from_env(
        {
            **GATEWAY_REQUIRED,
            "MLSTACK_API_KEY": "ignored-when-a-file-is-given",
            "MLSTACK_API_KEY_FILE": str(tmp_path / "api-key"),
            "DATABASE_URL_FILE": str(tmp_path / "database-url"),
        }
    )
    assert settings.api_keys == {"current": "key-from-file"}
    assert settings.database_url == "postgresql://u:p@database:5432/mlstack"


def test_secrets_from_the_environment_when_no_file_is_named() -> None:
    settings = GatewaySettings.from_env({**GATEWAY_REQUIRED, "MLSTACK_API_KEY": "dev-key"})
    assert settings.api_keys == {"current": "dev-key"}
    assert settings.database_url is None


def test_an_unreadable_secret_file_is_named_in_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(SettingsError, match=f"MLSTACK_API_KEY_FILE={missing} cannot be read"):
        GatewaySettings.from_env({"MLSTACK_API_KEY_FILE": str(missing)})


@pytest.mark.parametrize("name", ["MLSTACK_API_KEY", "MLSTACK_API_KEY_PREVIOUS", "DATABASE_URL"])
def test_a_secret_file_that_is_not_utf8_is_refused_without_its_bytes(
    tmp_path: Path, name: str
) -> None:
    """One line naming the file (a SettingsError, not a traceback), and none of its bytes: the
    decoder's own message quotes the byte it stopped at and where."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"postgresql://u:pa\xe9ss@database:5432/mlstack\n")
    env = {**GATEWAY_REQUIRED, f"{name}_FILE": str(secret)}
    with pytest.raises(SettingsError) as refused:
        GatewaySettings.from_env(env)
    assert str(refused.value) == f"{name}_FILE={secret} cannot be read: it is not UTF-8 text"


def test_a_missing_key_stops_the_gateway() -> None:
    with pytest.raises(SettingsError, match="MLSTACK_API_KEY"):
        GatewaySettings.from_env({})


def test_a_missing_model_url_stops_the_gateway() -> None:
    # No default: the model's own default ports are not where every launcher runs it.
    for unset in ({}, {"MODEL_URL": " "}):
        with pytest.raises(SettingsError, match=r"^MODEL_URL must give the model server's REST"):
            GatewaySettings.from_env({"MLSTACK_API_KEY": "k", **unset})
    with pytest.raises(SettingsError, match=r"^MODEL_URL must be an http\(s\) URL"):
        GatewaySettings.from_env({"MLSTACK_API_KEY": "k", "MODEL_URL": "model:8080"})


def test_the_gateways_own_settings_have_documented_defaults() -> None:
    # Those both services share: test_common_settings.py.
    settings = GatewaySettings.from_env({**GATEWAY_REQUIRED, "MLSTACK_API_KEY": "dev-key"})
    assert settings.metrics_port == 9090
    assert settings.tls_files is None
    # With the breaker, what keeps a hung model's 503 within a second.
    assert settings.model_timeout_seconds == 0.5


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_number_setting_must_be_finite(value: str) -> None:
    with pytest.raises(SettingsError, match="MODEL_TIMEOUT_SECONDS must be a finite number"):
        GatewaySettings.from_env({**GATEWAY_REQUIRED, "MODEL_TIMEOUT_SECONDS": value})


def test_the_metrics_port_cannot_be_the_api_port() -> None:
    with pytest.raises(SettingsError, match="METRICS_PORT must differ from PORT"):
        GatewaySettings.from_env({**GATEWAY_REQUIRED, "PORT": "8080", "METRICS_PORT": "8080"})


def test_a_tls_pair_that_does_not_load_is_named(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("not a certificate\n")
    (tmp_path / "tls.key").write_text("not a key\n")
    with pytest.raises(SettingsError, match="do not load as a certificate chain"):
        GatewaySettings.from_env(
            {
                **GATEWAY_REQUIRED,
                "TLS_CERT_FILE": str(tmp_path / "tls.crt"),
                "TLS_KEY_FILE": str(tmp_path / "tls.key"),
            }
        )


def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"do not load.*No such file"):
        GatewaySettings.from_env(
            {
                **GATEWAY_REQUIRED,
                "TLS_CERT_FILE": str(tmp_path / "absent.crt"),
                "TLS_KEY_FILE": str(tmp_path / "absent.key"),
            }
        )


def test_the_standbys_url_is_read_from_its_file(tmp_path: Path) -> None:
    (tmp_path / "database-read-url").write_text("postgresql://u:p@database-read:5432/mlstack\n")
    settings = GatewaySettings.from_env(
        {
            **GATEWAY_REQUIRED,
            "DATABASE_URL": "postgresql://u:p@database:5432/mlstack",
            "DATABASE_READ_URL_FILE": str(tmp_path / "database-read-url"),
        }
    )
    assert settings.database_read_url == "postgresql://u:p@database-read:5432/mlstack"
    assert settings.database_read_max_lag_seconds == 5.0


def test_without_a_read_url_every_read_goes_to_the_primary() -> None:
    settings = GatewaySettings.from_env(
        {**GATEWAY_REQUIRED, "DATABASE_URL": "postgresql://u:p@database:5432/mlstack"}
    )
    assert settings.database_read_url is None


@pytest.mark.parametrize("name", ["DATABASE_READ_URL", "DATABASE_READ_URL_FILE"])
def test_a_read_url_needs_the_primary_url(tmp_path: Path, name: str) -> None:
    (tmp_path / "database-read-url").write_text("postgresql://u:p@database-read:5432/mlstack\n")
    value = {
        "DATABASE_READ_URL": "postgresql://u:p@database-read:5432/mlstack",
        "DATABASE_READ_URL_FILE": str(tmp_path / "database-read-url"),
    }[name]
    with pytest.raises(SettingsError, match=f"^{name} is set but DATABASE_URL is not"):
        GatewaySettings.from_env({**GATEWAY_REQUIRED, name: value})


def test_a_read_url_must_be_postgresql() -> None:
    with pytest.raises(SettingsError, match="DATABASE_READ_URL must give a postgresql:// URL"):
        GatewaySettings.from_env(
            {
                **GATEWAY_REQUIRED,
                "DATABASE_URL": "postgresql://u:p@database:5432/mlstack",
                "DATABASE_READ_URL": "mysql://u:p@database-read:3306/mlstack",
            }
        )


# Times that may be 0: the standby's lag bound (every read to the primary while it lags at all),
# and the look at a model call's acknowledgement (never).
FROM_0 = ("DATABASE_READ_MAX_LAG_SECONDS", "MODEL_ACK_TIMEOUT_SECONDS")


@pytest.mark.parametrize("name", FROM_0)
@pytest.mark.parametrize(
    ("value", "rule"),
    [("-0.5", r"must be >= 0\.0"), ("soon", "must be a number"), ("inf", "must be a finite")],
)
def test_a_time_from_0_is_a_number_of_seconds(name: str, value: str, rule: str) -> None:
    with pytest.raises(SettingsError, match=f"{name} {rule}"):
        GatewaySettings.from_env({**GATEWAY_REQUIRED, name: value})


@pytest.mark.parametrize("name", FROM_0)
def test_a_time_from_0_may_be_0(name: str) -> None:
    settings = GatewaySettings.from_env({**GATEWAY_REQUIRED, name: "0"})
    assert getattr(settings, name.lower()) == 0.0


def test_the_gateway_migrates_the_schema_unless_told_not_to() -> None:
    assert GatewaySettings.from_env(GATEWAY_REQUIRED).database_migrate is True
    for value, migrates in (("false", False), ("No", False), ("0", False), ("TRUE", True)):
        env = {**GATEWAY_REQUIRED, "DATABASE_MIGRATE": value}
        assert GatewaySettings.from_env(env).database_migrate is migrates


def test_a_migrate_setting_that_is_not_yes_or_no_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"^DATABASE_MIGRATE must be true or false, got 'nope'"):
        GatewaySettings.from_env({**GATEWAY_REQUIRED, "DATABASE_MIGRATE": "nope"})


def test_the_migrate_command_reads_the_url_as_the_gateway_does(tmp_path: Path) -> None:
    url = "postgresql://mlstack:a%2Fb%40c%3Ad%25e%2Bf%3Dg%3Fh%23i%27j%5Ck@database:5432/mlstack"
    (tmp_path / "database-url").write_text(url + "\n")
    settings = MigrateSettings.from_env({"DATABASE_URL_FILE": str(tmp_path / "database-url")})
    assert settings.database_url == url
    assert settings.timeout_seconds == 300.0


def test_the_migrate_command_needs_a_postgresql_url() -> None:
    with pytest.raises(SettingsError, match=r"^DATABASE_URL \(or DATABASE_URL_FILE\) must give"):
        MigrateSettings.from_env({})
    with pytest.raises(SettingsError, match=r"^DATABASE_URL has more than one '@'"):
        MigrateSettings.from_env({"DATABASE_URL": "postgresql://u:p@ss@database/mlstack"})


@pytest.mark.parametrize(
    ("value", "rule"), [("0.5", r"must be >= 1\.0"), ("long", "must be a number")]
)
def test_the_migrate_timeout_is_a_second_or_more(value: str, rule: str) -> None:
    with pytest.raises(SettingsError, match=f"DATABASE_MIGRATE_TIMEOUT_SECONDS {rule}"):
        MigrateSettings.from_env(
            {"DATABASE_URL": "postgresql://u@db/m", "DATABASE_MIGRATE_TIMEOUT_SECONDS": value}
        )


def test_the_certificate_is_read_again_every_30_s_by_default() -> None:
    assert GatewaySettings.from_env(GATEWAY_REQUIRED).tls_reload_seconds == 30.0


@pytest.mark.parametrize(
    ("value", "rule"), [("0", r"must be >= 0\.1"), ("often", "must be a number")]
)
def test_the_certificate_reload_interval_is_at_least_a_tenth_of_a_second(
    value: str, rule: str
) -> None:
    with pytest.raises(SettingsError, match=f"TLS_RELOAD_SECONDS {rule}"):
        GatewaySettings.from_env({**GATEWAY_REQUIRED, "TLS_RELOAD_SECONDS": value})


# A password as `openssl rand -base64` and friends make them, pasted into a URL unencoded; each
# piece of it is checked for in the error.
UNENCODED = {
    "a '/'": "Xk3v9/Qm7pLw2Rt8",
    "an '@'": "Xk3v9@Qm7pLw2Rt8",
    "a '?'": "Xk3v9?Qm7pLw2Rt8",
    "a '#'": "Xk3v9#Qm7pLw2Rt8",
    "digits, then a '/'": "73519/Qm7pLw2Rt8",
    "a stray '%'": "Xk3v9%Qm7pLw2Rt8",
    "a '['": "Xk3v9[Qm7pLw2Rt8",
}


@pytest.mark.parametrize("password", UNENCODED.values(), ids=UNENCODED.keys())
@pytest.mark.parametrize("name", ["DATABASE_URL", "DATABASE_READ_URL"])
def test_an_unencoded_password_is_refused_without_a_word_of_it(
    tmp_path: Path, name: str, password: str
) -> None:
    url = f"postgresql://mlstack:{password}@database:5432/mlstack"
    (tmp_path / "url").write_text(url)
    env = {
        **GATEWAY_REQUIRED,
        "DATABASE_URL": "postgresql://u:p@database:5432/mlstack",
        f"{name}_FILE": str(tmp_path / "url"),
    }
    with pytest.raises(SettingsError) as raised:
        GatewaySettings.from_env(env)
    message = str(raised.value)
    assert message.startswith(f"{name}_FILE has ")
    assert "percent-encode the user and password" in message
    for piece in ("Xk3v9", "73519", "Qm7pLw2Rt8", "database:5432"):
        assert piece not in message


def test_a_percent_encoded_password_of_any_characters_is_taken(tmp_path: Path) -> None:
    url = "postgresql://mlstack:a%2Fb%40c%3Ad%25e%2Bf%3Dg%3Fh%23i%27j%5Ck@database:5432/mlstack"
    settings = GatewaySettings.from_env({**GATEWAY_REQUIRED, "DATABASE_URL": url})
    assert settings.database_url == url


def test_a_port_that_is_not_a_number_is_named_not_quoted() -> None:
    with pytest.raises(SettingsError, match=r"^DATABASE_URL has a port that is not a number"):
        GatewaySettings.from_env(
            {**GATEWAY_REQUIRED, "DATABASE_URL": "postgresql://u:p@database:five/mlstack"}
        )


@pytest.mark.parametrize("variable", ["PORT", "METRICS_PORT"])
def test_a_port_beyond_65535_is_refused(variable: str) -> None:
    with pytest.raises(SettingsError, match=f"^{variable} must be <= 65535, got 70000$"):
        GatewaySettings.from_env({**GATEWAY_REQUIRED, variable: "70000"})
