"""Gateway settings: secrets from files (as Kubernetes mounts them) or from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlstack_gateway.settings import GatewaySettings, SettingsError


def test_secrets_are_read_from_the_files_kubernetes_mounts(tmp_path: Path) -> None:
    (tmp_path / "api-key").write_text("key-from-file\n")
    (tmp_path / "database-url").write_text("postgresql://u:p@database:5432/mlstack\n")
    settings = GatewaySettings.from_env(
        {
            "MLSTACK_API_KEY": "ignored-when-a-file-is-given",
            "MLSTACK_API_KEY_FILE": str(tmp_path / "api-key"),
            "DATABASE_URL_FILE": str(tmp_path / "database-url"),
        }
    )
    assert settings.api_key == "key-from-file"
    assert settings.database_url == "postgresql://u:p@database:5432/mlstack"


def test_secrets_from_the_environment_when_no_file_is_named() -> None:
    settings = GatewaySettings.from_env({"MLSTACK_API_KEY": "dev-key"})
    assert settings.api_key == "dev-key"
    assert settings.database_url is None


def test_an_unreadable_secret_file_is_named_in_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(SettingsError, match=f"MLSTACK_API_KEY_FILE={missing} cannot be read"):
        GatewaySettings.from_env({"MLSTACK_API_KEY_FILE": str(missing)})


def test_a_missing_key_stops_the_gateway() -> None:
    with pytest.raises(SettingsError, match="MLSTACK_API_KEY"):
        GatewaySettings.from_env({})
