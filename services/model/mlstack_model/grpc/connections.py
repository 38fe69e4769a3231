"""The bounds the gRPC server puts on its connections, read from the settings: what
``routes.GrpcServer`` gives grpc.aio beside its message and stream limits."""

from __future__ import annotations

from mlstack_model.settings import ModelSettings


def _milliseconds(seconds: float) -> int:
    return round(seconds * 1000)


def connection_options(settings: ModelSettings) -> list[tuple[str, int]]:
    """gRPC core's bounds on connections, as server arguments: how many may be open, how long one
    may stay idle or open at all, and how often its client may ping. By default gRPC bounds none
    of the first three, and allows a client's pings on an idle connection once every two hours,
    which turns away clients that keep a connection alive as grpc-go and grpc-java allow."""
    return [
        # Connections open at once on the gRPC port (MAX_CONNECTIONS, as on the REST port): gRPC
        # closes one more as soon as it accepts it; those open are served as before.
        ("grpc.max_allowed_incoming_connections", settings.http_limits.max_connections),
        # A connection without a call in flight for KEEPALIVE_TIMEOUT_SECONDS gets GOAWAY and is
        # closed: its client reconnects at its next call.
        ("grpc.max_connection_idle_ms", _milliseconds(settings.keepalive_timeout_seconds)),
        # Every connection gets GOAWAY after its age (gRPC adds +-10% jitter), so that clients
        # spread over the replicas that came after them; its calls in flight have the grace to
        # finish, then the connection is closed.
        ("grpc.max_connection_age_ms", _milliseconds(settings.grpc_max_connection_age_seconds)),
        (
            "grpc.max_connection_age_grace_ms",
            _milliseconds(settings.grpc_max_connection_age_grace_seconds),
        ),
        # Pings, with or without a call in flight (gRPC's default: every five minutes with one,
        # every two hours without), at most one per GRPC_MIN_PING_INTERVAL_SECONDS: the third
        # that comes sooner after the one before, since the server last sent headers or data,
        # ends the connection with GOAWAY ENHANCE_YOUR_CALM ("too_many_pings").
        ("grpc.keepalive_permit_without_calls", 1),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            _milliseconds(settings.grpc_min_ping_interval_seconds),
        ),
        ("grpc.http2.max_ping_strikes", 2),
    ]
