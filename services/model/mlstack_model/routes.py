"""HTTP handlers for the Open Inference Protocol endpoints."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlstack_model import SERVER_NAME, SERVER_VERSION, protocol
from mlstack_model.loaded_model import LoadedModel
from mlstack_model.protocol import InferRequest, ProtocolError
from mlstack_model.settings import ModelSettings

JSON = "application/json"
_LIVE = orjson.dumps({"live": True})
_READY = orjson.dumps({"ready": True})
_NOT_READY = orjson.dumps({"ready": False})
_SERVER_METADATA = orjson.dumps({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})


def json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type=JSON)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything larger than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ProtocolError(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise ProtocolError(413, f"request body too large: {declared} bytes, at most {limit}")
        return await request.body()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(413, f"request body too large: more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class ModelService:
    """Holds the loaded model (set at start-up by the app's lifespan) and answers requests."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.model: LoadedModel | None = None
        # Large batches are scored here so the event loop keeps answering other requests.
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="score")

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
        model = self.model
        if model is None:
            raise ProtocolError(503, "model is not loaded yet")
        params = request.path_params
        name = params["name"]
        if name != model.name:
            raise ProtocolError(404, f"unknown model {name!r}; this server serves {model.name!r}")
        version = params.get("version")
        if version is not None and version != model.version:
            raise ProtocolError(
                404,
                f"model {name!r} version {version!r} is not served here (serving {model.version})",
            )
        return model

    async def server_metadata(self, request: Request) -> Response:
        return json_response(_SERVER_METADATA)

    async def live(self, request: Request) -> Response:
        return json_response(_LIVE)

    async def ready(self, request: Request) -> Response:
        if self.model is None:
            return json_response(_NOT_READY, status=503)
        return json_response(_READY)

    async def model_metadata(self, request: Request) -> Response:
        return json_response(self._resolve(request).metadata_body)

    async def model_ready(self, request: Request) -> Response:
        return json_response(self._resolve(request).ready_body)

    async def infer(self, request: Request) -> Response:
        model = self._resolve(request)
        body = await read_body(request, self.settings.max_body_bytes)
        infer_request = protocol.parse_infer_request(
            body, model.scorer.n_features, self.settings.max_batch_rows
        )
        if infer_request.rows <= self.settings.inline_batch_rows:
            outputs = score(model, infer_request)
        else:
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self.executor, score, model, infer_request)
        return json_response(
            protocol.infer_response(model.name, model.version, infer_request.request_id, outputs)
        )


def score(model: LoadedModel, request: InferRequest) -> list[dict[str, Any]]:
    """The requested output tensors for one validated infer request."""
    scorer = model.scorer
    matrix: np.ndarray[Any, np.dtype[np.float64]] | None = None
    if request.rows > 1 or protocol.OUTPUT_PROBA in request.outputs:
        matrix = np.asarray(request.data, dtype=np.float64).reshape(request.rows, -1)
    outputs: list[dict[str, Any]] = []
    for name in request.outputs:
        if name == protocol.OUTPUT_PREDICT:
            if matrix is None:
                labels = [scorer.predict_row(request.data)]
            else:
                labels = scorer.predict_matrix(matrix)
            outputs.append(protocol.predict_output(labels))
        else:
            assert matrix is not None
            proba = scorer.predict_proba_matrix(matrix)
            outputs.append(
                protocol.proba_output(request.rows, int(proba.shape[1]), proba.ravel().tolist())
            )
    return outputs
