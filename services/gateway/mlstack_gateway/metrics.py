"""Prometheus metrics, on a registry of the app's own (served at GET /metrics)."""

from __future__ import annotations

from collections.abc import Callable

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
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "status"],
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
            "Inference calls sent again after the connection failed before the request went out.",
            registry=self.registry,
        )
        self.breaker_open = Gauge(
            "mlstack_gateway_model_circuit_open",
            "1 while the circuit breaker in front of the model is open or half-open.",
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
        self.db_failures = Counter(
            "mlstack_gateway_db_failures",
            "Database writes that failed (and were retried or answered 503).",
            registry=self.registry,
        )

    def watch_breaker(self, is_open: Callable[[], bool]) -> None:
        self.breaker_open.set_function(lambda: 1.0 if is_open() else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
