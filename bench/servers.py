"""The servers under load, each a process of its own on 127.0.0.1, stopped by the runner."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import grpc

from components.app import MODEL_NAME
from harness.http import request
from harness.ports import LOOPBACK, free_port, free_ports
from harness.processes import LocalServer
from harness.program import ROOT
from harness.services import (
    GATEWAY_SRC,
    MODEL_SRC,
    NO_MODEL_URL,
    SETOSA,
    GatewayProcess,
    ModelProcess,
    import_path,
)

if TYPE_CHECKING:
    from harness.postgres import PostgresServer

MLSERVER_VENV: Final = ROOT / ".venv-mlserver"
API_KEY: Final = "bench-key"
# The gateway's settings for a store driven alone, with no model called (MODEL_URL is required).
STORE_ONLY: Final = {"MLSTACK_API_KEY": API_KEY, "MODEL_URL": NO_MODEL_URL}
# How long a server gets to answer as ready once started.
READY_SECONDS: Final = 120.0
# One SETOSA row as the gateway stores a request's instances (compact JSON).
_SETOSA_INSTANCES: Final = json.dumps([SETOSA], separators=(",", ":"))
# The two gateways under load: on SQLite, and on PostgreSQL.
GATEWAYS: Final = ("gateway-sqlite", "gateway-postgresql")
ServerT = TypeVar("ServerT", bound=LocalServer)


def http_call(
    method: str,
    url: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """One request on a fresh connection; the answer's status and JSON body (or None)."""
    reply = request(method, url, body, headers, timeout)
    try:
        return reply.status, reply.json()
    except ValueError:
        return reply.status, None


class GrpcOnlyServer(LocalServer):
    """A server with a gRPC side alone: ready once it accepts a connection."""

    def ready(self) -> bool:
        assert self.grpc_target is not None
        with grpc.insecure_channel(self.grpc_target) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=2)
                return True
            except grpc.FutureTimeoutError:
                return False


def _server(
    name: str,
    argv: Sequence[str],
    url: str,
    ready_path: str,
    *,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    grpc_target: str | None = None,
    kind: type[LocalServer] = LocalServer,
) -> LocalServer:
    """A server process, started, in a session of its own: stopping it reaches the workers
    uvicorn or MLServer fork."""
    server = kind(
        name,
        argv,
        log_dir / f"{name}.log",
        url,
        ready_path=ready_path,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        new_session=True,
        grpc_target=grpc_target,
    )
    return server.start()


def bench_path(src: Path) -> str:
    """The PYTHONPATH of a server from bench/ that imports the service in ``src``."""
    return os.pathsep.join((str(ROOT), *import_path(src)))


def start_model(model_dir: Path, log_dir: Path) -> ModelProcess:
    """The model server, started, not yet ready."""
    env = {"LOG_LEVEL": "warning"}
    return ModelProcess(model_dir, log_dir, env, name="model", new_session=True).start()


def start_gateway(
    name: str, model_url: str, log_dir: Path, src: Path = GATEWAY_SRC, **env: str
) -> GatewayProcess:
    """The gateway from the folder ``src``, started, not yet ready."""
    settings = {"MLSTACK_API_KEY": API_KEY, "LOG_LEVEL": "warning", **env}
    gateway = GatewayProcess(model_url, log_dir, settings, src=src, name=name, new_session=True)
    return gateway.start()


def _bare_asgi(name: str, app: str, log_dir: Path, env: dict[str, str]) -> LocalServer:
    """A bench-only ASGI app from bench/ under the same uvicorn settings as the model server."""
    port = free_port()
    return _server(
        name,
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            f"--host={LOOPBACK}",
            f"--port={port}",
            "--loop=uvloop",
            "--http=httptools",
            "--no-access-log",
            "--no-server-header",
            "--log-level=warning",
        ],
        f"http://{LOOPBACK}:{port}",
        "/",
        log_dir=log_dir,
        env=env,
        cwd=ROOT,
    )


def start_echo(log_dir: Path) -> LocalServer:
    """The ceiling: a bare ASGI app that answers with the request's body."""
    return _bare_asgi("echo", "bench.echo:app", log_dir, {"PYTHONPATH": bench_path(GATEWAY_SRC)})


def start_proxy(model_url: str, log_dir: Path) -> LocalServer:
    """The hop's floor: forwards to the model with the gateway's HTTP client, nothing else."""
    env = {"PROXY_MODEL_URL": model_url, "PYTHONPATH": bench_path(GATEWAY_SRC)}
    return _bare_asgi("proxy", "bench.proxy:app", log_dir, env)


def start_grpc_only(
    name: str, argv: Sequence[str], port: int, log_dir: Path, env: Mapping[str, str]
) -> LocalServer:
    """A gRPC server from bench/ that imports the model's code, serving on ``port``."""
    return _server(
        name,
        argv,
        "",
        "",
        log_dir=log_dir,
        env={"PYTHONPATH": bench_path(MODEL_SRC), **env},
        cwd=ROOT,
        grpc_target=f"{LOOPBACK}:{port}",
        kind=GrpcOnlyServer,
    )


def start_grpc_echo(log_dir: Path) -> LocalServer:
    """The gRPC ceiling: a bare grpc.aio server that answers every call with a fixed answer."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.grpc_echo", str(port), MODEL_NAME]
    return start_grpc_only("grpc-echo", argv, port, log_dir, {})


def write_mlserver_config(folder: Path, model_file: Path, version: str) -> tuple[int, int]:
    """MLServer's settings: its defaults, except where noted; returns its HTTP and gRPC ports."""
    http_port, grpc_port, metrics_port = free_ports(3)
    settings = {
        "host": LOOPBACK,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        # MLServer 1.7.1's default (one parallel inference worker process) does not start with
        # the uvloop it installs: the worker calls asyncio.get_event_loop() in a fresh process
        # and uvloop raises "There is no current event loop". Inference in the server process
        # itself is also MLServer's fastest set-up for a model this small (no IPC per request).
        "parallel_workers": 0,
        # debug (the default) logs every request; our servers log none by default.
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    model_folder = folder / MODEL_NAME
    model_folder.mkdir(parents=True, exist_ok=True)
    model_settings = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(model_file), "version": version},
    }
    (model_folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2) + "\n")
    return http_port, grpc_port


def start_mlserver(folder: Path, ports: tuple[int, int], log_dir: Path) -> LocalServer:
    http_port, grpc_port = ports
    mlserver = MLSERVER_VENV / "bin" / "mlserver"
    if not mlserver.exists():
        raise RuntimeError(f"{mlserver} missing: `make bench` installs it")
    return _server(
        "mlserver",
        [str(mlserver), "start", str(folder)],
        f"http://{LOOPBACK}:{http_port}",
        f"/v2/models/{MODEL_NAME}/ready",
        log_dir=log_dir,
        cwd=folder,
        grpc_target=f"{LOOPBACK}:{grpc_port}",
    )


def setosa_prediction(request_id: str) -> tuple[str, str, str, str, str, float]:
    """The fields of the PredictionRecord the gateway stores for one SETOSA row answered class 0
    by the model's v2 in 1 ms: what the benchmarks of the stores alone save."""
    return (request_id, MODEL_NAME, "v2", _SETOSA_INSTANCES, "[0]", 1.0)


def check_stored(gateway: GatewayProcess, acknowledged: int) -> str:
    """Every prediction ``gateway`` answered 200 has its row: its database (the one its settings
    name: PostgreSQL, else its SQLite file) holds at least ``acknowledged`` rows. Warm-up
    requests add rows that no count of 200s includes. Raises RuntimeError if rows are missing;
    returns the check as the report states it."""
    from mlstack_gateway.settings import GatewaySettings

    settings = GatewaySettings.from_env(gateway.env)
    count = "SELECT count(*) FROM predictions"
    if settings.database_url:
        from harness.postgres import query

        stored = int(query(settings.database_url, count)[0][0])
    else:
        with closing(sqlite3.connect(settings.sqlite_path)) as db:
            stored = int(db.execute(count).fetchone()[0])
    if stored < acknowledged:
        raise RuntimeError(
            f"{gateway.name}: {acknowledged} predictions answered 200, only {stored} rows "
            "in its database"
        )
    return (
        f"{gateway.name}: {stored} rows stored for {acknowledged} measured 200s (plus warm-up): "
        "no acknowledged prediction missing"
    )


@contextmanager
def started(server: ServerT) -> Iterator[ServerT]:
    """``server``, ready; stopped on leaving."""
    try:
        yield server.wait_ready(READY_SECONDS)
    finally:
        server.stop()


def export_model(model_dir: Path, target: Path) -> str:
    """Train (as the model service does on first start) and export the served version's
    estimator as the joblib file MLServer's scikit-learn runtime loads; returns the version."""
    import joblib
    from mlstack_model import artifacts, train

    train.train_all(model_dir, [MODEL_NAME])
    version = artifacts.available_versions(model_dir, MODEL_NAME)[-1]
    artifact = artifacts.load(model_dir, MODEL_NAME, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(artifact.estimator, target)
    return version


def running(servers: Mapping[str, LocalServer | None]) -> dict[str, LocalServer]:
    """`servers` without those not started (None)."""
    return {name: server for name, server in servers.items() if server is not None}


@dataclass(frozen=True)
class Fleet:
    """The servers under load, each ready (``start_fleet``)."""

    postgres: PostgresServer
    # The version the model serves (MLServer, its export).
    model_version: str
    model: ModelProcess
    mlserver: LocalServer | None
    echo: LocalServer
    grpc_echo: LocalServer
    proxy: LocalServer
    # By name: GATEWAYS.
    gateways: dict[str, GatewayProcess]

    @property
    def dsn(self) -> str:
        """The PostgreSQL gateway's database."""
        _, postgresql = GATEWAYS
        return self.gateways[postgresql].env["DATABASE_URL"]

    @property
    def sqlite_dir(self) -> Path:
        """The SQLite gateway's DATA_DIR."""
        sqlite, _ = GATEWAYS
        return Path(self.gateways[sqlite].env["DATA_DIR"])

    @property
    def rest(self) -> dict[str, LocalServer]:
        """The server of each HTTP target, by the target's name."""
        return running(
            {
                "model": self.model,
                "mlserver": self.mlserver,
                "echo": self.echo,
                "proxy": self.proxy,
                **self.gateways,
            }
        )

    @property
    def grpc(self) -> dict[str, LocalServer]:
        """The server of each gRPC target, by the target's name (the model's and MLServer's
        processes serve REST and gRPC)."""
        return running(
            {"model-grpc": self.model, "mlserver-grpc": self.mlserver, "grpc-echo": self.grpc_echo}
        )

    @property
    def processes(self) -> dict[str, LocalServer]:
        """Every server, by its own name (``model``, ``grpc-echo``, ...)."""
        return {server.name: server for server in (*self.rest.values(), self.grpc_echo)}

    @property
    def urls(self) -> dict[str, str]:
        return {name: server.url for name, server in self.rest.items()}

    @property
    def grpc_targets(self) -> dict[str, str]:
        return {name: str(server.grpc_target) for name, server in self.grpc.items()}


def start_fleet(stack: ExitStack, work: Path, *, mlserver: bool = True) -> Fleet:
    """PostgreSQL with a ``bench`` database, the model trained (and exported for MLServer), and
    the servers under load: the model, MLServer (unless ``mlserver`` is false), the echo, the
    gRPC echo, the proxy and both gateways, each ready, one after the other; all stopped when
    ``stack`` closes. Their files go under ``work``, their logs in ``work``/logs."""
    from harness.postgres import running_postgres

    postgres = stack.enter_context(running_postgres())
    dsn = postgres.create_database("bench")
    model_dir = work / "models"
    model_file = work / "mlserver" / MODEL_NAME / "model.joblib"
    version = export_model(model_dir, model_file)
    logs = work / "logs"
    logs.mkdir()
    sqlite_dir = work / "gateway-sqlite"

    model = stack.enter_context(started(start_model(model_dir, logs)))
    mlserver_process = None
    if mlserver:
        ports = write_mlserver_config(work / "mlserver", model_file, version)
        mlserver_process = stack.enter_context(
            started(start_mlserver(work / "mlserver", ports, logs))
        )
    echo = stack.enter_context(started(start_echo(logs)))
    grpc_echo = stack.enter_context(started(start_grpc_echo(logs)))
    proxy = stack.enter_context(started(start_proxy(model.url, logs)))
    sqlite, postgresql = GATEWAYS
    gateways = {
        sqlite: stack.enter_context(
            started(start_gateway(sqlite, model.url, logs, DATA_DIR=str(sqlite_dir)))
        ),
        postgresql: stack.enter_context(
            started(start_gateway(postgresql, model.url, logs, DATABASE_URL=dsn))
        ),
    }
    return Fleet(postgres, version, model, mlserver_process, echo, grpc_echo, proxy, gateways)
