"""Settings from environment variables, with defaults that run on a laptop."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlstack_common.env import env_integer, env_number
from mlstack_common.http_limits import HttpLimits


def default_model_dir() -> Path:
    """Where locally trained artifacts are cached (the image sets MODEL_DIR instead)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "mlstack" / "models"


@dataclass(frozen=True)
class ModelSettings:
    host: str
    # REST on port, gRPC on grpc_port, both on host.
    port: int
    grpc_port: int
    model_name: str
    # None means "the newest version found in model_dir".
    model_version: str | None
    model_dir: Path
    # Largest batch (rows) one infer request may carry, and the largest request body.
    max_batch_rows: int
    max_body_bytes: int
    # Batches with more rows than this are scored in a worker thread, off the event loop.
    inline_batch_rows: int
    # Infer requests in flight (REST and gRPC together) beyond which the server answers 503
    # (gRPC UNAVAILABLE) at once, before reading the body: with max_body_bytes, a memory bound.
    max_concurrent_requests: int
    # REST: the header size limit (431) and the header and body read timeouts (408).
    http_limits: HttpLimits
    # REST: how long a keep-alive connection may wait, idle, for its next request.
    keepalive_timeout_seconds: float
    log_level: str
    access_log: bool

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ModelSettings:
        env = dict(os.environ if environ is None else environ)
        version = env.get("MODEL_VERSION", "").strip() or None
        model_dir = env.get("MODEL_DIR", "").strip()
        return cls(
            host=env.get("HOST", "0.0.0.0"),
            port=env_integer(env, "PORT", 8080),
            grpc_port=env_integer(env, "GRPC_PORT", 8081),
            model_name=env.get("MODEL_NAME", "").strip() or "iris",
            model_version=version,
            model_dir=Path(model_dir) if model_dir else default_model_dir(),
            max_batch_rows=env_integer(env, "MAX_BATCH_ROWS", 4096),
            # A full batch of MAX_BATCH_ROWS rows in JSON takes well under 1 MiB.
            max_body_bytes=env_integer(env, "MAX_BODY_BYTES", 2 * 1024 * 1024),
            inline_batch_rows=env_integer(env, "INLINE_BATCH_ROWS", 64),
            # As many as the gateway's pool to the model (MODEL_POOL_SIZE) opens.
            max_concurrent_requests=env_integer(env, "MAX_CONCURRENT_REQUESTS", 64),
            http_limits=HttpLimits.from_env(env),
            keepalive_timeout_seconds=env_number(env, "KEEPALIVE_TIMEOUT_SECONDS", 75.0, 1.0),
            log_level=env.get("LOG_LEVEL", "info").lower(),
            access_log=env.get("ACCESS_LOG", "").lower() in {"1", "true", "yes"},
        )
