"""HTTP handlers for the Open Inference Protocol's REST endpoints."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlstack_model import SERVER_NAME, SERVER_VERSION, protocol
from mlstack_model.errors import ErrorKind, ProtocolError, invalid
from mlstack_model.loaded_model import LoadedModel
from mlstack_model.service import ModelService

JSON = "application/json"
BINARY = "application/octet-stream"
_LIVE = orjson.dumps({"live": True})
_READY = orjson.dumps({"ready": True})
_NOT_READY = orjson.dumps({"ready": False})
_SERVER_METADATA = orjson.dumps(
    {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": protocol.EXTENSIONS}
)


def json_response(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(body, status_code=status, headers=headers, media_type=JSON)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything larger than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise invalid("invalid Content-Length header")
        if int(declared) > limit:
            raise ProtocolError(
                ErrorKind.TOO_LARGE, f"request body too large: {declared} bytes, at most {limit}"
            )
        return await request.body()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(
                ErrorKind.TOO_LARGE, f"request body too large: more than {limit} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


class RestRoutes:
    """The REST endpoints, each with and without ``/versions/{version}``."""

    def __init__(self, service: ModelService) -> None:
        self.service = service

    def routes(self) -> list[Route]:
        return [
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/v2/models/{name}", self.model_metadata, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}", self.model_metadata, methods=["GET"]),
            Route("/v2/models/{name}/ready", self.model_ready, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}/ready", self.model_ready, methods=["GET"]),
            Route("/v2/models/{name}/infer", self.infer, methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", self.infer, methods=["POST"]),
        ]

    def _resolve(self, request: Request) -> LoadedModel:
        params = request.path_params
        return self.service.resolve(params["name"], params.get("version"))

    async def server_metadata(self, request: Request) -> Response:
        return json_response(_SERVER_METADATA)

    async def live(self, request: Request) -> Response:
        return json_response(_LIVE)

    async def ready(self, request: Request) -> Response:
        if not self.service.ready:
            return json_response(_NOT_READY, status=503)
        return json_response(_READY)

    async def model_metadata(self, request: Request) -> Response:
        return json_response(self._resolve(request).metadata_body)

    async def model_ready(self, request: Request) -> Response:
        return json_response(self._resolve(request).ready_body)

    async def infer(self, request: Request) -> Response:
        model = self._resolve(request)
        with self.service.admission.slot():
            return await self._infer(request, model)

    async def _infer(self, request: Request, model: LoadedModel) -> Response:
        settings = self.service.settings
        body = await read_body(request, settings.max_body_bytes)
        infer_request = protocol.parse_infer_request(
            body,
            request.headers.get(protocol.HEADER_LENGTH),
            model.scorer.n_features,
            settings.max_batch_rows,
        )
        outputs = await self.service.infer(model, infer_request)
        answer, header_length = protocol.infer_response(
            model.name, model.version, infer_request, outputs
        )
        if header_length is None:
            return json_response(answer)
        return Response(
            answer,
            media_type=BINARY,
            headers={"Inference-Header-Content-Length": str(header_length)},
        )
