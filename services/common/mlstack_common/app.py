"""The Starlette app each service routes its endpoints through (all but its hot path, which it
answers as a bare ASGI handler): its routes, its lifespan, and every error answered in the
service's own shape."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ExceptionHandler, Lifespan

# The service's error answer: (status, message, headers) -> its response.
ErrorAnswer = Callable[[int, str, Mapping[str, str] | None], Response]


def starlette_app(
    routes: Sequence[BaseRoute],
    lifespan: Lifespan[Starlette],
    error: type[Exception],
    on_error: ExceptionHandler,
    answer: ErrorAnswer,
) -> Starlette:
    """A Starlette app of ``routes``: ``on_error`` answers the service's own ``error``; a wrong
    path or method (HTTPException) and anything else (500, the service's own bug) are answered
    with ``answer``."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return answer(exc.status_code, str(exc.detail), exc.headers)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return answer(500, "internal server error", None)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={error: on_error, HTTPException: http_error, Exception: internal_error},
    )
    # Starlette would answer "/path/" with a redirect to a URL built from the Host header, which
    # the client controls: no redirects, a wrong path is a 404.
    app.router.redirect_slashes = False
    return app
