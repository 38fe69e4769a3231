"""Running a service's process: its settings (a bad one exits 2 with one line), logging, uvicorn
servers on one uvloop event loop, and the drain on SIGTERM. Both ``__main__`` modules run here.

SIGTERM (or SIGINT): the service is told it is draining (its readiness probe answers 503 at
once), requests in flight finish (and new ones are still served) until none is left or
SHUTDOWN_TIMEOUT_SECONDS have passed; then the servers stop listening, close their connections
and the app shuts down (its lifespan). A second signal skips the waiting.

The TLS handshake, when a server has one, must end within HEADER_TIMEOUT_SECONDS of the
connection's opening (asyncio's own bound is 60 s); the request's head then has
HEADER_TIMEOUT_SECONDS of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import uvicorn
import uvloop
from starlette.types import ASGIApp
from uvicorn.config import STARTUP_FAILURE

from mlstack_common.env import SettingsError
from mlstack_common.settings import ServiceSettings

log = logging.getLogger("mlstack_common.serving")
S = TypeVar("S", bound=ServiceSettings)
# uvicorn's hook for a server's TLS context: (its config, its default factory) -> the context.
SslContextFactory = Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]


def main(
    service: str, settings: Callable[[], S], serve: Callable[[S], Coroutine[Any, Any, int]]
) -> int:
    """A service process's exit status: ``serve`` the ``settings`` read, on uvloop; 2, with one
    line on stderr, for a setting that cannot be used."""
    try:
        read = settings()
    except SettingsError as exc:
        print(f"mlstack {service}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=read.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return uvloop.run(serve(read))


class Drain(Protocol):
    """What a service does while it drains: ``draining`` is set at the first signal (the
    readiness probe answers 503 from then on); ``drained`` returns once no request is in
    flight."""

    draining: bool

    async def drained(self) -> None: ...


class Server(uvicorn.Server):
    """A uvicorn server that leaves the signals to ``serve`` (one process may run several) and
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


def server(
    app: ASGIApp,
    settings: ServiceSettings,
    port: int,
    http: type[asyncio.Protocol],
    *,
    lifespan: bool,
    ssl_context_factory: SslContextFactory | None = None,
) -> Server:
    """A uvicorn server of ``app`` on ``settings.host`` and ``port``, with the HTTP protocol
    ``http`` (mlstack_common.http_limits); ``lifespan``: whether it runs the app's start-up and
    shutdown (one server of a process does)."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=port,
        http=http,
        ws="none",
        lifespan="on" if lifespan else "off",
        access_log=settings.access_log,
        log_level=settings.log_level,
        server_header=False,
        # Nothing here reads the client's address or scheme: no X-Forwarded-* to rewrite them.
        proxy_headers=False,
        timeout_keep_alive=int(settings.keepalive_timeout_seconds),
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
        ssl_context_factory=ssl_context_factory,
    )
    return Server(config, handshake_timeout=settings.http_limits.header_timeout)


async def _run(server: Server) -> int:
    """Serve until told to stop: 0, or the exit code uvicorn gave up with (a port taken, the
    app's startup failed), after it logged why."""
    try:
        await server.serve()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


async def serve(
    api: Server,
    drain: Drain,
    shutdown_timeout_seconds: float,
    *,
    first: Sequence[Server] = (),
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
) -> int:
    """Serve until SIGTERM or SIGINT, then drain; the process's exit code. ``api`` is the server
    whose requests the drain waits for; the servers of ``first`` (without a lifespan) start
    before it, so that a port of theirs that is taken stops the process before the app starts,
    and stop after it. The tasks ``background`` makes run while ``api`` serves."""
    servers = [*first, api]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            for each in servers:
                each.should_exit = each.force_exit = True
            return
        drain.draining = True
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)

    before: list[tuple[Server, asyncio.Task[int]]] = []
    for each in first:
        task = asyncio.create_task(_run(each))
        before.append((each, task))
        while not each.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            await _stop(before)
            return task.result()
    api_task = asyncio.create_task(_run(api))
    running = [asyncio.create_task(start()) for start in background]
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({api_task, stopped}, return_when=asyncio.FIRST_COMPLETED)

    if stop.is_set():
        log.info("draining: the readiness probe answers 503, waiting for the requests in flight")
        deadline = loop.time() + shutdown_timeout_seconds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drain.drained(), shutdown_timeout_seconds)
        # What is left of the budget, for requests that arrived during the drain.
        api.config.timeout_graceful_shutdown = max(1, math.ceil(deadline - loop.time()))
    api.should_exit = True
    code = await api_task
    await _stop(before)
    stopped.cancel()
    for each_task in running:
        each_task.cancel()
    return code


async def _stop(running: Sequence[tuple[Server, asyncio.Task[int]]]) -> None:
    for each, task in running:
        each.should_exit = True
        await task
