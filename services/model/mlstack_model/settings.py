"""Settings from environment variables, with defaults that run on a laptop."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_model_dir() -> Path:
    """Where locally trained artifacts are cached (the image sets MODEL_DIR instead)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "mlstack" / "models"


def _int_env(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


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
    log_level: str
    access_log: bool

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ModelSettings:
        env = dict(os.environ if environ is None else environ)
        version = env.get("MODEL_VERSION", "").strip() or None
        model_dir = env.get("MODEL_DIR", "").strip()
        return cls(
            host=env.get("HOST", "0.0.0.0"),
            port=_int_env(env, "PORT", 8080),
            grpc_port=_int_env(env, "GRPC_PORT", 8081),
            model_name=env.get("MODEL_NAME", "").strip() or "iris",
            model_version=version,
            model_dir=Path(model_dir) if model_dir else default_model_dir(),
            max_batch_rows=_int_env(env, "MAX_BATCH_ROWS", 4096),
            max_body_bytes=_int_env(env, "MAX_BODY_BYTES", 8 * 1024 * 1024),
            inline_batch_rows=_int_env(env, "INLINE_BATCH_ROWS", 64),
            log_level=env.get("LOG_LEVEL", "info").lower(),
            access_log=env.get("ACCESS_LOG", "").lower() in {"1", "true", "yes"},
        )
