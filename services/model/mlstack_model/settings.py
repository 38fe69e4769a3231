"""Settings from environment variables, with defaults that run on a laptop."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlstack_common.env import env_integer, env_number, env_port
from mlstack_common.settings import ServiceSettings, environment


def default_model_dir() -> Path:
    """Where locally trained artifacts are cached (the image sets MODEL_DIR instead)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "mlstack" / "models"


@dataclass(frozen=True, kw_only=True)
class ModelSettings(ServiceSettings):
    """The shared fields (ServiceSettings: host, port, model_name, the request limits, the
    HTTP limits, logging; max_concurrent_requests counts REST and gRPC infer requests together,
    and is checked before a REST body is read: with max_body_bytes, a memory bound for REST;
    gRPC has read a call's message by then) and the model server's own. REST listens on port,
    gRPC on grpc_port, both on host."""

    grpc_port: int
    # The bounds on gRPC connections (mlstack_model.grpc.connections) beside the shared
    # keepalive_timeout_seconds and http_limits.max_connections. How long one stays open before
    # the server sends GOAWAY, so that a client's next connection may reach a replica added since:
    grpc_max_connection_age_seconds: float
    # How long its calls in flight then have to finish.
    grpc_max_connection_age_grace_seconds: float
    # The least time between a client's pings.
    grpc_min_ping_interval_seconds: float
    # None means "the newest version found in model_dir".
    model_version: str | None
    model_dir: Path
    # Batches with more rows than this are scored in a worker thread, off the event loop.
    inline_batch_rows: int

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ModelSettings:
        env = environment(environ)
        version = env.get("MODEL_VERSION", "").strip() or None
        model_dir = env.get("MODEL_DIR", "").strip()
        return cls(
            # A full batch of MAX_BATCH_ROWS rows in JSON takes well under MAX_BODY_BYTES.
            **cls.shared_from_env(env, max_batch_rows=4096, max_body_bytes=2 * 1024 * 1024),
            grpc_port=env_port(env, "GRPC_PORT", 8081),
            model_version=version,
            model_dir=Path(model_dir) if model_dir else default_model_dir(),
            inline_batch_rows=env_integer(env, "INLINE_BATCH_ROWS", 64),
            grpc_max_connection_age_seconds=env_number(
                env, "GRPC_MAX_CONNECTION_AGE_SECONDS", 300.0, 1.0
            ),
            # An infer call takes milliseconds, the largest batch's included.
            grpc_max_connection_age_grace_seconds=env_number(
                env, "GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS", 5.0, 0.1
            ),
            # Half the floor grpc-go and grpc-java put under a client's keepalive interval (10 s):
            # a well-behaved client never comes near it, a client flooding pings at once does.
            grpc_min_ping_interval_seconds=env_number(
                env, "GRPC_MIN_PING_INTERVAL_SECONDS", 5.0, 0.1
            ),
        )
