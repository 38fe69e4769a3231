"""The gateway with a real PostgreSQL whose role's password holds every character a URL gives a
meaning to: in the URL the program renders (components.database.connection_url), the password
works; pasted in as it is, the gateway stops at once with a settings error that names the
variable and quotes no part of the URL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from harness.postgres import PostgresServer
from harness.services import ServiceProcess, start_gateway
from tests.services.support import new_prediction, password_role_url, stored

ROLE = "gateway_password"
PASSWORD = "Xk3v/Qm7p@Lw2R:t8Zy%4aHs+Ab9C=dEf1?Gh2J#Kl3M'Np4Q\\Rs5T"


@pytest.fixture(scope="module")
def role_url(postgres: PostgresServer) -> str:
    return password_role_url(postgres, ROLE, PASSWORD)


def test_the_role_needs_its_password(postgres: PostgresServer, role_url: str) -> None:
    without_password = f"postgresql://{ROLE}@127.0.0.1:{postgres.port}/{ROLE}"
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(asyncpg.connect(without_password))


def test_the_gateway_stores_a_prediction_with_that_password(
    model_server: ServiceProcess, postgres: PostgresServer, role_url: str, log_dir: Path
) -> None:
    # As in a pod: the URL from a file the Secret mounts.
    url_file = log_dir / "password-database-url"
    url_file.write_text(role_url)
    gateway = start_gateway(model_server.url, log_dir, DATABASE_URL_FILE=str(url_file))
    try:
        request_id = new_prediction(gateway)
    finally:
        gateway.stop()
    assert stored(postgres.dsn(ROLE), [request_id]) == 1


def test_an_unencoded_password_stops_the_gateway_without_logging_it(
    model_server: ServiceProcess, postgres: PostgresServer, log_dir: Path
) -> None:
    pasted = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{postgres.port}/{ROLE}"
    gateway = start_gateway(model_server.url, log_dir, wait=None, DATABASE_URL=pasted)
    assert gateway.wait_for_exit() == 2
    log = gateway.log_path.read_text()
    assert "mlstack gateway: DATABASE_URL has " in log
    pieces = {PASSWORD[start : start + 4] for start in range(len(PASSWORD) - 3)}
    assert not [piece for piece in pieces if piece in log]
