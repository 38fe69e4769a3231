"""The gateway's process: the API on PORT (HTTPS when TLS_CERT_FILE and TLS_KEY_FILE are set, the
pair read again every TLS_RELOAD_SECONDS) and /metrics and /dependencies on METRICS_PORT, two
uvicorn servers on one event loop, and the drain on SIGTERM.

The TLS handshake must end within HEADER_TIMEOUT_SECONDS of the connection's opening (asyncio's
own bound is 60 s); the request's head then has HEADER_TIMEOUT_SECONDS of its own.

SIGTERM (or SIGINT): ``/readyz`` answers 503 at once, requests in flight finish (and new ones are
still served, on connections that then close) until none is left or SHUTDOWN_TIMEOUT_SECONDS
have passed; then the servers stop listening, close their connections and the app shuts down.
A second signal skips the waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn
from mlstack_common.http_limits import limited_protocol
from starlette.types import ASGIApp
from uvicorn.config import STARTUP_FAILURE

from mlstack_gateway.admission import Admission
from mlstack_gateway.app import create_app
from mlstack_gateway.certificates import ServingCertificate
from mlstack_gateway.metrics import MetricsEndpoint
from mlstack_gateway.settings import GatewaySettings

log = logging.getLogger("mlstack_gateway")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the signals to ``serve`` (one process runs two of them) and
    bounds the TLS handshake, which uvicorn has no option for."""

    def __init__(self, config: uvicorn.Config, handshake_timeout: float) -> None:
        super().__init__(config)
        self._handshake_timeout = handshake_timeout

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's startup for a host and port, with the handshake's bound given to the
        listening server."""
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )

        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                create_protocol,
                host=config.host,
                port=config.port,
                ssl=config.ssl,
                backlog=config.backlog,
                ssl_handshake_timeout=self._handshake_timeout if config.ssl else None,
            )
        except OSError as exc:
            log.error("%s", exc)
            await self.lifespan.shutdown()
            sys.exit(STARTUP_FAILURE)
        assert server.sockets is not None
        self.servers = [server]
        self._log_started_message(server.sockets)
        self.started = True


def _server(
    app: ASGIApp,
    settings: GatewaySettings,
    port: int,
    http: type[asyncio.Protocol],
    tls: ServingCertificate | None,
) -> _Server:
    """A uvicorn server of `app`; the API's (HTTPS with `tls`) has the app's lifespan."""
    api = port == settings.port
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=port,
        http=http,
        ws="none",
        # The app's pools open and close with the API server; the metrics server has none.
        lifespan="on" if api else "off",
        access_log=settings.access_log,
        log_level=settings.log_level,
        server_header=False,
        # Longer than the idle timeouts of the clients in front (the gateway's pool, cloud load
        # balancers), so that the client, not the server, closes an idle keep-alive connection.
        timeout_keep_alive=int(settings.keepalive_timeout_seconds),
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
        ssl_context_factory=(lambda config, default: tls.context) if tls else None,
    )
    return _Server(config, handshake_timeout=settings.http_limits.header_timeout)


async def _run(server: _Server) -> int:
    """Serve until told to stop: 0, or the exit code uvicorn gave up with (a port taken, the
    app's startup failed), after it logged why."""
    try:
        await server.serve()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


async def serve(settings: GatewaySettings) -> int:
    """Serve until SIGTERM or SIGINT, then drain; the process's exit code."""
    gateway = create_app(settings)
    admission = Admission(gateway, settings.max_concurrent_requests, gateway.metrics)
    refused = gateway.metrics.refused_connections
    http = limited_protocol(
        dataclasses.replace(
            settings.http_limits,
            on_refusal=lambda reason: refused.labels(reason=reason).inc(),
        )
    )
    tls = None
    if settings.tls_files is not None:
        tls = ServingCertificate(*settings.tls_files, reloads=gateway.metrics.tls_reloads)
    api = _server(admission, settings, settings.port, http, tls)
    gateway.metrics.watch_connections(lambda: len(api.server_state.connections))
    scrape = MetricsEndpoint(gateway.metrics, gateway.dependencies.detail)
    metrics = _server(scrape, settings, settings.metrics_port, http, tls=None)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            for server in (api, metrics):
                server.should_exit = server.force_exit = True
            return
        admission.draining = True
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)

    # The metrics port first: a port taken stops the process before the app opens its pools.
    metrics_task = asyncio.create_task(_run(metrics))
    while not metrics.started and not metrics_task.done():
        await asyncio.sleep(0.01)
    if metrics_task.done():
        return metrics_task.result()
    api_task = asyncio.create_task(_run(api))
    renewals = asyncio.create_task(tls.watch(settings.tls_reload_seconds)) if tls else None
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({api_task, stopped}, return_when=asyncio.FIRST_COMPLETED)

    if stop.is_set():
        log.info("draining: /readyz answers 503, waiting for the requests in flight")
        deadline = loop.time() + settings.shutdown_timeout_seconds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(admission.drained(), settings.shutdown_timeout_seconds)
        # What is left of the budget, for requests that arrived during the drain.
        api.config.timeout_graceful_shutdown = max(1, math.ceil(deadline - loop.time()))
    api.should_exit = True
    code = await api_task
    metrics.should_exit = True
    await metrics_task
    stopped.cancel()
    if renewals is not None:
        renewals.cancel()
    return code
