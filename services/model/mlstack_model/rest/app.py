"""The REST transport's ASGI application: the infer routes straight to their handler, everything
else through Starlette, every error in the protocol's shape."""

from __future__ import annotations

import re

from mlstack_common.app import starlette_app
from mlstack_common.asgi import RETRY_AFTER_HEADERS, error_response
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Lifespan, Receive, Scope, Send

from mlstack_model.dataplane import DataPlane
from mlstack_model.errors import ErrorKind, ProtocolError
from mlstack_model.rest.routes import RestRoutes

# The two infer routes' paths as Starlette matches them (a path parameter is one segment).
_INFER_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")


async def _protocol_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProtocolError)
    # A server that is busy or still loading may answer the same request a moment later.
    headers = RETRY_AFTER_HEADERS if exc.kind is ErrorKind.UNAVAILABLE else None
    return error_response(exc.kind.http_status, exc.message, headers)


def create_app(dataplane: DataPlane, lifespan: Lifespan[Starlette]) -> RestApp:
    """The REST app of ``dataplane``; ``lifespan`` is the process's start-up and shutdown."""
    rest = RestRoutes(dataplane)
    app = starlette_app(rest.routes(), lifespan, ProtocolError, _protocol_error)
    return RestApp(app, rest)


class RestApp:
    """Sends ``POST`` infer requests straight to their handler and everything else (probes,
    metadata, lifespan, wrong methods and paths) to Starlette. The infer handler answers every
    error itself, in the same shape as the app's exception handlers."""

    def __init__(self, app: Starlette, rest: RestRoutes) -> None:
        self.app = app
        # What the process drains (mlstack_common.serving).
        self.dataplane = rest.dataplane
        self._infer = rest.infer_asgi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                await self._infer(scope, receive, send, match["name"], match["version"])
                return
        await self.app(scope, receive, send)
