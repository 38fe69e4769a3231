"""The Starlette app each service routes its endpoints through (all but its hot path, which it
answers as a bare ASGI handler): its routes, its lifespan, and every error answered as both
services answer one (mlstack_common.asgi.error_response)."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ExceptionHandler, Lifespan

from mlstack_common.asgi import error_response


def starlette_app(
    routes: Sequence[BaseRoute],
    lifespan: Lifespan[Starlette],
    error: type[Exception],
    on_error: ExceptionHandler,
) -> Starlette:
    """A Starlette app of ``routes``: ``on_error`` answers the service's own ``error``; a wrong
    path or method (HTTPException) and anything else (500, the service's own bug) are answered
    with error_response."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, str(exc.detail), exc.headers)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return error_response(500, "internal server error")

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={error: on_error, HTTPException: http_error, Exception: internal_error},
    )
    # Starlette would answer "/path/" with a redirect to a URL built from the Host header, which
    # the client controls: no redirects, a wrong path is a 404.
    app.router.redirect_slashes = False
    return app
