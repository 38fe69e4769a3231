"""The model's gRPC server bounds its connections (mlstack_model.grpc.connections):
how often a client may ping, how long a connection may stay idle or open at all, how many may be
open at once. Probed on real processes with HTTP/2 frames sent one by one (hostile.Http2Client),
each limit set small enough to be reached, and with grpc's own client for what a well-behaved
one sees. Never an upper bound on seconds (the machine is shared): GOAWAYs, closes and answers,
and how long the server waited at least."""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from mlstack_common.env import SettingsError
from mlstack_model.grpc.connections import connection_options
from mlstack_model.settings import ModelSettings
from tritonclient.grpc import service_pb2 as pb

from harness.poll import eventually
from harness.services import ModelProcess, start_and_wait
from tests.services import oip
from tests.services.hostile import ENHANCE_YOUR_CALM, NO_ERROR, FrameType, Http2Client

LIVE = oip.method_path("ServerLive")
# The limits the processes below are started with (the defaults are minutes).
PING_INTERVAL_SECONDS = 0.2
IDLE_SECONDS = 1.0
AGE_SECONDS = 1.0
# gRPC moves each connection's age by up to 10% either way.
AGE_JITTER = 0.1
CAP = 2


def live(channel: grpc.Channel) -> bool:
    """ServerLive over grpc's own client."""
    answer = oip.call(channel, "ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse)
    return bool(answer.live)


def answered_live(client: Http2Client, stream: int) -> bool:
    """Whether the server answered ServerLive on ``stream``, whose call is in flight, once its
    message is sent."""
    if not client.finish_call(stream, pb.ServerLiveRequest().SerializeToString()):
        return False
    message = client.answer(stream)
    return message is not None and pb.ServerLiveResponse.FromString(message).live


def call_live(client: Http2Client, stream: int) -> bool:
    client.start_call(stream, LIVE)
    return answered_live(client, stream)


@contextlib.contextmanager
def connection(target: str) -> Iterator[Http2Client]:
    """A connection to ``target`` that the server serves: its SETTINGS came."""
    with Http2Client(target) as client:
        assert client.accepted()
        yield client


def model(model_dir: Path, log_dir: Path, **env: str) -> Iterator[ModelProcess]:
    service = start_and_wait(ModelProcess(model_dir, log_dir, env), "ready")
    yield service
    service.stop()


# -- pings ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pinging_model(model_dir: Path, log_dir: Path) -> Iterator[ModelProcess]:
    yield from model(model_dir, log_dir, GRPC_MIN_PING_INTERVAL_SECONDS=str(PING_INTERVAL_SECONDS))


def test_a_ping_flood_gets_goaway_enhance_your_calm(model_server: ModelProcess) -> None:
    """Pings back to back, each sent once the one before is acknowledged, on a server with its
    defaults: the connection ends with GOAWAY ENHANCE_YOUR_CALM, and others are served."""
    with connection(model_server.grpc_target) as client:
        acknowledged = 0
        while client.ping(acknowledged.to_bytes(8, "big")):
            acknowledged += 1
            assert acknowledged < 100, "a hundred pings back to back, all acknowledged"
        assert client.closed
    assert client.goaway is not None
    assert (client.goaway.error, client.goaway.debug) == (ENHANCE_YOUR_CALM, b"too_many_pings")
    # The first pings are answered: a client is cut off for the rate, not for pinging.
    assert acknowledged >= 1
    with grpc.insecure_channel(model_server.grpc_target) as channel:
        assert live(channel)


def test_pings_at_the_allowed_interval_keep_an_idle_connection(pinging_model: ModelProcess) -> None:
    """A client keeping its connection alive, without a call, with pings spaced twice
    GRPC_MIN_PING_INTERVAL_SECONDS apart (gRPC's default would take a third of them, on an
    idle connection, for a flood)."""
    with connection(pinging_model.grpc_target) as client:
        for n in range(6):
            # Sent once the previous one is acknowledged, then after the pause: the server
            # reads each at least the pause after the one before.
            assert client.ping(n.to_bytes(8, "big")), f"ping {n}: {client.goaway}"
            time.sleep(2 * PING_INTERVAL_SECONDS)
        assert client.goaway is None
        assert call_live(client, 1)


# -- idle connections ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idle_model(model_dir: Path, log_dir: Path) -> Iterator[ModelProcess]:
    yield from model(model_dir, log_dir, KEEPALIVE_TIMEOUT_SECONDS=str(IDLE_SECONDS))


def test_an_idle_connection_gets_goaway_and_is_closed(idle_model: ModelProcess) -> None:
    with connection(idle_model.grpc_target) as client:
        started = time.monotonic()
        assert call_live(client, 1)
        client.wait_closed()
        # Idle from the end of the call, which came after its start.
        closed_after = time.monotonic() - started
    assert client.goaway is not None
    # The call was processed: a client retries none of it elsewhere.
    assert client.goaway.last_stream == 1
    # (gRPC's timers may fire a little early, never a tenth of the limit.)
    assert closed_after >= 0.9 * IDLE_SECONDS


def test_a_call_in_flight_keeps_its_connection_past_the_idle_limit(
    idle_model: ModelProcess,
) -> None:
    with connection(idle_model.grpc_target) as client:
        client.start_call(1, LIVE)
        time.sleep(3 * IDLE_SECONDS)
        assert answered_live(client, 1)
        assert client.goaway is None


def test_a_client_whose_idle_connection_was_closed_calls_again(idle_model: ModelProcess) -> None:
    """grpc's own client sees its connection go (its channel leaves READY) and opens another
    at its next call."""
    states: queue.Queue[grpc.ChannelConnectivity] = queue.Queue()
    with grpc.insecure_channel(idle_model.grpc_target) as channel:
        assert live(channel)
        channel.subscribe(states.put)
        left_ready = False

        def channel_left_ready() -> bool:
            nonlocal left_ready
            while not states.empty():
                left_ready |= states.get() != grpc.ChannelConnectivity.READY
            return left_ready

        eventually(channel_left_ready, "the channel's connection closed by the server", 30)
        assert live(channel)
        channel.unsubscribe(states.put)


# -- connection age ------------------------------------------------------------------------------


def aged_model(model_dir: Path, log_dir: Path, grace_seconds: float) -> Iterator[ModelProcess]:
    """Connections AGE_SECONDS old get GOAWAY; their calls in flight have `grace_seconds`."""
    yield from model(
        model_dir,
        log_dir,
        GRPC_MAX_CONNECTION_AGE_SECONDS=str(AGE_SECONDS),
        GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS=f"{grace_seconds:g}",
    )


@pytest.fixture(scope="module")
def aging_model(model_dir: Path, log_dir: Path) -> Iterator[ModelProcess]:
    """A minute of grace: longer than any call below."""
    yield from aged_model(model_dir, log_dir, 60)


@pytest.fixture(scope="module")
def hasty_model(model_dir: Path, log_dir: Path) -> Iterator[ModelProcess]:
    """A second of grace, for a call whose message never comes."""
    yield from aged_model(model_dir, log_dir, 1)


def test_an_old_connection_gets_goaway_and_finishes_its_call_in_flight(
    aging_model: ModelProcess,
) -> None:
    opened = time.monotonic()
    with connection(aging_model.grpc_target) as client:
        client.start_call(1, LIVE)
        goaway = client.wait_goaway()
        aged = time.monotonic() - opened
        assert goaway is not None
        # Not an error: the client is asked to move to a new connection.
        assert goaway.error == NO_ERROR
        assert answered_live(client, 1)
        # With nothing left in flight, the server closes it.
        client.wait_closed()
    assert aged >= (1 - AGE_JITTER) * AGE_SECONDS
    with grpc.insecure_channel(aging_model.grpc_target) as channel:
        assert live(channel)


def test_a_call_that_outlasts_the_grace_is_cut_off(hasty_model: ModelProcess) -> None:
    opened = time.monotonic()
    with connection(hasty_model.grpc_target) as client:
        client.start_call(1, LIVE)
        # The call's message never comes.
        frames = client.wait_closed()
        closed_after = time.monotonic() - opened
    assert client.goaway is not None
    assert not [frame for frame in frames if frame.stream == 1 and frame.type == FrameType.DATA]
    # The age, then the grace of a second.
    assert closed_after >= (1 - AGE_JITTER) * AGE_SECONDS + 0.9


# -- a cap on open connections -------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped_model(model_dir: Path, log_dir: Path) -> Iterator[ModelProcess]:
    yield from model(model_dir, log_dir, MAX_CONNECTIONS=str(CAP))


def served(target: str) -> bool:
    """Whether a new connection to ``target`` is served (the server's SETTINGS come)."""
    with Http2Client(target) as client:
        return client.accepted()


def test_a_connection_beyond_the_cap_is_closed_and_those_open_are_served(
    capped_model: ModelProcess,
) -> None:
    target = capped_model.grpc_target
    with connection(target) as first, connection(target) as second:
        first.start_call(1, LIVE)
        # One more is closed before a frame.
        assert not served(target)
        with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as refused:
            live(channel)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # Those open keep working: the call in flight, and a new one.
        assert answered_live(first, 1)
        assert call_live(second, 1)
    # Both closed: the server has room again.
    eventually(lambda: served(target), "a new connection served once two have closed", 30)


# -- settings ------------------------------------------------------------------------------------


def test_the_connection_bounds_have_documented_defaults() -> None:
    options = dict(connection_options(ModelSettings.from_env({})))
    assert options == {
        "grpc.max_allowed_incoming_connections": 1024,
        "grpc.max_connection_idle_ms": 75_000,
        "grpc.max_connection_age_ms": 300_000,
        "grpc.max_connection_age_grace_ms": 5_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.min_ping_interval_without_data_ms": 5_000,
        "grpc.http2.max_ping_strikes": 2,
    }


@pytest.mark.parametrize(
    ("variable", "value", "refusal"),
    [
        ("GRPC_MAX_CONNECTION_AGE_SECONDS", "0.5", "must be >= 1.0, got 0.5"),
        ("GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS", "0", "must be >= 0.1, got 0"),
        ("GRPC_MIN_PING_INTERVAL_SECONDS", "0.01", "must be >= 0.1, got 0.01"),
        ("GRPC_MIN_PING_INTERVAL_SECONDS", "inf", "must be a finite number, got 'inf'"),
    ],
)
def test_a_connection_bound_out_of_range_is_refused(
    variable: str, value: str, refusal: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        ModelSettings.from_env({variable: value})
    assert str(refused.value) == f"{variable} {refusal}"
