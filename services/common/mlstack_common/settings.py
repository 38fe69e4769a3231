"""What both services' settings hold and read the same way: where they listen, how much one request
may carry, how the HTTP server treats connections, and how they log. Each service's settings
subclass ``ServiceSettings`` with their own fields and read the shared ones with
``ServiceSettings.shared_from_env``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlstack_common.env import env_flag, env_integer, env_log_level, env_number, env_port
from mlstack_common.http_limits import HttpLimits


def environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables to read settings from: ``environ``, or the process's environment."""
    return dict(os.environ if environ is None else environ)


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    host: str
    port: int
    # The model's name: the one the model server serves, and the gateway asks for.
    model_name: str
    # The largest batch (rows) one request may carry, and the largest request body.
    max_batch_rows: int
    max_body_bytes: int
    # Requests in flight beyond which the service answers 503 at once (the probes aside).
    max_concurrent_requests: int
    # The header size limit (431) and the header and body read timeouts (408).
    http_limits: HttpLimits
    # How long a keep-alive connection may wait, idle, for its next request (the model's gRPC
    # connections too: mlstack_model.grpc.connections).
    keepalive_timeout_seconds: float
    # After SIGTERM: how long in-flight requests may take to finish (mlstack_common.serving).
    shutdown_timeout_seconds: float
    log_level: str
    access_log: bool

    @staticmethod
    def shared_from_env(
        env: dict[str, str], *, max_batch_rows: int, max_body_bytes: int
    ) -> dict[str, Any]:
        """The shared fields, by name, from HOST, PORT, MODEL_NAME, MAX_BATCH_ROWS,
        MAX_BODY_BYTES, MAX_CONCURRENT_REQUESTS, the HTTP limits' variables,
        KEEPALIVE_TIMEOUT_SECONDS, SHUTDOWN_TIMEOUT_SECONDS, LOG_LEVEL and ACCESS_LOG;
        ``max_batch_rows`` and ``max_body_bytes`` are the service's own defaults."""
        return {
            "host": env.get("HOST", "0.0.0.0"),
            "port": env_port(env, "PORT", 8080),
            "model_name": env.get("MODEL_NAME", "").strip() or "iris",
            "max_batch_rows": env_integer(env, "MAX_BATCH_ROWS", max_batch_rows),
            "max_body_bytes": env_integer(env, "MAX_BODY_BYTES", max_body_bytes),
            # For the model, as many as the gateway's pool to it (MODEL_POOL_SIZE) opens.
            "max_concurrent_requests": env_integer(env, "MAX_CONCURRENT_REQUESTS", 64),
            "http_limits": HttpLimits.from_env(env),
            # Longer than the idle timeouts of the clients in front (the gateway's pool, cloud
            # load balancers), so that the client, not the server, closes an idle connection.
            "keepalive_timeout_seconds": env_number(env, "KEEPALIVE_TIMEOUT_SECONDS", 75.0, 1.0),
            # Within Kubernetes' terminationGracePeriodSeconds (30 s by default) after SIGTERM.
            "shutdown_timeout_seconds": env_number(env, "SHUTDOWN_TIMEOUT_SECONDS", 20.0, 0.0),
            "log_level": env_log_level(env),
            "access_log": env_flag(env, "ACCESS_LOG", False),
        }
