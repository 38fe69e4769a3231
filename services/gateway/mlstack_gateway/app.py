"""The gateway's ASGI application: wiring and lifespan (pools opened and closed here)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from mlstack_common.app import starlette_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mlstack_gateway.breaker import BreakerState, CircuitBreaker
from mlstack_gateway.client import ModelClient
from mlstack_gateway.dependencies import Dependencies
from mlstack_gateway.errors import ApiError
from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.routes import PREDICT_PATH, GatewayRoutes
from mlstack_gateway.settings import GatewaySettings
from mlstack_gateway.stores.factory import open_store

log = logging.getLogger("mlstack_gateway")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


def create_app(settings: GatewaySettings | None = None) -> GatewayApp:
    settings = settings or GatewaySettings.from_env()
    metrics = GatewayMetrics()
    breaker = CircuitBreaker(settings.breaker_failure_threshold, settings.breaker_reset_seconds)
    metrics.watch_breaker(lambda: breaker.state is not BreakerState.CLOSED)
    client = ModelClient(settings, breaker, metrics)
    store = open_store(settings, metrics)
    routes = GatewayRoutes(settings, client, store, metrics)
    dependencies = Dependencies(client, store, metrics)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.open()
        await client.start()
        log.info(
            "gateway up: model %s at %s, %s store",
            settings.model_name,
            settings.model_url,
            store.kind,
        )
        watch = asyncio.create_task(dependencies.watch())
        try:
            yield
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            # uvicorn has stopped accepting and finished in-flight requests by now.
            await client.close()
            await store.close()

    starlette = starlette_app(routes.routes(), lifespan, ApiError, _api_error)
    return GatewayApp(starlette, routes.predict, metrics, dependencies)


@dataclass(frozen=True)
class GatewayApp:
    """Sends ``POST /api/v1/predict`` straight to its handler and everything else to Starlette.

    The predict handler answers every error itself, so it needs none of Starlette's layers
    (middleware, routing, request and response objects): skipping them takes a measurable share
    off the gateway's CPU time per prediction (bench/results/gateway.md).
    """

    app: Starlette
    predict: ASGIApp
    # Served on a port of their own (serving.py).
    metrics: GatewayMetrics
    dependencies: Dependencies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PREDICT_PATH and scope["method"] == "POST":
            await self.predict(scope, receive, send)
        else:
            await self.app(scope, receive, send)
