"""The gateway's process: the API on PORT (HTTPS when TLS_CERT_FILE and TLS_KEY_FILE are set, the
pair read again every TLS_RELOAD_SECONDS) and /metrics and /dependencies on METRICS_PORT, two
uvicorn servers on one event loop, run and drained on SIGTERM by ``mlstack_common.serving``:
``/readyz`` answers 503 at once (admission.py), and the requests in flight finish.
"""

from __future__ import annotations

import dataclasses

from mlstack_common import serving
from mlstack_common.http_limits import limited_protocol

from mlstack_gateway.admission import Admission
from mlstack_gateway.app import create_app
from mlstack_gateway.certificates import ServingCertificate
from mlstack_gateway.metrics import MetricsEndpoint
from mlstack_gateway.settings import GatewaySettings


async def serve(settings: GatewaySettings) -> int:
    """Serve until SIGTERM or SIGINT, then drain; the process's exit code."""
    gateway = create_app(settings)
    admission = Admission(gateway, settings.max_concurrent_requests, gateway.metrics)
    refused = gateway.metrics.refused_connections
    http = limited_protocol(
        dataclasses.replace(
            settings.http_limits,
            on_refusal=lambda reason: refused.labels(reason=reason).inc(),
        )
    )
    tls = None
    if settings.tls_files is not None:
        tls = ServingCertificate(*settings.tls_files, reloads=gateway.metrics.tls_reloads)
    # The app's pools open and close with the API server; the metrics server has none.
    api = serving.server(
        admission,
        settings,
        settings.port,
        http,
        lifespan=True,
        ssl_context_factory=(lambda config, default: tls.context) if tls else None,
    )
    gateway.metrics.watch_connections(lambda: len(api.server_state.connections))
    scrape = MetricsEndpoint(gateway.metrics, gateway.dependencies.detail)
    metrics = serving.server(scrape, settings, settings.metrics_port, http, lifespan=False)
    return await serving.serve(
        api,
        admission,
        settings.shutdown_timeout_seconds,
        # The metrics port first: a port taken stops the process before the app opens its pools.
        first=(metrics,),
        background=(lambda: tls.watch(settings.tls_reload_seconds),) if tls else (),
    )
