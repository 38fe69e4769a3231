"""The model and the gateway as local processes, as their images run them: `python -m` of the
service's package from its folder, with the code both services share (services/common) on its
import path, on 127.0.0.1 (free ports unless given). What the service tests, the benchmarks
and `make serve` (tools/serve.py) start."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal, TypeVar

from components.stack_file import ROOT
from harness.ports import LOOPBACK, free_ports
from harness.processes import LocalServer

MODEL_SRC: Final = ROOT / "services" / "model"
GATEWAY_SRC: Final = ROOT / "services" / "gateway"
# The gateway's API key, unless the caller sets MLSTACK_API_KEY.
API_KEY: Final = "test-key"
# MODEL_URL for a gateway whose settings are read but which never calls a model (the gateway
# requires one): a .invalid name resolves nowhere.
NO_MODEL_URL: Final = "http://model.invalid:8080"
# Two flowers of the iris set (its first setosa and a virginica) the model classifies beyond doubt:
# the rows the tests, the benchmarks and the e2e suite send it.
SETOSA: Final = [5.1, 3.5, 1.4, 0.2]
VIRGINICA: Final = [6.7, 3.0, 5.2, 2.3]
# What a start waits for: the service ready, or only live (serving, ready or not).
Wait = Literal["ready", "live"]
S = TypeVar("S", bound="ServiceProcess")


def import_path(src: Path) -> list[str]:
    """The import path of the service in `src`: its folder and the shared services/common
    beside it, as in its image."""
    return [str(src), str(src.parent / "common")]


def import_service(src: Path) -> None:
    """Make the service in `src` importable in this process, ahead of the rest of its path."""
    sys.path[:0] = [folder for folder in import_path(src) if folder not in sys.path]


def own_log(log_dir: Path, name: str, port: int) -> Path:
    """`<name>-<port>.log` in `log_dir`; where an earlier process on the same port left that
    one, the first `<name>-<port>.<n>.log` not there yet: a test that reads its process's log
    reads that process's lines alone (a log is appended to)."""
    path, n = log_dir / f"{name}-{port}.log", 1
    while path.exists():
        n += 1
        path = log_dir / f"{name}-{port}.{n}.log"
    return path


class ServiceProcess(LocalServer):
    """A service started as `python -m <module>` from its folder `src` (or from `cwd`), on
    127.0.0.1:`port`, with `env` over this process's environment; named `name` (its module
    unless given), its log in `log_dir` (without one, on this process's output)."""

    def __init__(
        self,
        module: str,
        src: Path,
        env: Mapping[str, str],
        port: int,
        log_dir: Path | None,
        *,
        name: str | None = None,
        ready_path: str = "/readyz",
        live_path: str = "/healthz",
        new_session: bool = False,
        cwd: Path | None = None,
    ) -> None:
        name = name or module
        environment = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(import_path(src)),
            "HOST": LOOPBACK,
            "PORT": str(port),
            **env,
        }
        super().__init__(
            name,
            [sys.executable, "-m", module],
            None if log_dir is None else own_log(log_dir, name, port),
            f"http://{LOOPBACK}:{port}",
            ready_path=ready_path,
            env=environment,
            cwd=cwd or src,
            new_session=new_session,
        )
        self.port = port
        # Answers 200 as soon as the service serves, whether it is ready or not.
        self.live_path = live_path


class ModelProcess(ServiceProcess):
    """The model server on `model_dir` (None: the environment's MODEL_DIR, or the model's
    default): REST on `url`, gRPC on `grpc_target` (`port` and `grpc_port`, free ones unless
    given); `env` its settings."""

    def __init__(
        self,
        model_dir: Path | None,
        log_dir: Path | None,
        env: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        grpc_port: int | None = None,
        name: str | None = None,
        new_session: bool = False,
        cwd: Path | None = None,
    ) -> None:
        spare_http, spare_grpc = free_ports(2, besides=[p for p in (port, grpc_port) if p])
        grpc_port = grpc_port or spare_grpc
        settings = {"GRPC_PORT": str(grpc_port), **(env or {})}
        if model_dir is not None:
            settings.setdefault("MODEL_DIR", str(model_dir))
        super().__init__(
            "mlstack_model",
            MODEL_SRC,
            settings,
            port or spare_http,
            log_dir,
            name=name,
            ready_path="/v2/health/ready",
            live_path="/v2/health/live",
            new_session=new_session,
            cwd=cwd,
        )
        self.grpc_target: str = f"{LOOPBACK}:{grpc_port}"


class GatewayProcess(ServiceProcess):
    """The gateway in front of `model_url` on `port`, its /metrics on a port of their own (free
    ones unless given); `env` its settings, a SQLite file in `log_dir` unless they name a
    database (without a `log_dir`, the environment's or the gateway's default). `src`: the
    gateway's folder (another version's, say)."""

    def __init__(
        self,
        model_url: str,
        log_dir: Path | None,
        env: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        src: Path = GATEWAY_SRC,
        name: str | None = None,
        new_session: bool = False,
        cwd: Path | None = None,
    ) -> None:
        spare_http, spare_metrics = free_ports(2, besides=[port] if port else [])
        settings = {
            "MODEL_URL": model_url,
            "MLSTACK_API_KEY": API_KEY,
            "METRICS_PORT": str(spare_metrics),
            **(env or {}),
        }
        if log_dir is not None and not {"DATABASE_URL", "DATA_DIR"} & settings.keys():
            settings["DATA_DIR"] = tempfile.mkdtemp(prefix="gateway-", dir=log_dir)
        super().__init__(
            "mlstack_gateway",
            src,
            settings,
            port or spare_http,
            log_dir,
            name=name,
            new_session=new_session,
            cwd=cwd,
        )
        self.metrics_url = f"http://{LOOPBACK}:{settings['METRICS_PORT']}"


def start_model(
    model_dir: Path, log_dir: Path, port: int | None = None, **env: str
) -> ModelProcess:
    """The model server, started and ready."""
    return start_and_wait(ModelProcess(model_dir, log_dir, env, port=port), "ready")


def start_gateway(
    model_url: str, log_dir: Path, wait: Wait | None = "ready", **env: str
) -> GatewayProcess:
    """The gateway, started; with `wait`, once it is ready, or only live ("live": it serves,
    though its model or its database may be away and keep it unready)."""
    return start_and_wait(GatewayProcess(model_url, log_dir, env), wait)


def start_and_wait(service: S, wait: Wait | None) -> S:
    """`service` started and waited for; stopped again when it does not get there."""
    service.start()
    if wait is None:
        return service
    try:
        if wait == "ready":
            service.wait_ready()
        else:
            service.wait_for_url(service.url + service.live_path)
    except BaseException:
        service.stop()
        raise
    return service
