"""Settings from environment variables, with defaults that run on a laptop."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


class SettingsError(ValueError):
    pass


def _number(env: dict[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {raw}")
    return value


def _integer(env: dict[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _secret(env: dict[str, str], name: str) -> str:
    """`name` itself, or the contents of the file `name_FILE` names (Kubernetes mounts secrets
    as files, so they never appear in the pod's environment)."""
    path = env.get(f"{name}_FILE", "").strip()
    if not path:
        return env.get(name, "")
    try:
        return Path(path).read_text().strip()
    except OSError as error:
        raise SettingsError(f"{name}_FILE={path} cannot be read: {error.strerror}") from None


@dataclass(frozen=True)
class GatewaySettings:
    host: str
    port: int
    api_key: str
    model_url: str
    model_name: str
    # postgresql://... or None for the embedded SQLite file in data_dir.
    database_url: str | None
    data_dir: Path
    max_batch_rows: int
    max_body_bytes: int
    model_timeout_seconds: float
    model_connect_timeout_seconds: float
    model_retries: int
    model_pool_size: int
    breaker_failure_threshold: int
    breaker_reset_seconds: float
    db_pool_size: int
    db_write_timeout_seconds: float
    history_max_limit: int
    log_level: str
    access_log: bool

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "predictions.sqlite3"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> GatewaySettings:
        env = dict(os.environ if environ is None else environ)
        api_key = _secret(env, "MLSTACK_API_KEY")
        if not api_key.strip():
            raise SettingsError(
                "MLSTACK_API_KEY (or MLSTACK_API_KEY_FILE) must give the key clients send as "
                "X-API-Key"
            )
        model_url = env.get("MODEL_URL", "").strip() or "http://127.0.0.1:8081"
        if not model_url.startswith(("http://", "https://")):
            raise SettingsError(f"MODEL_URL must be an http(s) URL, got {model_url!r}")
        database_url = _secret(env, "DATABASE_URL").strip() or None
        if database_url is not None and not database_url.startswith(
            ("postgresql://", "postgres://")
        ):
            raise SettingsError("DATABASE_URL must be a postgresql:// URL (unset it for SQLite)")
        data_dir = env.get("DATA_DIR", "").strip()
        return cls(
            host=env.get("HOST", "0.0.0.0"),
            port=_integer(env, "PORT", 8080),
            api_key=api_key,
            model_url=model_url.rstrip("/"),
            model_name=env.get("MODEL_NAME", "").strip() or "iris",
            database_url=database_url,
            # /tmp is the writable emptyDir in Kubernetes and exists on every laptop.
            data_dir=Path(data_dir) if data_dir else Path(tempfile.gettempdir()) / "mlstack",
            max_batch_rows=_integer(env, "MAX_BATCH_ROWS", 1024),
            max_body_bytes=_integer(env, "MAX_BODY_BYTES", 1024 * 1024),
            model_timeout_seconds=_number(env, "MODEL_TIMEOUT_SECONDS", 2.0, 0.01),
            model_connect_timeout_seconds=_number(env, "MODEL_CONNECT_TIMEOUT_SECONDS", 0.5, 0.01),
            model_retries=_integer(env, "MODEL_RETRIES", 2, minimum=0),
            model_pool_size=_integer(env, "MODEL_POOL_SIZE", 64),
            breaker_failure_threshold=_integer(env, "BREAKER_FAILURE_THRESHOLD", 5),
            breaker_reset_seconds=_number(env, "BREAKER_RESET_SECONDS", 1.0, 0.01),
            db_pool_size=_integer(env, "DB_POOL_SIZE", 4),
            db_write_timeout_seconds=_number(env, "DB_WRITE_TIMEOUT_SECONDS", 5.0, 0.1),
            history_max_limit=_integer(env, "HISTORY_MAX_LIMIT", 1000),
            log_level=env.get("LOG_LEVEL", "info").lower(),
            access_log=env.get("ACCESS_LOG", "").lower() in {"1", "true", "yes"},
        )
