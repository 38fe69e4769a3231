"""Prometheus metrics, on a registry of the app's own, and the ASGI app of the metrics port
(GET /metrics, and GET /dependencies)."""

from __future__ import annotations

import math
from collections.abc import Callable

from mlstack_common.asgi import send_answer, send_json
from mlstack_common.errors import error_body
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from starlette.types import Receive, Scope, Send

# The *_created series double the output and no dashboard here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "mlstack_gateway_requests",
            "HTTP requests answered, by endpoint and status code. A request cut off before its "
            "whole body arrived got no answer: it is in mlstack_gateway_refused_requests_total.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.api_key_requests = Counter(
            "mlstack_gateway_api_key_requests",
            "Requests that presented a valid X-API-Key, by which key: current, or previous "
            "(MLSTACK_API_KEY_PREVIOUS, during a rotation). The key's role, never the key nor "
            "anything derived from it: once previous stays at rest, no client uses the old key.",
            ["key"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "mlstack_gateway_request_duration_seconds",
            "Time to answer a request, by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "mlstack_gateway_predicted_rows",
            "Rows predicted and committed to the database.",
            registry=self.registry,
        )
        self.stored_answers = Counter(
            "mlstack_gateway_stored_answers",
            "Requests with an Idempotency-Key answered with what the key's earlier request "
            "stored, because the model call failed (a retry whose answer was lost, while the "
            "model is away).",
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "mlstack_gateway_model_call_duration_seconds",
            "Time the model server took to answer an inference call.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_failures = Counter(
            "mlstack_gateway_model_failures",
            "Inference calls that failed, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.model_retries = Counter(
            "mlstack_gateway_model_retries",
            "Inference calls sent again after the connection failed before the model had the "
            "request (refused, closed, or dropped with the request unacknowledged).",
            registry=self.registry,
        )
        self.model_slow_connects = Counter(
            "mlstack_gateway_model_slow_connects",
            "Connects to the model not answered within MODEL_CONNECT_TIMEOUT_SECONDS, beside "
            "which another was begun (the first to complete is taken).",
            registry=self.registry,
        )
        self.model_unacknowledged = Counter(
            "mlstack_gateway_model_unacknowledged",
            "Connections to the model closed because the model's TCP acknowledged nothing of a "
            "request sent on them within MODEL_ACK_TIMEOUT_SECONDS.",
            registry=self.registry,
        )
        self.breaker_open = Gauge(
            "mlstack_gateway_model_circuit_open",
            "1 while the circuit breaker in front of the model is open or half-open.",
            registry=self.registry,
        )
        self.dependency_up = Gauge(
            "mlstack_gateway_dependency_up",
            "1 while a service the gateway needs answered when last asked (by a request, or the "
            "background check), 0 while it did not, by dependency: model, database, and "
            "database_read (with DATABASE_READ_URL). Readiness does not follow it: requests "
            "that need one that is down get 503 with Retry-After.",
            ["dependency"],
            registry=self.registry,
        )
        self.commit_rows = Histogram(
            "mlstack_gateway_db_commit_rows",
            "Predictions committed together in one database transaction (group commit).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "mlstack_gateway_db_commit_duration_seconds",
            "Time from a group of rows being taken for a commit to its end (queueing included).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.shed = Counter(
            "mlstack_gateway_shed_requests",
            "Requests answered 503 at once because MAX_CONCURRENT_REQUESTS were in flight.",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "mlstack_gateway_requests_in_flight",
            "Requests being answered (probes aside), counted against MAX_CONCURRENT_REQUESTS.",
            registry=self.registry,
        )
        self.refused_connections = Counter(
            "mlstack_gateway_refused_requests",
            "Requests and connections cut off by the HTTP server itself, by reason "
            "(header_too_large, header_timeout, body_timeout, malformed, write_timeout: a client "
            "that took none of its answer for WRITE_TIMEOUT_SECONDS, max_connections: a "
            "connection beyond MAX_CONNECTIONS, answered 503), and requests whose client closed "
            "the connection in the middle of the body (client_disconnected: nothing answered). "
            "The application answers none of them, save write_timeout's (counted in "
            "mlstack_gateway_requests_total, then dropped).",
            ["reason"],
            registry=self.registry,
        )
        self.open_connections = Gauge(
            "mlstack_gateway_open_connections",
            "Connections open on the API port, counted against MAX_CONNECTIONS (over TLS, from "
            "the end of their handshake).",
            registry=self.registry,
        )
        self.db_failures = Counter(
            "mlstack_gateway_db_failures",
            "Database writes that failed (and were retried or answered 503).",
            registry=self.registry,
        )
        self.db_reads = Counter(
            "mlstack_gateway_db_reads",
            "History reads (GET /api/v1/predictions) on PostgreSQL, by where they were served: "
            "replica (DATABASE_READ_URL, within DATABASE_READ_MAX_LAG_SECONDS of the primary) "
            "or primary (DATABASE_URL).",
            ["source"],
            registry=self.registry,
        )
        self.db_read_fallbacks = Counter(
            "mlstack_gateway_db_read_fallbacks",
            "History reads sent to the primary instead of DATABASE_READ_URL, by reason: lag "
            "(replay lag above DATABASE_READ_MAX_LAG_SECONDS, or a page after a cursor whose "
            "row the standby has not replayed yet), unknown_lag (a standby whose WAL receiver "
            "is not streaming, or a role that may not see it), error (the read URL "
            "not connected yet, failing or slower than a second, or skipped for 5 s after 3 "
            "failures in a row).",
            ["reason"],
            registry=self.registry,
        )
        self.db_read_lag = Gauge(
            "mlstack_gateway_db_read_lag_seconds",
            "Replay lag of the DATABASE_READ_URL server as the last history read sent there "
            "measured it (0 on a primary, or a standby that has replayed all it received); NaN "
            "before any such read, or when the last one could not measure it.",
            registry=self.registry,
        )
        self.db_read_lag.set(math.nan)
        self.tls_reloads = Counter(
            "mlstack_gateway_tls_reloads",
            "Changes of TLS_CERT_FILE or TLS_KEY_FILE seen, by result: loaded (new handshakes "
            "present the new certificate) or refused (the pair did not load; the previous "
            "certificate is still served).",
            ["result"],
            registry=self.registry,
        )

    def watch_connections(self, count: Callable[[], int]) -> None:
        self.open_connections.set_function(count)

    def watch_breaker(self, is_open: Callable[[], bool]) -> None:
        self.breaker_open.set_function(lambda: 1.0 if is_open() else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS_PATH = "/metrics"


DEPENDENCIES_PATH = "/dependencies"


class MetricsEndpoint:
    """The metrics port's whole application: ``GET /metrics``, ``GET /dependencies`` (the JSON
    ``dependencies`` gives: what the gateway knows of the model and the database) and a JSON
    404 for anything else.

    The dependency detail is here, not on the public port: the metrics port is never behind
    the LoadBalancer, and which of its backends is down is nothing an anonymous client needs
    (its requests get 503 with Retry-After) nor should learn."""

    def __init__(self, metrics: GatewayMetrics, dependencies: Callable[[], bytes]) -> None:
        self._metrics = metrics
        self._dependencies = dependencies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path not in (METRICS_PATH, DEPENDENCIES_PATH):
            error = error_body(
                f"not found: the metrics port serves {METRICS_PATH} and {DEPENDENCIES_PATH}"
            )
            await send_json(send, 404, error)
            return
        if scope["method"] not in {"GET", "HEAD"}:
            await send_json(send, 405, error_body("method not allowed: use GET"))
            return
        if path == DEPENDENCIES_PATH:
            await send_json(send, 200, self._dependencies())
            return
        body = self._metrics.render()
        await send_answer(send, 200, body, ((b"content-type", METRICS_CONTENT_TYPE.encode()),))
