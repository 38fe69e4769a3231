"""The model server's client: Open Inference Protocol over a pooled keep-alive HTTP/1.1 client.

One deadline bounds every call, retries included; a call that never reached the model
(connection refused, a pooled keep-alive connection the server had closed, or one closed because
the model's TCP acknowledged nothing of the request in time: the pool's) is retried a
bounded number of times with jittered backoff (inference has no side effects, so resending it is
safe); a connect not answered within the connect timeout gets another begun beside it (the
pool's); and a circuit breaker turns a dead model into an immediate 503.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from mlstack_common.backoff import Backoff, Retry
from mlstack_common.tensor_names import INPUT_NAME, OUTPUT_PREDICT

from mlstack_gateway.breaker import CircuitBreaker
from mlstack_gateway.errors import ApiError
from mlstack_gateway.http_pool import (
    ConnectError,
    DisconnectedError,
    HttpClientError,
    HttpPool,
    HttpResponse,
    UnacknowledgedError,
)
from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.payload import PredictInput
from mlstack_gateway.settings import GatewaySettings

log = logging.getLogger("mlstack_gateway.client")

# Failures where the request never reached the model, so it is safe to send again.
_RETRYABLE = (ConnectError, DisconnectedError)
# The one output the gateway reads, as its infer requests name it.
_PREDICT_ONLY = ({"name": OUTPUT_PREDICT},)


@dataclass(frozen=True, slots=True)
class ModelAnswer:
    predictions: list[Any]
    model_version: str


def _error_text(raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode(errors="replace")
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return raw[:200].decode(errors="replace")


# How old a connection to the model grows before it is replaced: kube-proxy spreads connections,
# not requests, over the model's pods, so a pod the autoscaler adds takes its share of a steady
# load as the connections made before it are replaced. A connect to the Service costs the model
# client a fraction of a call; one a pooled connection every half a minute costs nothing it
# could measure.
MODEL_CONNECTION_MAX_AGE_SECONDS = 30.0


class ModelClient:
    def __init__(
        self, settings: GatewaySettings, breaker: CircuitBreaker, metrics: GatewayMetrics
    ) -> None:
        self._settings = settings
        self._breaker = breaker
        self._metrics = metrics
        self._timeout = settings.model_timeout_seconds
        # Full jitter over an exponential step: 0-10 ms, then 0-20 ms, 0-40 ms, then 0-50 ms
        # each. A refused connection is most often one model pod gone that the Service still
        # sends a share of new connections to, each drawn anew: many quick tries reach a live
        # one, where a few long pauses would spend the deadline on the same odds.
        self._backoff = Backoff(0.01, most=0.05, jitter=True, retries=settings.model_retries)
        self._infer_path = f"/v2/models/{settings.model_name}/infer"
        self._metadata_path = f"/v2/models/{settings.model_name}"
        self._ready_path = "/v2/health/ready"
        self._pool: HttpPool | None = None
        # The model's input width, learnt from its metadata (None until the model answered).
        self.n_features: int | None = None
        # Whether the model answered the last time it was asked (an inference, its readiness or
        # its metadata), with anything but a 503: what /metrics and the dependency detail report.
        self.answering = False

    async def start(self) -> None:
        self.open_pool()
        await self.refresh_metadata()

    def open_pool(self) -> None:
        """The pool of connections to the model, as the settings make it: what start() opens
        before it asks for the model's metadata."""
        self._pool = HttpPool(
            self._settings.model_url,
            max_connections=self._settings.model_pool_size,
            connect_timeout=self._settings.model_connect_timeout_seconds,
            max_age_seconds=MODEL_CONNECTION_MAX_AGE_SECONDS,
            ack_timeout=self._settings.model_ack_timeout_seconds,
            on_slow_connect=self._metrics.model_slow_connects.inc,
            on_unacknowledged=self._metrics.model_unacknowledged.inc,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> HttpPool:
        if self._pool is None:
            raise RuntimeError("ModelClient.start() was not called")
        return self._pool

    async def refresh_metadata(self) -> bool:
        """Learn the model's input width; False when the model did not answer."""
        try:
            response = await self.pool.request("GET", self._metadata_path, timeout=self._timeout)
            self.answering = response.status != 503
            if response.status != 200:
                return False
            shape = orjson.loads(response.body)["inputs"][0]["shape"]
            self.n_features = int(shape[-1])
            return True
        except (
            HttpClientError,
            OSError,
            KeyError,
            IndexError,
            TypeError,
            ValueError,
        ) as exc:
            log.debug("model metadata unavailable: %s", exc)
            if isinstance(exc, HttpClientError | OSError):
                self.answering = False
            return False

    async def ready(self, timeout: float = 0.5) -> bool:
        try:
            response = await self.pool.request("GET", self._ready_path, timeout=timeout)
        except (HttpClientError, OSError):
            self.answering = False
            return False
        self.answering = response.status == 200
        return self.answering

    @staticmethod
    def _infer_body(request_id: str, payload: PredictInput) -> bytes:
        # `predict` named: a request that names no outputs gets every one the model produces
        # (the protocol's default), the probabilities too, which the gateway never reads; with
        # one output named, a one-row request takes the model's fast path.
        return orjson.dumps(
            {
                "id": request_id,
                "inputs": [
                    {
                        "name": INPUT_NAME,
                        "shape": [len(payload.rows), payload.n_features],
                        "datatype": "FP64",
                        "data": payload.flat,
                    }
                ],
                "outputs": _PREDICT_ONLY,
            }
        )

    async def _post(self, body: bytes) -> HttpResponse:
        """The inference call, retries included, within one MODEL_TIMEOUT_SECONDS."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        retry: Retry | None = None
        # After a connection went unacknowledged, the next try is on one that has answered
        # since that try began, or a new one: the pool's other idle connections may lead to the
        # same gone pod, and each would cost as long.
        answered_since: float | None = None
        while True:
            began = loop.time()
            try:
                return await self.pool.request(
                    "POST",
                    self._infer_path,
                    body,
                    timeout=deadline - began,
                    answered_since=answered_since,
                )
            except _RETRYABLE as exc:
                if isinstance(exc, UnacknowledgedError):
                    answered_since = began
                # Made on the first failure only: a call that succeeds at once pays nothing.
                if retry is None:
                    retry = self._backoff.start(deadline)
                if not await retry.wait():
                    raise
                self._metrics.model_retries.inc()

    async def infer(self, request_id: str, payload: PredictInput) -> ModelAnswer:
        breaker = self._breaker
        if not breaker.allow():
            self._metrics.model_failures.labels(reason="circuit_open").inc()
            raise ApiError(
                503,
                "model unavailable: circuit breaker open, retry shortly",
                retry_after=breaker.retry_after_seconds(),
            )
        try:
            response = await self._post(self._infer_body(request_id, payload))
        except TimeoutError:
            breaker.record_failure()
            self.answering = False
            self._metrics.model_failures.labels(reason="timeout").inc()
            raise ApiError(503, "model unavailable: timed out") from None
        except (HttpClientError, OSError) as exc:
            breaker.record_failure()
            self.answering = False
            self._metrics.model_failures.labels(reason="connection").inc()
            raise ApiError(503, f"model unavailable: {type(exc).__name__}") from None
        except BaseException:
            breaker.release()
            raise
        status, raw = response.status, response.body
        # 503 (not loaded yet, or full): it cannot take requests now; any other answer can.
        self.answering = status != 503
        if status >= 500:
            breaker.record_failure()
            self._metrics.model_failures.labels(reason="server_error").inc()
            if status == 503:  # not ready or overloaded: the caller may try again shortly
                raise ApiError(503, f"model unavailable: {_error_text(raw)}")
            raise ApiError(502, f"model failed ({status}): {_error_text(raw)}")
        breaker.record_success()
        if status == 404:
            raise ApiError(502, f"model server does not serve this model: {_error_text(raw)}")
        if status != 200:
            raise ApiError(422, f"model rejected the input: {_error_text(raw)}")
        return self._answer(raw, len(payload.rows))

    @staticmethod
    def _answer(raw: bytes, rows: int) -> ModelAnswer:
        try:
            body = orjson.loads(raw)
            for output in body["outputs"]:
                if output["name"] == OUTPUT_PREDICT:
                    predictions = output["data"]
                    break
            else:
                raise KeyError(OUTPUT_PREDICT)
            version = str(body.get("model_version", ""))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ApiError(502, f"model answered an invalid inference response ({exc})") from None
        if not isinstance(predictions, list) or len(predictions) != rows:
            raise ApiError(502, "model answered a wrong number of predictions")
        return ModelAnswer(predictions=predictions, model_version=version)
