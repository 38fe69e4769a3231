"""Fixtures: the services as real processes on 127.0.0.1 free ports, and a real PostgreSQL."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.app import MODEL_NAME
from harness.postgres import PostgresServer
from harness.services import (
    GATEWAY_SRC,
    MODEL_SRC,
    ModelProcess,
    ServiceProcess,
    import_service,
    start_gateway,
    start_model,
)
from tests.services.support import (
    SERVICES,
    Server,
    serve,
    slow_model_server,
    throwaway_postgres,
)

# The services are top-level packages in their own folders (as in their images).
import_service(MODEL_SRC)
import_service(GATEWAY_SRC)


@pytest.fixture(scope="session", autouse=True)
def system_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The system temp folder (TMPDIR) of every process the tests start: one of the session's
    own, so that a service given no folder of its own writes nothing into the machine's (the
    gateway without DATA_DIR writes its SQLite file to `mlstack` there), and the session fails
    when a test left anything of the project's (named mlstack...) in it; what other programs
    keep there is theirs. This process keeps its own temp folder: the PostgreSQL servers made
    there must stay reachable to their unprivileged user."""
    folder = tmp_path_factory.mktemp("system-tmp")
    # tempfile reads TMPDIR once and keeps what it found: read here, before it changes.
    tempfile.gettempdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(folder))
        yield folder
    left = sorted(path.name for path in folder.glob("mlstack*"))
    assert not left, (
        f"a test left {left} in the system temp folder of the processes it started ({folder}): "
        "give the service a folder of its own (the gateway's DATA_DIR; harness.services gives "
        "one in the log folder it is passed)"
    )


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlstack_model import train

    directory = tmp_path_factory.mktemp("models")
    train.train_all(directory, [MODEL_NAME])
    return directory


@pytest.fixture(scope="session")
def model_server(model_dir: Path, log_dir: Path) -> Iterator[ModelProcess]:
    """The model server with its default version (the newest)."""
    service = start_model(model_dir, log_dir)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def model_v1(model_dir: Path, log_dir: Path) -> Iterator[ModelProcess]:
    """The model server serving version v1, not the newest (MODEL_VERSION)."""
    service = start_model(model_dir, log_dir, MODEL_VERSION="v1")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with throwaway_postgres() as server:
        yield server


@pytest.fixture(scope="module", params=SERVICES)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """Each service with its defaults, of the module's own: every test using it runs on both
    (or on those a test's ``indirect`` parameters name)."""
    yield from serve(request)


@pytest.fixture(scope="module")
def gateway_sqlite(model_server: ServiceProcess, log_dir: Path) -> Iterator[ServiceProcess]:
    service = start_gateway(model_server.url, log_dir)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def gateway_postgres(
    model_server: ServiceProcess, postgres: PostgresServer, log_dir: Path
) -> Iterator[ServiceProcess]:
    dsn = postgres.create_database("gateway_module")
    service = start_gateway(model_server.url, log_dir, DATABASE_URL=dsn)
    yield service
    service.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gateway(
    request: pytest.FixtureRequest, model_server: ServiceProcess, log_dir: Path
) -> Iterator[ServiceProcess]:
    """A gateway in each database mode: every test using it runs twice."""
    if request.param == "sqlite":
        service = start_gateway(model_server.url, log_dir)
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        dsn = postgres.create_database(f"gateway_{request.module.__name__.split('.')[-1]}")
        service = start_gateway(model_server.url, log_dir, DATABASE_URL=dsn)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def primary_dsn(request: pytest.FixtureRequest, postgres: PostgresServer) -> str:
    """The module's own database (named by its DATABASE) on the session's PostgreSQL."""
    return postgres.create_database(request.module.DATABASE)


@pytest.fixture(scope="module")
def standby(postgres: PostgresServer, primary_dsn: str) -> Iterator[PostgresServer]:
    """A streaming standby of the session's PostgreSQL, the module's own, made once the module's
    database is there (so that it holds it)."""
    server = postgres.standby()
    yield server
    server.destroy()


@pytest.fixture
def slow_model() -> Iterator[str]:
    """The URL of a model server that takes a second over each inference."""
    with slow_model_server() as url:
        yield url
