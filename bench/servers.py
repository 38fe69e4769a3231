"""The servers under load, each a process of its own on 127.0.0.1, stopped by the runner."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from harness.http import request
from harness.poll import poll
from harness.ports import free_port
from harness.processes import LocalProcess

ROOT = Path(__file__).resolve().parents[1]
MODEL_SRC = ROOT / "services" / "model"
GATEWAY_SRC = ROOT / "services" / "gateway"
MLSERVER_VENV = ROOT / ".venv-mlserver"
API_KEY = "bench-key"
MODEL_NAME = "iris"


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


class Server(LocalProcess):
    """A server process in a session of its own, logging to a file, started on construction."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        url: str,
        ready_path: str | None,
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        grpc_target: str | None = None,
    ) -> None:
        # The server's own session, so that stop() reaches the workers uvicorn or MLServer fork.
        super().__init__(
            name,
            argv,
            log_dir / f"{name}.log",
            env={**os.environ, **(env or {})},
            cwd=cwd,
            new_session=True,
        )
        self.url = url
        # host:port of the server's gRPC side, if it has one.
        self.grpc_target = grpc_target
        # Where the server serves /metrics, when on a port of its own.
        self.metrics_url: str | None = None
        self._ready_path = ready_path
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        return super().log_tail(lines)

    def _answers(self) -> bool:
        if self._ready_path is None:
            # gRPC only: ready once it accepts a connection.
            assert self.grpc_target is not None
            with grpc.insecure_channel(self.grpc_target) as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=2)
                    return True
                except grpc.FutureTimeoutError:
                    return False
        try:
            status, _ = http_call("GET", self.url + self._ready_path, timeout=2)
        except OSError:
            return False
        return status == 200

    def wait_ready(self, timeout: float = 120.0) -> Server:
        process = self.process
        assert process is not None, f"{self.name} was never started"
        ready = poll(lambda: process.poll() is not None or self._answers(), timeout, interval=0.1)
        if process.returncode is not None:
            raise RuntimeError(f"{self.name} exited with {process.returncode}:\n{self.log_tail()}")
        if not ready:
            raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")
        return self


def service_path(src: Path) -> str:
    """The PYTHONPATH of the service in ``src``: its folder and the shared services/common
    beside it, as in its image."""
    return os.pathsep.join((str(src), str(src.parent / "common")))


def _uvicorn_env(src: Path, port: int) -> dict[str, str]:
    return {"PYTHONPATH": service_path(src), "HOST": "127.0.0.1", "PORT": str(port)}


def start_model(model_dir: Path, log_dir: Path) -> Server:
    port, grpc_port = free_port(), free_port()
    return Server(
        "model",
        [sys.executable, "-m", "mlstack_model"],
        f"http://127.0.0.1:{port}",
        "/v2/health/ready",
        log_dir=log_dir,
        env={
            **_uvicorn_env(MODEL_SRC, port),
            "GRPC_PORT": str(grpc_port),
            "MODEL_DIR": str(model_dir),
            "LOG_LEVEL": "warning",
        },
        grpc_target=f"127.0.0.1:{grpc_port}",
    )


def start_gateway(name: str, model_url: str, log_dir: Path, **env: str) -> Server:
    port = free_port()
    metrics_port = free_port()
    server = Server(
        name,
        [sys.executable, "-m", "mlstack_gateway"],
        f"http://127.0.0.1:{port}",
        "/readyz",
        log_dir=log_dir,
        env={
            **_uvicorn_env(GATEWAY_SRC, port),
            "MODEL_URL": model_url,
            "METRICS_PORT": str(metrics_port),
            "MLSTACK_API_KEY": API_KEY,
            "LOG_LEVEL": "warning",
            **env,
        },
    )
    server.metrics_url = f"http://127.0.0.1:{metrics_port}"
    return server


def _bare_asgi(name: str, app: str, log_dir: Path, env: dict[str, str] | None = None) -> Server:
    """A bench-only ASGI app from bench/ under the same uvicorn settings as the model server."""
    port = free_port()
    return Server(
        name,
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host=127.0.0.1",
            f"--port={port}",
            "--loop=uvloop",
            "--http=httptools",
            "--no-access-log",
            "--no-server-header",
            "--log-level=warning",
        ],
        f"http://127.0.0.1:{port}",
        "/",
        log_dir=log_dir,
        env=env,
        cwd=ROOT,
    )


def start_echo(log_dir: Path) -> Server:
    """The ceiling: a bare ASGI app that answers with the request's body."""
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{service_path(GATEWAY_SRC)}"}
    return _bare_asgi("echo", "bench.echo:app", log_dir, env)


def start_proxy(model_url: str, log_dir: Path) -> Server:
    """The hop's floor: forwards to the model with the gateway's HTTP client, nothing else."""
    env = {
        "PROXY_MODEL_URL": model_url,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{service_path(GATEWAY_SRC)}",
    }
    return _bare_asgi("proxy", "bench.proxy:app", log_dir, env)


def start_grpc_echo(log_dir: Path) -> Server:
    """The gRPC ceiling: a bare grpc.aio server that answers every call with a fixed answer."""
    port = free_port()
    return Server(
        "grpc-echo",
        [sys.executable, "-m", "bench.grpc_echo", str(port)],
        "",
        None,
        log_dir=log_dir,
        env={"PYTHONPATH": f"{ROOT}{os.pathsep}{service_path(MODEL_SRC)}"},
        cwd=ROOT,
        grpc_target=f"127.0.0.1:{port}",
    )


def write_mlserver_config(folder: Path, model_file: Path, version: str) -> tuple[int, int]:
    """MLServer's settings: its defaults, except where noted; returns its HTTP and gRPC ports."""
    http_port, grpc_port = free_port(), free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
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


def start_mlserver(folder: Path, ports: tuple[int, int], log_dir: Path) -> Server:
    http_port, grpc_port = ports
    mlserver = MLSERVER_VENV / "bin" / "mlserver"
    if not mlserver.exists():
        raise RuntimeError(f"{mlserver} missing: `make bench` installs it")
    return Server(
        "mlserver",
        [str(mlserver), "start", str(folder)],
        f"http://127.0.0.1:{http_port}",
        f"/v2/models/{MODEL_NAME}/ready",
        log_dir=log_dir,
        cwd=folder,
        grpc_target=f"127.0.0.1:{grpc_port}",
    )
