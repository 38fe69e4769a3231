"""HTTP handlers of the public API and the probes (/metrics has a port of its own: serving.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from mlstack_common.asgi import error_response, json_response, send_json
from mlstack_common.body import BodyError, ClientDisconnectedError, read_body
from mlstack_common.counts import read_count
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mlstack_gateway.auth import ApiKeyChecker
from mlstack_gateway.client import ModelClient
from mlstack_gateway.errors import ApiError
from mlstack_gateway.history import NEWEST, parse_cursor
from mlstack_gateway.ids import idempotency_key, new_request_id
from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.payload import PredictInput, parse_predict_body
from mlstack_gateway.settings import GatewaySettings
from mlstack_gateway.stores.base import (
    PredictionRecord,
    PredictionStore,
    StoredPrediction,
    StoreUnavailableError,
)

log = logging.getLogger("mlstack_gateway")

PREDICT_PATH = "/api/v1/predict"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
_ALIVE = orjson.dumps({"status": "ok"})
_READY = orjson.dumps({"ready": True})
_AWAITING_MIGRATIONS = orjson.dumps(
    {"ready": False, "reason": "the database's schema is older than this gateway's"}
)
DEFAULT_HISTORY_LIMIT = 20


def _answer(predictions_json: bytes, model_version: str, request_id: str) -> bytes:
    return orjson.dumps(
        {
            "predictions": orjson.Fragment(predictions_json),
            "model_version": model_version,
            "request_id": request_id,
        }
    )


def _stored_answer(key: str, stored: StoredPrediction) -> bytes:
    """A retry's answer: what the key's earlier request stored, if it had the same instances."""
    if not stored.same_instances:
        raise ApiError(
            422,
            f"Idempotency-Key {key} was used for another request (other instances): "
            "send a new key with a new request",
        )
    return _answer(stored.predictions_json.encode(), stored.model_version, key)


class _AsgiEndpoint:
    """Wraps a bound ASGI method so that Starlette's Route treats it as an app, not a handler."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


class GatewayRoutes:
    def __init__(
        self,
        settings: GatewaySettings,
        client: ModelClient,
        store: PredictionStore,
        metrics: GatewayMetrics,
    ) -> None:
        self._settings = settings
        self._client = client
        self._store = store
        self._metrics = metrics
        self._auth = ApiKeyChecker(settings.api_keys)
        self._by_key = {
            key_id: metrics.api_key_requests.labels(key=key_id) for key_id in settings.api_keys
        }
        # Metric children bound once: the success path does no label lookups.
        self._predict_ok = metrics.requests.labels(endpoint="predict", status="200")
        self._predict_seconds = metrics.request_seconds.labels(endpoint="predict")

    def routes(self) -> list[Route]:
        return [
            Route(HEALTH_PATH, self.healthz, methods=["GET"]),
            Route(READY_PATH, self.readyz, methods=["GET"]),
            # Reached through Starlette only for what the app does not route to it directly.
            Route(PREDICT_PATH, _AsgiEndpoint(self.predict), methods=["POST"]),
            Route("/api/v1/predictions", self.history, methods=["GET"]),
        ]

    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> None:
        """401 unless the headers carry a valid key; the request is counted under its id."""
        self._by_key[self._auth.check(headers)].inc()

    def count(self, endpoint: str, status: int) -> None:
        self._metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()

    async def healthz(self, request: Request) -> Response:
        return json_response(_ALIVE)

    async def readyz(self, request: Request) -> Response:
        """Started and not draining (admission.py answers 503 while draining), and not waiting
        for its own schema: a database with an older schema than this gateway's (its rollout's
        migrations not applied yet) leaves the traffic to the version before. The model or the
        database being away is no reason to leave the LoadBalancer, whose clients would get
        refused connections instead of a 503 with Retry-After; and this asks neither of them,
        so a flood of probes costs no model call and no pool connection."""
        if self._store.awaiting_migrations():
            return json_response(_AWAITING_MIGRATIONS, 503)
        return json_response(_READY)

    async def predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /api/v1/predict, as a bare ASGI app: the gateway's hot path builds no Starlette
        request or response objects and runs through no middleware (the app calls it directly)."""
        started = time.perf_counter()
        try:
            body = await self._predict(scope, receive, started)
        except ApiError as exc:
            self.count("predict", exc.status)
            await exc.response()(scope, receive, send)
            return
        except ClientDisconnectedError:
            # Nobody to answer, so no status to count: the HTTP server counts the request
            # (mlstack_gateway_refused_requests_total, by what ended it).
            return
        except Exception:
            log.exception("predict failed")
            self.count("predict", 500)
            await error_response(500, "internal server error")(scope, receive, send)
            return
        self._predict_ok.inc()
        self._predict_seconds.observe(time.perf_counter() - started)
        await send_json(send, 200, body)

    async def _predict(self, scope: Scope, receive: Receive, started: float) -> bytes:
        headers = scope["headers"]
        self.authenticate(headers)
        key = idempotency_key(headers)
        settings = self._settings
        try:
            # The body is dropped once parsed, not held through the model call and the commit.
            payload = parse_predict_body(
                await read_body(receive, headers, settings.max_body_bytes),
                settings.max_batch_rows,
                self._client.n_features,
            )
        except BodyError as exc:
            raise ApiError(exc.status, exc.message) from None
        request_id = new_request_id() if key is None else key
        called = time.perf_counter()
        try:
            answer = await self._client.infer(request_id, payload)
        except ApiError:
            # The model fails or is away: a retry whose request is stored needs no model.
            if key is None or (stored := await self._stored(key, payload)) is None:
                raise
            body = _stored_answer(key, stored)
            self._metrics.stored_answers.inc()
            return body
        answered = time.perf_counter()
        if self._client.n_features is None:
            # The model took this width: remember it to validate later requests here.
            self._client.n_features = payload.n_features
        self._metrics.model_seconds.observe(answered - called)
        predictions_json = orjson.dumps(answer.predictions)
        record = PredictionRecord(
            request_id=request_id,
            model_name=settings.model_name,
            model_version=answer.model_version,
            instances_json=orjson.dumps(payload.rows).decode(),
            predictions_json=predictions_json.decode(),
            latency_ms=round((answered - started) * 1000, 3),
            keyed=key is not None,
        )
        try:
            # Returns only once the row is committed: no 200 for an unsaved prediction.
            stored = await self._store.save(record)
        except StoreUnavailableError as exc:
            raise ApiError(503, f"prediction not confirmed as stored, try again: {exc}") from None
        if stored is not None:
            # The key's earlier request is stored (and now confirmed as any commit): a retry
            # gets its answer, not a second one (the model may have changed since).
            return _stored_answer(request_id, stored)
        self._metrics.predictions.inc(len(payload.rows))
        return _answer(predictions_json, answer.model_version, request_id)

    async def _stored(self, key: str, payload: PredictInput) -> StoredPrediction | None:
        """What the key's earlier request stored, if the store can tell now."""
        try:
            return await self._store.stored(key, orjson.dumps(payload.rows).decode())
        except StoreUnavailableError:
            return None

    def _limit(self, request: Request) -> int:
        raw = request.query_params.get("limit")
        if raw is None:
            return DEFAULT_HISTORY_LIMIT
        maximum = self._settings.history_max_limit
        try:
            limit = read_count(raw, maximum)
        except ValueError:
            limit = None
        if limit is None or not 1 <= limit <= maximum:
            raise ApiError(422, f"limit must be an integer from 1 to {maximum}, got {raw[:40]!r}")
        return limit

    async def history(self, request: Request) -> Response:
        try:
            self.authenticate(request.scope["headers"])
            limit = self._limit(request)
            cursor = request.query_params.get("cursor")
            before = NEWEST if cursor is None else parse_cursor(cursor)
            try:
                page = await self._store.recent(limit, before)
            except StoreUnavailableError as exc:
                raise ApiError(503, str(exc)) from None
        except ApiError as exc:
            self.count("predictions", exc.status)
            raise
        self.count("predictions", 200)
        return json_response(page.body(limit))
