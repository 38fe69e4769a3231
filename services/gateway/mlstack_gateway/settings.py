"""Settings from environment variables, with defaults that run on a laptop."""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlstack_common.env import SettingsError, env_integer, env_number
from mlstack_common.http_limits import HttpLimits

from mlstack_gateway.postgres_url import POSTGRES_SCHEMES, check_postgres_url

# Below this a page could seldom hold more than one prediction of a full batch.
HISTORY_MIN_BYTES = 64 * 1024


def _secret(env: dict[str, str], name: str, optional: bool = False) -> str:
    """`name` itself, or the contents of the file `name_FILE` names (Kubernetes mounts secrets
    as files, so they never appear in the pod's environment). An `optional` secret's file may
    be absent: a Secret without that key mounts no file for it."""
    path = env.get(f"{name}_FILE", "").strip()
    if not path:
        return env.get(name, "")
    try:
        return Path(path).read_text().strip()
    except FileNotFoundError:
        if optional:
            return ""
        raise SettingsError(f"{name}_FILE={path} cannot be read: no such file") from None
    except OSError as error:
        raise SettingsError(f"{name}_FILE={path} cannot be read: {error.strerror}") from None


def _given(env: dict[str, str], name: str) -> str:
    """The variable a secret came from: `name`, or `name_FILE` when that is set."""
    return f"{name}_FILE" if env.get(f"{name}_FILE", "").strip() else name


def _api_keys(env: dict[str, str]) -> dict[str, str]:
    """The keys clients may send as X-API-Key, by id: `current` (MLSTACK_API_KEY) and, during a
    rotation, `previous` (MLSTACK_API_KEY_PREVIOUS), each from its `_FILE` variant instead when
    that is set. The previous key's file may be absent: the pods name it whether or not a
    rotation is under way."""
    current = _secret(env, "MLSTACK_API_KEY").strip()
    if not current:
        raise SettingsError(
            "MLSTACK_API_KEY (or MLSTACK_API_KEY_FILE) must give the key clients send as X-API-Key"
        )
    keys = {"current": current}
    previous = _secret(env, "MLSTACK_API_KEY_PREVIOUS", optional=True).strip()
    if previous == current:
        raise SettingsError(
            "MLSTACK_API_KEY_PREVIOUS is the same key as MLSTACK_API_KEY: during a rotation it "
            "gives the key being replaced (unset it otherwise)"
        )
    if previous:
        keys["previous"] = previous
    return keys


def _tls_files(env: dict[str, str]) -> tuple[Path, Path] | None:
    """The certificate chain and private key to serve HTTPS from, both or neither; checked by
    loading them, so that a bad pair stops the gateway at start with the reason."""
    cert = env.get("TLS_CERT_FILE", "").strip()
    key = env.get("TLS_KEY_FILE", "").strip()
    if not cert and not key:
        return None
    if not cert or not key:
        given, missing = "TLS_CERT_FILE", "TLS_KEY_FILE"
        if not cert:
            given, missing = missing, given
        raise SettingsError(
            f"{given} is set but {missing} is not: HTTPS needs both the certificate chain and "
            "its private key (set neither for plain HTTP)"
        )
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except OSError as error:
        raise SettingsError(
            f"TLS_CERT_FILE={cert} and TLS_KEY_FILE={key} do not load as a certificate chain "
            f"and its private key: {error.strerror or error}"
        ) from None
    return Path(cert), Path(key)


def _database_read_url(env: dict[str, str], database_url: str | None) -> str | None:
    """The standbys' URL, which only a PostgreSQL primary (DATABASE_URL) can go with."""
    read_url = _secret(env, "DATABASE_READ_URL").strip() or None
    if read_url is None:
        return None
    given = _given(env, "DATABASE_READ_URL")
    if database_url is None:
        raise SettingsError(
            f"{given} is set but DATABASE_URL is not: reads from standbys need the PostgreSQL "
            "primary that takes the writes (set DATABASE_URL too, or unset "
            f"{given} for SQLite)"
        )
    if not read_url.startswith(POSTGRES_SCHEMES):
        raise SettingsError(
            f"{given} must give a postgresql:// URL (the standbys of DATABASE_URL's primary)"
        )
    check_postgres_url(read_url, given)
    return read_url


@dataclass(frozen=True)
class GatewaySettings:
    host: str
    port: int
    # HTTPS on `port` from this certificate chain and key; None: plain HTTP.
    tls_files: tuple[Path, Path] | None
    # How often the pair is read again, to serve a renewed certificate without a restart.
    tls_reload_seconds: float
    # /metrics is served on this port only, never on `port`.
    metrics_port: int
    # The keys accepted as X-API-Key, by id (`current`, and `previous` during a rotation).
    api_keys: Mapping[str, str]
    model_url: str
    model_name: str
    # postgresql://... or None for the embedded SQLite file in data_dir.
    database_url: str | None
    # postgresql://... of the hot standbys that may serve GET /api/v1/predictions (Service
    # `database-read`), or None: every read on database_url. Writes and migrations
    # always use database_url.
    database_read_url: str | None
    # A history read goes to database_url instead when the standby reports more replay lag
    # than this, or cannot say (its WAL receiver is not streaming): the staleness a read from
    # database_read_url may have, plus WAL still in flight on the network.
    database_read_max_lag_seconds: float
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
    # The bytes one history answer may take; a page ends before the row that would pass it.
    history_max_bytes: int
    # Requests in flight (probes aside) beyond which the gateway answers 503 at once.
    max_concurrent_requests: int
    # The header size limit (431) and the header and body read timeouts (408).
    http_limits: HttpLimits
    # How long a keep-alive connection may wait, idle, for its next request.
    keepalive_timeout_seconds: float
    # After SIGTERM: how long in-flight requests may take to finish.
    shutdown_timeout_seconds: float
    log_level: str
    access_log: bool

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "predictions.sqlite3"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> GatewaySettings:
        env = dict(os.environ if environ is None else environ)
        api_keys = _api_keys(env)
        model_url = env.get("MODEL_URL", "").strip() or "http://127.0.0.1:8081"
        if not model_url.startswith(("http://", "https://")):
            raise SettingsError(f"MODEL_URL must be an http(s) URL, got {model_url!r}")
        database_url = _secret(env, "DATABASE_URL").strip() or None
        if database_url is not None:
            given = _given(env, "DATABASE_URL")
            if not database_url.startswith(POSTGRES_SCHEMES):
                raise SettingsError(f"{given} must give a postgresql:// URL (unset it for SQLite)")
            check_postgres_url(database_url, given)
        database_read_url = _database_read_url(env, database_url)
        data_dir = env.get("DATA_DIR", "").strip()
        port = env_integer(env, "PORT", 8080)
        metrics_port = env_integer(env, "METRICS_PORT", 9090)
        if metrics_port == port:
            raise SettingsError(
                f"METRICS_PORT must differ from PORT ({port}): /metrics has a port of its own"
            )
        return cls(
            host=env.get("HOST", "0.0.0.0"),
            port=port,
            tls_files=_tls_files(env),
            tls_reload_seconds=env_number(env, "TLS_RELOAD_SECONDS", 30.0, 0.1),
            metrics_port=metrics_port,
            api_keys=api_keys,
            model_url=model_url.rstrip("/"),
            model_name=env.get("MODEL_NAME", "").strip() or "iris",
            database_url=database_url,
            database_read_url=database_read_url,
            database_read_max_lag_seconds=env_number(
                env, "DATABASE_READ_MAX_LAG_SECONDS", 5.0, 0.0
            ),
            # /tmp is the writable emptyDir in Kubernetes and exists on every laptop.
            data_dir=Path(data_dir) if data_dir else Path(tempfile.gettempdir()) / "mlstack",
            max_batch_rows=env_integer(env, "MAX_BATCH_ROWS", 1024),
            max_body_bytes=env_integer(env, "MAX_BODY_BYTES", 1024 * 1024),
            model_timeout_seconds=env_number(env, "MODEL_TIMEOUT_SECONDS", 0.5, 0.01),
            model_connect_timeout_seconds=env_number(
                env, "MODEL_CONNECT_TIMEOUT_SECONDS", 0.5, 0.01
            ),
            model_retries=env_integer(env, "MODEL_RETRIES", 2, minimum=0),
            model_pool_size=env_integer(env, "MODEL_POOL_SIZE", 64),
            breaker_failure_threshold=env_integer(env, "BREAKER_FAILURE_THRESHOLD", 5),
            breaker_reset_seconds=env_number(env, "BREAKER_RESET_SECONDS", 1.0, 0.01),
            db_pool_size=env_integer(env, "DB_POOL_SIZE", 4),
            db_write_timeout_seconds=env_number(env, "DB_WRITE_TIMEOUT_SECONDS", 5.0, 0.1),
            history_max_limit=env_integer(env, "HISTORY_MAX_LIMIT", 1000),
            history_max_bytes=env_integer(
                env, "HISTORY_MAX_BYTES", 512 * 1024, minimum=HISTORY_MIN_BYTES
            ),
            max_concurrent_requests=env_integer(env, "MAX_CONCURRENT_REQUESTS", 64),
            http_limits=HttpLimits.from_env(env),
            keepalive_timeout_seconds=env_number(env, "KEEPALIVE_TIMEOUT_SECONDS", 75.0, 1.0),
            shutdown_timeout_seconds=env_number(env, "SHUTDOWN_TIMEOUT_SECONDS", 20.0, 0.0),
            log_level=env.get("LOG_LEVEL", "info").lower(),
            access_log=env.get("ACCESS_LOG", "").lower() in {"1", "true", "yes"},
        )
