"""HTTP handlers for the Open Inference Protocol's REST endpoints.

Infer requests are answered by a bare ASGI handler (``RestRoutes.infer_asgi``), which the app
calls without Starlette's middleware, routing, request or response objects (``app.RestApp``):
on one iris row those layers cost about as much again as everything else the server does per
request (bench/results/profile.md). Every other endpoint is a Starlette route.
"""

from __future__ import annotations

import logging

import orjson
from mlstack_common.asgi import (
    JSON_TYPE,
    RETRY_AFTER,
    Headers,
    first_header,
    json_response,
    send_answer,
)
from mlstack_common.body import BodyError, ClientDisconnectedError, read_body
from mlstack_common.errors import error_body
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mlstack_model import SERVER_NAME, SERVER_VERSION
from mlstack_model.dataplane import DataPlane
from mlstack_model.errors import ErrorKind, ProtocolError
from mlstack_model.loaded_model import LoadedModel
from mlstack_model.metadata import EXTENSIONS
from mlstack_model.rest import protocol

log = logging.getLogger("mlstack_model")

BINARY = "application/octet-stream"
_BINARY_TYPE = (b"content-type", BINARY.encode())
_HEADER_LENGTH = protocol.HEADER_LENGTH.encode()
_INTERNAL = error_body("internal server error")
_LIVE = orjson.dumps({"live": True})
_READY = orjson.dumps({"ready": True})
_NOT_READY = orjson.dumps({"ready": False})
_SERVER_METADATA = orjson.dumps(
    {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}
)


class _InferEndpoint:
    """Starlette's route to the infer handler, for what the app does not send it directly (a
    route that exists answers a wrong method with 405 rather than 404)."""

    def __init__(self, routes: RestRoutes) -> None:
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = scope["path_params"]
        await self._routes.infer_asgi(scope, receive, send, params["name"], params.get("version"))


class RestRoutes:
    """The REST endpoints, each with and without ``/versions/{version}``."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def routes(self) -> list[Route]:
        return [
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/v2/models/{name}", self.model_metadata, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}", self.model_metadata, methods=["GET"]),
            Route("/v2/models/{name}/ready", self.model_ready, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}/ready", self.model_ready, methods=["GET"]),
            Route("/v2/models/{name}/infer", _InferEndpoint(self), methods=["POST"]),
            Route(
                "/v2/models/{name}/versions/{version}/infer",
                _InferEndpoint(self),
                methods=["POST"],
            ),
        ]

    def _resolve(self, request: Request) -> LoadedModel:
        params = request.path_params
        return self.dataplane.resolve(params["name"], params.get("version"))

    async def server_metadata(self, request: Request) -> Response:
        return json_response(_SERVER_METADATA)

    async def live(self, request: Request) -> Response:
        return json_response(_LIVE)

    async def ready(self, request: Request) -> Response:
        if not self.dataplane.ready:
            return json_response(_NOT_READY, status=503)
        return json_response(_READY)

    async def model_metadata(self, request: Request) -> Response:
        return json_response(self._resolve(request).metadata_body)

    async def model_ready(self, request: Request) -> Response:
        return json_response(self._resolve(request).ready_body)

    async def infer_asgi(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None
    ) -> None:
        """POST an infer request, as a bare ASGI app: every error is answered here, in the
        protocol's shape (a ProtocolError with its status, anything else 500)."""
        try:
            status, answer, headers = await self._infer(scope, receive, name, version)
        except ProtocolError as exc:
            # A server that is busy or still loading may answer the same request a moment later.
            retry = exc.kind is ErrorKind.UNAVAILABLE
            status, answer = exc.kind.http_status, error_body(exc.message)
            headers = (JSON_TYPE, *RETRY_AFTER) if retry else (JSON_TYPE,)
        except ClientDisconnectedError:
            return
        except BodyError as exc:
            status, answer, headers = exc.status, error_body(exc.message), (JSON_TYPE,)
        except Exception:
            log.exception("infer failed")
            status, answer, headers = ErrorKind.INTERNAL.http_status, _INTERNAL, (JSON_TYPE,)
        await send_answer(send, status, answer, headers)

    async def _infer(
        self, scope: Scope, receive: Receive, name: str, version: str | None
    ) -> tuple[int, bytes, Headers]:
        dataplane = self.dataplane
        model = dataplane.resolve(name, version)
        with dataplane.admission.slot():
            headers = scope["headers"]
            header_length = first_header(headers, _HEADER_LENGTH)
            settings = dataplane.settings
            body = await read_body(receive, headers, settings.max_body_bytes)
            infer_request = protocol.parse_infer_request(
                body,
                None if header_length is None else header_length.decode("latin-1"),
                model.scorer.n_features,
                settings.max_batch_rows,
            )
            outputs = await dataplane.infer(model, infer_request)
            answer, split = protocol.infer_response(
                model.name, model.version, infer_request, outputs
            )
        if split is None:
            return 200, answer, (JSON_TYPE,)
        return 200, answer, (_BINARY_TYPE, (_HEADER_LENGTH, b"%d" % split))
