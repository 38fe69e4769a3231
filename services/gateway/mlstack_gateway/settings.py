"""Settings from environment variables, with defaults that run on a laptop: the gateway's
(GatewaySettings) and its schema migrations command's (MigrateSettings, ``python -m
mlstack_gateway.migrate``), which read DATABASE_URL the same way."""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlstack_common.env import (
    SettingsError,
    env_flag,
    env_integer,
    env_log_level,
    env_number,
    env_port,
)
from mlstack_common.settings import ServiceSettings, environment

from mlstack_gateway.certificates import load_pair
from mlstack_gateway.postgres_url import POSTGRES_SCHEMES, check_postgres_url

# Below this a page could seldom hold more than one prediction of a full batch.
HISTORY_MIN_BYTES = 64 * 1024


def _secret(env: dict[str, str], name: str, optional: bool = False) -> str:
    """`name` itself, or the contents (UTF-8 text) of the file `name_FILE` names (Kubernetes
    mounts secrets as files, so they never appear in the pod's environment). An `optional`
    secret's file may be absent: a Secret without that key mounts no file for it."""
    path = env.get(f"{name}_FILE", "").strip()
    if not path:
        return env.get(name, "")
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if optional:
            return ""
        raise SettingsError(f"{name}_FILE={path} cannot be read: no such file") from None
    except OSError as error:
        raise SettingsError(f"{name}_FILE={path} cannot be read: {error.strerror}") from None
    except UnicodeDecodeError:
        # Not the decoder's message: it quotes the secret's byte it stopped at, and where.
        raise SettingsError(f"{name}_FILE={path} cannot be read: it is not UTF-8 text") from None


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


def _model_url(env: dict[str, str]) -> str:
    """MODEL_URL: the model server's REST base URL. No default: each launcher knows where its
    model listens (the Deployment, `make serve`, harness.services), and a guess would send
    predictions to whatever else answers there."""
    model_url = env.get("MODEL_URL", "").strip()
    if not model_url:
        raise SettingsError(
            "MODEL_URL must give the model server's REST URL (http://host:port) the gateway "
            "sends predictions to"
        )
    if not model_url.startswith(("http://", "https://")):
        raise SettingsError(f"MODEL_URL must be an http(s) URL, got {model_url!r}")
    return model_url


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
        load_pair(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), cert, key)
    except OSError as error:
        raise SettingsError(
            f"TLS_CERT_FILE={cert} and TLS_KEY_FILE={key} do not load as a certificate chain "
            f"and its private key: {error.strerror or error}"
        ) from None
    return Path(cert), Path(key)


def database_url_from_env(env: dict[str, str]) -> str | None:
    """The PostgreSQL URL of DATABASE_URL, or of the file DATABASE_URL_FILE names, checked
    (check_postgres_url); None when neither is set (the embedded SQLite file). Each part of it
    percent-encoded, the password may hold any character (components.database.connection_url
    writes it so)."""
    url = _secret(env, "DATABASE_URL").strip() or None
    if url is not None:
        given = _given(env, "DATABASE_URL")
        if not url.startswith(POSTGRES_SCHEMES):
            raise SettingsError(f"{given} must give a postgresql:// URL (unset it for SQLite)")
        check_postgres_url(url, given)
    return url


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


@dataclass(frozen=True, kw_only=True)
class GatewaySettings(ServiceSettings):
    """The shared fields (ServiceSettings: host, port, model_name, the request limits, the
    HTTP limits, logging) and the gateway's own."""

    # HTTPS on `port` from this certificate chain and key; None: plain HTTP.
    tls_files: tuple[Path, Path] | None
    # How often the pair is read again, to serve a renewed certificate without a restart.
    tls_reload_seconds: float
    # /metrics is served on this port only, never on `port`.
    metrics_port: int
    # The keys accepted as X-API-Key, by id (`current`, and `previous` during a rotation).
    api_keys: Mapping[str, str]
    model_url: str
    # postgresql://... or None for the embedded SQLite file in data_dir.
    database_url: str | None
    # DATABASE_MIGRATE (default true): whether the gateway brings database_url's schema up to
    # date as it connects (the migrations of stores.postgres.MIGRATIONS, under an advisory lock),
    # which takes a role that may change the schema. False: it never changes the schema (it may
    # then connect as a role that can only read and add rows, services/database/roles.sql), and
    # only checks, with a SELECT, that every migration it needs has been applied, by `python -m
    # mlstack_gateway.migrate` (MigrateSettings) run before it as the schema's owner. Until they
    # have, it treats the database as not connected: what needs it answers 503 with Retry-After,
    # and it checks again every half second; while the database holds an older schema than its
    # own (not none at all), /readyz answers 503 too. The embedded SQLite file is always migrated.
    database_migrate: bool
    # postgresql://... of the hot standbys that may serve GET /api/v1/predictions (Service
    # `database-read`), or None: every read on database_url. Writes and migrations
    # always use database_url.
    database_read_url: str | None
    # A history read goes to database_url instead when the standby reports more replay lag
    # than this, or cannot say (its WAL receiver is not streaming): the staleness a read from
    # database_read_url may have, plus WAL still in flight on the network.
    database_read_max_lag_seconds: float
    data_dir: Path
    model_timeout_seconds: float
    model_connect_timeout_seconds: float
    # How long a model call may go unanswered before its acknowledgement is looked at
    # (http_pool.py); 0: never.
    model_ack_timeout_seconds: float
    model_retries: int
    model_pool_size: int
    breaker_failure_threshold: int
    breaker_reset_seconds: float
    db_pool_size: int
    db_write_timeout_seconds: float
    history_max_limit: int
    # The bytes one history answer may take; a page ends before the row that would pass it.
    history_max_bytes: int

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "predictions.sqlite3"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> GatewaySettings:
        env = environment(environ)
        api_keys = _api_keys(env)
        model_url = _model_url(env)
        url = database_url_from_env(env)
        database_read_url = _database_read_url(env, url)
        data_dir = env.get("DATA_DIR", "").strip()
        shared = cls.shared_from_env(env, max_batch_rows=1024, max_body_bytes=1024 * 1024)
        port = shared["port"]
        metrics_port = env_port(env, "METRICS_PORT", 9090)
        if metrics_port == port:
            raise SettingsError(
                f"METRICS_PORT must differ from PORT ({port}): /metrics has a port of its own"
            )
        return cls(
            **shared,
            tls_files=_tls_files(env),
            tls_reload_seconds=env_number(env, "TLS_RELOAD_SECONDS", 30.0, 0.1),
            metrics_port=metrics_port,
            api_keys=api_keys,
            model_url=model_url.rstrip("/"),
            database_url=url,
            database_migrate=env_flag(env, "DATABASE_MIGRATE", True),
            database_read_url=database_read_url,
            database_read_max_lag_seconds=env_number(
                env, "DATABASE_READ_MAX_LAG_SECONDS", 5.0, 0.0
            ),
            # /tmp is the writable emptyDir in Kubernetes and exists on every laptop.
            data_dir=Path(data_dir) if data_dir else Path(tempfile.gettempdir()) / "mlstack",
            model_timeout_seconds=env_number(env, "MODEL_TIMEOUT_SECONDS", 0.5, 0.01),
            model_connect_timeout_seconds=env_number(
                env, "MODEL_CONNECT_TIMEOUT_SECONDS", 0.1, 0.01
            ),
            model_ack_timeout_seconds=env_number(env, "MODEL_ACK_TIMEOUT_SECONDS", 0.3, 0.0),
            model_retries=env_integer(env, "MODEL_RETRIES", 6, minimum=0),
            model_pool_size=env_integer(env, "MODEL_POOL_SIZE", 64),
            breaker_failure_threshold=env_integer(env, "BREAKER_FAILURE_THRESHOLD", 5),
            breaker_reset_seconds=env_number(env, "BREAKER_RESET_SECONDS", 1.0, 0.01),
            db_pool_size=env_integer(env, "DB_POOL_SIZE", 4),
            db_write_timeout_seconds=env_number(env, "DB_WRITE_TIMEOUT_SECONDS", 5.0, 0.1),
            history_max_limit=env_integer(env, "HISTORY_MAX_LIMIT", 1000),
            history_max_bytes=env_integer(
                env, "HISTORY_MAX_BYTES", 512 * 1024, minimum=HISTORY_MIN_BYTES
            ),
        )


@dataclass(frozen=True)
class MigrateSettings:
    """What ``python -m mlstack_gateway.migrate`` reads: DATABASE_URL (or DATABASE_URL_FILE)
    as the gateway does, which must be set (the schema it migrates is PostgreSQL's), given as a
    role that may change the schema (its owner, not the role the gateway serves as)."""

    database_url: str
    # DATABASE_MIGRATE_TIMEOUT_SECONDS (default 300): how long the command may take in all:
    # waiting for a server that does not answer yet (or refuses the role or database, which
    # may not have been made yet), at most half a second apart, and the
    # migrations. Past it, the command fails, and what it last waited for is rolled back.
    timeout_seconds: float
    log_level: str

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> MigrateSettings:
        env = environment(environ)
        url = database_url_from_env(env)
        if url is None:
            raise SettingsError(
                "DATABASE_URL (or DATABASE_URL_FILE) must give the postgresql:// URL of the "
                "database to migrate, as the role that owns its schema"
            )
        return cls(
            database_url=url,
            timeout_seconds=env_number(env, "DATABASE_MIGRATE_TIMEOUT_SECONDS", 300.0, 1.0),
            log_level=env_log_level(env),
        )
