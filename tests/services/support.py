"""Helpers for the service tests, beside harness.services (the services as real processes on
127.0.0.1): either service by name, started or refused at start, `make serve` as a user runs it,
servers that stall, the gateway's predictions, history and metrics, rows written straight to its
database, requests over HTTPS (to a gateway serving tests.certificates' certificates)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from components import database
from components.app import MODEL_NAME
from harness.http import Reply, request
from harness.make import make_command, make_env
from harness.metrics import metric_value
from harness.poll import eventually
from harness.ports import LOOPBACK, free_ports
from harness.postgres import PostgresServer, postgres_bindir, query, running_postgres
from harness.processes import LocalServer, group_alive
from harness.program import ROOT
from harness.services import (
    API_KEY,
    NO_MODEL_URL,
    SETOSA,
    GatewayProcess,
    ModelProcess,
    ServiceProcess,
    own_log,
    start_and_wait,
)
from tests.services.hostile import INFER, PREDICT, Post, error_message
from tests.services.oip import INPUT

if TYPE_CHECKING:
    from mlstack_gateway.stores.base import PredictionRecord

# The two services, by the names ``service_process`` and the fixtures that start either take.
SERVICES: Final = ("gateway", "model")
# The settings the gateway cannot start without, for tests that read its settings in-process
# and never call a model.
GATEWAY_REQUIRED: Final = {"MLSTACK_API_KEY": API_KEY, "MODEL_URL": NO_MODEL_URL}


@dataclass(frozen=True)
class Server:
    """A running service and the POST it reads a body for."""

    process: ServiceProcess
    post: Post

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def probe_path(self) -> str:
        """A cheap GET it answers 200: its liveness."""
        return self.process.live_path


def service_process(request: pytest.FixtureRequest, service: str, **env: str) -> ServiceProcess:
    """The service named ``service`` (one of ``SERVICES``) with ``env`` over the tests'
    settings, not started: the gateway in front of the session's model server."""
    log_dir: Path = request.getfixturevalue("log_dir")
    if service == "gateway":
        model_server: ModelProcess = request.getfixturevalue("model_server")
        return GatewayProcess(model_server.url, log_dir, env)
    return ModelProcess(request.getfixturevalue("model_dir"), log_dir, env)


def serve(request: pytest.FixtureRequest, **env: str) -> Iterator[Server]:
    """For a fixture parametrized over ``SERVICES``: that service with ``env``, started and
    ready; stopped after."""
    service: str = request.param
    process = start_and_wait(service_process(request, service, **env), "ready")
    try:
        yield Server(process, PREDICT if service == "gateway" else INFER)
    finally:
        process.stop()


def refused_at_start(service: ServiceProcess) -> str:
    """Start ``service``, which must refuse its settings: it exits with status 2. Its log's
    tail, where it says why."""
    service.start()
    assert service.wait_for_exit(30) == 2
    return service.log_tail()


def sqlite_file(data_dir: Path) -> Path:
    """The SQLite database of a gateway whose DATA_DIR is ``data_dir``."""
    # Imported here: this module is imported before conftest puts the services on the path.
    from mlstack_gateway.settings import GatewaySettings

    settings = GatewaySettings.from_env({**GATEWAY_REQUIRED, "DATA_DIR": str(data_dir)})
    return settings.sqlite_path


def prediction_record() -> PredictionRecord:
    """A new prediction of SETOSA, as the gateway hands it to its store."""
    # Imported here, as in sqlite_file.
    from mlstack_gateway.ids import new_request_id
    from mlstack_gateway.stores.base import PredictionRecord

    instances = json.dumps([SETOSA], separators=(",", ":"))
    return PredictionRecord(new_request_id(), MODEL_NAME, "v2", instances, "[0]", 1.0)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of the test's own (harness.postgres). Without the server's packages the test
    fails with how to install them, not a traceback."""
    try:
        postgres_bindir()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    with running_postgres() as server:
        yield server


# Backends whose commit waits for a synchronous standby (pg_stat_activity.wait_event).
WAITING_FOR_STANDBY: Final = "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'"


@contextlib.contextmanager
def synchronous_pair() -> Iterator[tuple[str, PostgresServer]]:
    """A throwaway primary whose commits return once its standby has replayed them
    (remote_apply, so that a paused replay holds them), and that standby: the primary's URL."""
    with throwaway_postgres() as primary:
        dsn = primary.dsn()
        standby = primary.standby()
        try:
            query(dsn, "ALTER SYSTEM SET synchronous_standby_names = '*'")
            query(dsn, "ALTER DATABASE postgres SET synchronous_commit = 'remote_apply'")
            query(dsn, "SELECT pg_reload_conf()")
            yield dsn, standby
        finally:
            standby.destroy()


def password_role_url(postgres: PostgresServer, role: str, password: str) -> str:
    """A login role of the test's own on ``postgres`` that needs ``password``, owning a database
    named after it: its URL, as the program writes the gateway's (database.connection_url)."""
    postgres.create_password_role(role, password)
    return database.connection_url(
        "127.0.0.1", password, port=postgres.port, user=role, dbname=role
    )


def serves_https(service: ServiceProcess, ca: Path) -> bool:
    """Whether a new connection's handshake verifies against `ca` and /readyz answers 200."""
    with contextlib.suppress(OSError):
        return https(service.port, ca, "GET", "/readyz")[0] == 200
    return False


def https(port: int, ca: Path, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    """One request over HTTPS to 127.0.0.1:`port`, trusting only the certificate `ca`."""
    data = None if body is None else json.dumps(body)
    reply = request(method, f"https://{LOOPBACK}:{port}{path}", data, {"X-API-Key": API_KEY}, ca=ca)
    return reply.status, reply.body


def predict(
    gateway_url: str, instances: Any, key: str | None = API_KEY, timeout: float = 10.0
) -> Reply:
    headers = {"X-API-Key": key} if key is not None else {}
    body = {"instances": instances}
    return request("POST", f"{gateway_url}/api/v1/predict", body, headers, timeout)


def stored(dsn: str, request_ids: list[str]) -> int:
    """How many of ``request_ids`` the predictions table of the database at ``dsn`` holds."""
    sql = "SELECT count(*) FROM predictions WHERE request_id = ANY($1::uuid[])"
    return int(query(dsn, sql, request_ids)[0][0])


def new_prediction(gateway: ServiceProcess) -> str:
    """The request id of a new prediction of SETOSA, which the gateway must answer 200."""
    reply = predict(gateway.url, [SETOSA])
    assert reply.status == 200, reply.body
    request_id: str = reply.json()["request_id"]
    return request_id


class MakeServe(LocalServer):
    """`make serve` as a user runs it: from the repository root, in a process group of its own
    as a terminal's foreground job, on free ports given as the target's make variables. ``url``
    is the gateway, ``model_url`` the model's REST port."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        names = [
            "SERVE_GATEWAY_PORT",
            "SERVE_GATEWAY_METRICS_PORT",
            "SERVE_MODEL_PORT",
            "SERVE_MODEL_GRPC_PORT",
        ]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        gateway_port = self.ports["SERVE_GATEWAY_PORT"]
        super().__init__(
            "make-serve",
            make_command("serve", *self.variables),
            own_log(log_dir, "make-serve", gateway_port),
            f"http://{LOOPBACK}:{gateway_port}",
            ready_path="/readyz",
            # A user's shell: nothing of this process's import path, settings or outer make.
            env={**make_env("PYTHONPATH", "HOST", "PORT"), **env},
            cwd=ROOT,
            new_session=True,
        )
        self.model_url = f"http://{LOOPBACK}:{self.ports['SERVE_MODEL_PORT']}"

    @property
    def variables(self) -> list[str]:
        """The make variables this run is given (``NAME=value``), for other targets to match."""
        return [f"{name}={port}" for name, port in self.ports.items()]

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the whole foreground process group, as a terminal sends it."""
        os.killpg(self.pid, signal.SIGINT)

    def group_alive(self) -> bool:
        """Whether any process of the group (make, its shell, either service) is left."""
        return group_alive(self.pid)


class _SlowModelHandler(BaseHTTPRequestHandler):
    """Answers like the model server, but takes a second over each inference."""

    delay = 1.0

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _json(self, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == f"/v2/models/{MODEL_NAME}":
            self._json({"name": MODEL_NAME, "inputs": [{"name": INPUT, "shape": [-1, 4]}]})
        else:
            self._json({"ready": True})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        rows = body["inputs"][0]["shape"][0]
        time.sleep(self.delay)
        self._json(
            {
                "model_name": MODEL_NAME,
                "model_version": "slow",
                "id": body["id"],
                "outputs": [
                    {"name": "predict", "shape": [rows], "datatype": "INT64", "data": [1] * rows}
                ],
            }
        )


@contextlib.contextmanager
def slow_model_server() -> Iterator[str]:
    """A model server on a thread that takes a second over each inference; yields its URL."""
    server = ThreadingHTTPServer((LOOPBACK, 0), _SlowModelHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A socket on 127.0.0.1 that accepts connections and never answers (a hung server, as its
    clients see it); yields its URL."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind((LOOPBACK, 0))
        silent.listen(64)
        yield f"http://{LOOPBACK}:{silent.getsockname()[1]}"


def error_of(reply: Reply) -> str:
    """The message of an error answer, whose body must hold nothing else."""
    return error_message(reply.body)


def history(gateway: ServiceProcess, query: str = "", key: str = API_KEY) -> Reply:
    """GET /api/v1/predictions`query` (a query string, "?limit=5" say), with API key `key`."""
    return request("GET", f"{gateway.url}/api/v1/predictions{query}", headers={"X-API-Key": key})


def listed_page(gateway: ServiceProcess, query: str) -> tuple[list[str], str | None]:
    """The request ids one GET /api/v1/predictions`query` lists, newest first, and its
    next_cursor; the read must answer 200."""
    reply = history(gateway, query)
    assert reply.status == 200, reply.body
    body = reply.json()
    return [item["request_id"] for item in body["items"]], body["next_cursor"]


def listed(gateway: ServiceProcess, query: str = "?limit=5") -> list[str]:
    """The request ids GET /api/v1/predictions`query` lists, newest first (listed_page's)."""
    return listed_page(gateway, query)[0]


def read_until_listed(
    gateway: ServiceProcess, request_id: str, counter: str, **labels: str
) -> None:
    """Reads the history until one read that ``counter`` counts lists ``request_id`` (the test
    must be the gateway's only client, so that a count that rises by one is that read)."""

    def counted_read_lists_it() -> bool:
        before = metric(gateway, counter, **labels)
        ids = listed(gateway)
        return metric(gateway, counter, **labels) == before + 1 and request_id in ids

    eventually(
        counted_read_lists_it,
        f"a read counted in {counter}{labels} lists {request_id}",
        30,
        interval=0.05,
    )


def fill_with_copies(database: dict[str, str], copies: int) -> None:
    """``copies`` more rows like the newest one, written straight to the database."""
    if "DATABASE_URL" in database:
        query(
            database["DATABASE_URL"],
            """
            INSERT INTO predictions
                (request_id, model_name, model_version, instances, predictions, latency_ms)
            SELECT gen_random_uuid(), model_name, model_version, instances, predictions, latency_ms
            FROM (SELECT * FROM predictions ORDER BY id DESC LIMIT 1) AS newest,
                 generate_series(1, $1)
            """,
            copies,
        )
        return
    with sqlite3.connect(sqlite_file(Path(database["DATA_DIR"]))) as conn:
        newest = conn.execute(
            "SELECT model_name, model_version, instances, predictions, latency_ms "
            "FROM predictions ORDER BY id DESC LIMIT 1"
        ).fetchone()
        conn.executemany(
            "INSERT INTO predictions (request_id, model_name, model_version, instances, "
            "predictions, latency_ms) VALUES (?, ?, ?, ?, ?, ?)",
            ((str(uuid.uuid4()), *newest) for _ in range(copies)),
        )


def metric(service: ServiceProcess, name: str, **labels: str) -> float:
    """One sample of the service's /metrics (NaN included), 0 when the series is absent."""
    assert service.metrics_url is not None
    reply = request("GET", service.metrics_url + "/metrics")
    assert reply.status == 200, reply.body
    value = metric_value(reply.body.decode(), name, **labels)
    return 0.0 if value is None else value


class FreezableProxy:
    """A TCP proxy on 127.0.0.1 in front of a local port. While frozen it holds every byte, in
    both directions, without closing anything: a hung server or a network that drops packets,
    as the clients see it."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection((LOOPBACK, self._target_port))
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        # One side closed: close the other, which ends the opposite pump too.
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
