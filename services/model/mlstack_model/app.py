"""The model server's process: one data plane (the loaded model and its scoring), the REST app
that uvicorn serves, and the gRPC server that shares its event loop, both started with the model
loaded and stopped by the REST app's lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from mlstack_model.dataplane import DataPlane
from mlstack_model.grpc.routes import GrpcServer
from mlstack_model.loaded_model import load_model
from mlstack_model.rest.app import RestApp
from mlstack_model.rest.app import create_app as create_rest_app
from mlstack_model.settings import ModelSettings

# How long in-flight gRPC calls may finish at shutdown, after the REST server has drained.
GRPC_GRACE_SECONDS = 5.0


def create_app(settings: ModelSettings | None = None) -> RestApp:
    settings = settings or ModelSettings.from_env()
    dataplane = DataPlane(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Loading (and, locally, first-start training) blocks: keep it off the event loop.
        dataplane.model = await asyncio.to_thread(load_model, settings)
        # uvicorn opens the REST port once this start-up is done; gRPC opens here, so both
        # listen only with the model loaded, and a port that is taken stops the start-up.
        grpc_server = GrpcServer(dataplane, settings)
        await grpc_server.start()
        try:
            yield
        finally:
            await grpc_server.stop(GRPC_GRACE_SECONDS)
            dataplane.model = None
            dataplane.executor.shutdown(wait=True)

    return create_rest_app(dataplane, lifespan)
