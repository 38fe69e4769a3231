"""The model server's ASGI application, and the gRPC server that shares its process and loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mlstack_model import protocol
from mlstack_model.errors import ErrorKind, ProtocolError
from mlstack_model.grpc_routes import GrpcServer
from mlstack_model.loaded_model import load_model
from mlstack_model.routes import RestRoutes, json_response
from mlstack_model.service import ModelService
from mlstack_model.settings import ModelSettings

# How long in-flight gRPC calls may finish at shutdown, after the REST server has drained.
GRPC_GRACE_SECONDS = 5.0
RETRY_AFTER = {"Retry-After": "1"}


async def _protocol_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProtocolError)
    # A server that is busy or still loading may answer the same request a moment later.
    headers = RETRY_AFTER if exc.kind is ErrorKind.UNAVAILABLE else None
    return json_response(protocol.error_body(exc.message), exc.kind.http_status, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Unknown paths and wrong methods answer in the protocol's error shape too.
    assert isinstance(exc, HTTPException)
    return Response(
        protocol.error_body(str(exc.detail)),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type="application/json",
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    return json_response(
        protocol.error_body("internal server error"), status=ErrorKind.INTERNAL.http_status
    )


def create_app(settings: ModelSettings | None = None) -> Starlette:
    settings = settings or ModelSettings.from_env()
    service = ModelService(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Loading (and, locally, first-start training) blocks: keep it off the event loop.
        service.model = await asyncio.to_thread(load_model, settings)
        # uvicorn opens the REST port once this start-up is done; gRPC opens here, so both
        # listen only with the model loaded, and a port that is taken stops the start-up.
        grpc_server = GrpcServer(service, settings)
        await grpc_server.start()
        try:
            yield
        finally:
            await grpc_server.stop(GRPC_GRACE_SECONDS)
            service.model = None
            service.executor.shutdown(wait=True)

    app = Starlette(
        routes=RestRoutes(service).routes(),
        lifespan=lifespan,
        exception_handlers={
            ProtocolError: _protocol_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.service = service
    return app
