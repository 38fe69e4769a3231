"""Helpers for the service tests: real processes on 127.0.0.1, a real PostgreSQL, plain HTTP and
HTTPS from certificates the openssl CLI makes."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from glob import glob
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
MODEL_SRC = ROOT / "services" / "model"
GATEWAY_SRC = ROOT / "services" / "gateway"
# The code both services share; on each one's path, as in their images.
COMMON_SRC = ROOT / "services" / "common"
API_KEY = "test-key"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    method: str,
    url: str,
    body: bytes | str | dict[str, Any] | list[Any] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One HTTP/1.1 request on a fresh connection (no client-side pooling to hide anything)."""
    assert url.startswith("http://")
    host_port, _, path = url[len("http://") :].partition("/")
    host, _, port = host_port.partition(":")
    if isinstance(body, dict | list):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, "/" + path, body=body, headers=all_headers)
        response = conn.getresponse()
        return Reply(response.status, response.read(), dict(response.getheaders()))
    finally:
        conn.close()


def self_signed_certificate(folder: Path, name: str = "mlstack-gateway-test") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (common name `name`) and its key, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", f"/CN={name}",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def serves_https(service: ServiceProcess, ca: Path) -> bool:
    """Whether a new connection's handshake verifies against `ca` and /readyz answers 200."""
    with contextlib.suppress(OSError):
        return https(port_of(service.url), ca, "GET", "/readyz")[0] == 200
    return False


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def https(port: int, ca: Path, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    """One request over HTTPS to 127.0.0.1:`port`, trusting only the certificate `ca`."""
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(
            method,
            path,
            body=data,
            headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def predict(gateway_url: str, instances: Any, key: str | None = API_KEY) -> Reply:
    headers = {"X-API-Key": key} if key is not None else {}
    return request("POST", f"{gateway_url}/api/v1/predict", {"instances": instances}, headers)


class ServiceProcess:
    """A service started as ``python -m <module>`` with the given environment."""

    def __init__(
        self, module: str, src: Path, env: Mapping[str, str], port: int, log_dir: Path
    ) -> None:
        self.module = module
        self.src = src
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join((str(src), str(COMMON_SRC))),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            **env,
        }
        self.log_path = log_dir / f"{module}-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        # Where the service serves /metrics, when on a port of its own.
        self.metrics_url: str | None = None

    def start(self) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            cwd=self.src,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def wait_until(self, path: str, timeout: float = 60.0, status: int = 200) -> None:
        def answers() -> bool:
            try:
                return request("GET", self.url + path, timeout=2).status == status
            except OSError:
                return False

        self.wait_for(f"answering {path}", answers, timeout)

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
        """Poll `check` until it holds; RuntimeError with the log if the process exits first
        or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.module} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if check():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.module} not {what} in {timeout}s:\n{self.log_tail()}")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=25)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


class ModelProcess(ServiceProcess):
    """The model server: REST on ``url``, gRPC on ``grpc_target``."""

    def __init__(
        self, model_dir: Path, log_dir: Path, port: int, grpc_port: int, env: Mapping[str, str]
    ) -> None:
        settings = {"MODEL_DIR": str(model_dir), "GRPC_PORT": str(grpc_port), **env}
        super().__init__("mlstack_model", MODEL_SRC, settings, port, log_dir)
        self.grpc_port = grpc_port
        self.grpc_target = f"127.0.0.1:{grpc_port}"


def start_model(
    model_dir: Path, log_dir: Path, port: int | None = None, **env: str
) -> ModelProcess:
    service = ModelProcess(model_dir, log_dir, port or free_port(), free_port(), env)
    service.start().wait_until("/v2/health/ready")
    return service


def start_gateway(model_url: str, log_dir: Path, wait: bool = True, **env: str) -> ServiceProcess:
    settings = {
        "MODEL_URL": model_url,
        "MLSTACK_API_KEY": API_KEY,
        "METRICS_PORT": str(free_port()),
        **env,
    }
    if "DATABASE_URL" not in settings and "DATA_DIR" not in settings:
        settings["DATA_DIR"] = tempfile.mkdtemp(prefix="gateway-", dir=log_dir)
    service = ServiceProcess("mlstack_gateway", GATEWAY_SRC, settings, free_port(), log_dir)
    service.metrics_url = f"http://127.0.0.1:{settings['METRICS_PORT']}"
    service.start()
    if wait:
        service.wait_until("/readyz")
    return service


class MakeServe(ServiceProcess):
    """`make serve` as a user runs it: from the repository root, in a process group of its own
    as a terminal's foreground job, on free ports given as the target's make variables. ``url``
    is the gateway, ``model_url`` the model's REST port."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        self.ports = {
            "SERVE_GATEWAY_PORT": free_port(),
            "SERVE_GATEWAY_METRICS_PORT": free_port(),
            "SERVE_MODEL_PORT": free_port(),
            "SERVE_MODEL_GRPC_PORT": free_port(),
        }
        super().__init__("make-serve", ROOT, {}, self.ports["SERVE_GATEWAY_PORT"], log_dir)
        # A user's shell: nothing of this process's import path, settings or outer make.
        inherited = ("PYTHONPATH", "HOST", "PORT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
        self.env = {
            **{name: value for name, value in os.environ.items() if name not in inherited},
            **env,
        }
        self.model_url = f"http://127.0.0.1:{self.ports['SERVE_MODEL_PORT']}"

    def start(self) -> MakeServe:
        variables = [f"{name}={port}" for name, port in self.ports.items()]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            # -o: never reinstall the shared virtual environment from inside the tests.
            ["make", "--no-print-directory", "-o", ".venv/.installed", "serve", *variables],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the whole foreground process group, as a terminal sends it."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)

    def group_alive(self) -> bool:
        """Whether any process of the group (make, its shell, either service) is left."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
            deadline = time.monotonic() + 25
            while self.group_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


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
        if self.path == "/v2/models/iris":
            self._json({"name": "iris", "inputs": [{"name": "input-0", "shape": [-1, 4]}]})
        else:
            self._json({"ready": True})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        rows = body["inputs"][0]["shape"][0]
        time.sleep(self.delay)
        self._json(
            {
                "model_name": "iris",
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
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowModelHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def postgres_bindir() -> Path:
    """Where Debian's PostgreSQL server binaries are (initdb, pg_ctl, postgres)."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    candidates.extend(Path(p) for p in reversed(versions))
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in `pg_config --bindir` or "
        "/usr/lib/postgresql/*/bin: install them with `apt-get install -y postgresql`"
    )


class PostgresServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1, run as an unprivileged user under root."""

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="mlstack-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "socket"
        self.log = self.base / "postgres.log"
        self.socket_dir.mkdir()
        self._runas: list[str] = []
        if os.geteuid() == 0:
            # initdb and postgres refuse to run as root.
            user = _unprivileged_user()
            entry = pwd.getpwnam(user)
            for path in (self.base, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            self._runas = ["runuser", "-u", user, "--"]

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self._runas, *args], capture_output=True, text=True, check=False, timeout=120
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}{log}")

    def init(self) -> PostgresServer:
        self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.data),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )  # fmt: skip
        return self

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.socket_dir}"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D", str(self.data),
            "-l", str(self.log),
            "-o", options,
            "-w", "-t", "60",
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL the postmaster, as when the node loses the pod: each backend notices, tells
        its client "terminating connection due to unexpected postmaster exit" and exits. Returns
        once they all have, so that start() (crash recovery from WAL, same port and data
        directory) does not find the shared memory still in use."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        # pg_ctl starts the postmaster in a session of its own: its children share its group.
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL backends still running {timeout}s after SIGKILL")
            time.sleep(0.05)

    def reload(self) -> None:
        """Make the server read its configuration files again (postgresql.auto.conf included)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "reload")

    def standby(self) -> PostgresServer:
        """A hot standby of this running server, started: a base backup of it that streams its
        WAL from it over 127.0.0.1 (initdb's defaults allow it: wal_level replica, 10 WAL
        senders, trusted replication connections from 127.0.0.1)."""
        standby = PostgresServer()
        # -R: standby.signal and primary_conninfo, so the copy starts as this server's standby.
        standby._run(
            str(self.bindir / "pg_basebackup"),
            "-D", str(standby.data),
            "-h", "127.0.0.1",
            "-p", str(self.port),
            "-U", "postgres",
            "-R",
            "--checkpoint=fast",
            "--no-sync",
        )  # fmt: skip
        standby.start()
        return standby

    def create_database(self, name: str) -> str:
        async def create() -> None:
            conn = await asyncpg.connect(self.dsn())
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return self.dsn(name)

    def create_password_role(self, role: str, password: str) -> None:
        """A login role that connects over TCP with `password` only (the rest of the server
        trusts 127.0.0.1), and a database it owns named after it."""

        async def create() -> None:
            conn = await asyncpg.connect(self.dsn())
            try:
                # A utility statement takes no parameters: format() quotes them server-side.
                quote = "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)"
                await conn.execute(await conn.fetchval(quote, role, password))
                quote = "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $1::text)"
                await conn.execute(await conn.fetchval(quote, role))
            finally:
                await conn.close()

        asyncio.run(create())
        hba = self.data / "pg_hba.conf"
        # pg_hba.conf is read top down: this line comes before initdb's trust lines.
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n{hba.read_text()}")
        self.reload()

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("no unprivileged user (postgres or nobody) to run PostgreSQL as")


def query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


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
    with sqlite3.connect(Path(database["DATA_DIR"]) / "predictions.sqlite3") as conn:
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
    from prometheus_client.parser import text_string_to_metric_families

    assert service.metrics_url is not None
    reply = request("GET", service.metrics_url + "/metrics")
    assert reply.status == 200, reply.body
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


class FreezableProxy:
    """A TCP proxy on 127.0.0.1 in front of a local port. While frozen it holds every byte, in
    both directions, without closing anything: a hung server or a network that drops packets,
    as the clients see it."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
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
                upstream = socket.create_connection(("127.0.0.1", self._target_port))
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
