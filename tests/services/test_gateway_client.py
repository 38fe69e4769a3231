"""The gateway's HTTP client to the model, against small scripted servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from mlstack_gateway.breaker import BreakerState, CircuitBreaker
from mlstack_gateway.client import ModelClient
from mlstack_gateway.errors import ApiError
from mlstack_gateway.http_pool import ConnectError, DisconnectedError, HttpPool, ResponseError
from mlstack_gateway.ids import new_request_id
from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.payload import parse_predict_body
from mlstack_gateway.settings import GatewaySettings

from components.app import MODEL_NAME
from harness.poll import eventually_async
from harness.ports import LOOPBACK, free_port
from tests.services.model_stand_in import (
    METADATA,
    PREDICT_OUTPUT,
    model_reply,
    read_request,
    serve_model,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Origin:
    """A server whose every connection runs ``handler(reader, writer, connection_number)``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.peak_open = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        try:
            await self.handler(reader, writer, self.connections)
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def origin(
    handler: Handler, receive_buffer: int | None = None
) -> AsyncIterator[tuple[Origin, str]]:
    """The server on a port of 127.0.0.1, and its URL; each connection's receive buffer
    `receive_buffer` bytes when given (the kernel's choice otherwise)."""
    state = Origin(handler)
    listener = socket.socket()
    if receive_buffer is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    listener.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(state._serve, sock=listener)
    port = server.sockets[0].getsockname()[1]
    try:
        yield state, f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def answer_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while await read_request(reader) is not None:
        writer.write(OK)
        await writer.drain()


def answer_once(data: bytes) -> Handler:
    """A handler that answers a connection's first request with ``data``, then waits for the
    client to close."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(data)
        await writer.drain()
        await reader.read()

    return handler


def test_one_keep_alive_connection_serves_consecutive_calls() -> None:
    async def run() -> int:
        async with origin(answer_all) as (server, url):
            pool = HttpPool(url, max_connections=4, connect_timeout=1)
            for _ in range(5):
                response = await pool.request("POST", "/infer", b"{}", timeout=1)
                assert (response.status, response.body) == (200, b"{}")
            await pool.close()
            return server.connections

    assert asyncio.run(run()) == 1


def test_a_connection_older_than_its_max_age_is_replaced_once_its_call_is_done() -> None:
    """Under a load that never leaves one idle, a connection is still replaced once it is old:
    a Service's pod added since gets a share of the calls only through new connections."""

    async def run() -> tuple[int, int]:
        async with origin(answer_all) as (server, url):
            pool = HttpPool(url, max_connections=1, connect_timeout=1, max_age_seconds=0.2)
            for _ in range(3):
                await pool.request("GET", "/", timeout=1)
            young = server.connections
            await asyncio.sleep(0.3)  # past the age, give or take its tenth
            for _ in range(3):
                await pool.request("GET", "/", timeout=1)
            await pool.close()
            return young, server.connections

    young, old = asyncio.run(run())
    assert young == 1
    assert old == 2


def test_the_pool_never_opens_more_connections_than_its_limit() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await read_request(reader) is not None:
            await asyncio.sleep(0.02)
            writer.write(OK)
            await writer.drain()

    async def run() -> tuple[list[int], int]:
        async with origin(slow) as (server, url):
            pool = HttpPool(url, max_connections=2, connect_timeout=1)
            calls = [pool.request("GET", "/", timeout=5) for _ in range(10)]
            statuses = [r.status for r in await asyncio.gather(*calls)]
            await pool.close()
            return statuses, server.peak_open

    statuses, peak = asyncio.run(run())
    assert statuses == [200] * 10
    assert peak == 2


def test_a_call_limited_to_connections_answered_since_opens_one_when_none_has() -> None:
    """``answered_since``: a pooled connection only if it has answered a call since then (the
    others may lead to the same gone peer as one that went unacknowledged), else a new one;
    with the pool full, its idle connection unused longest is closed to make room, and the pool
    stays within its limit. The new one, once it has answered, is taken by the next such call."""

    async def run() -> tuple[list[int], int]:
        async with origin(answer_all) as (server, url):
            loop = asyncio.get_running_loop()
            pool = HttpPool(url, max_connections=2, connect_timeout=1)
            await asyncio.gather(*(pool.request("GET", "/", timeout=5) for _ in range(2)))
            since = loop.time()
            statuses = []
            for _ in range(2):
                response = await pool.request("GET", "/", timeout=5, answered_since=since)
                statuses.append(response.status)

            async def two_open() -> bool:
                return server.open == 2

            await eventually_async(two_open, "the longest idle connection closed", 10)
            await pool.close()
            return statuses, server.connections

    assert asyncio.run(run()) == ([200, 200], 3)


def test_a_silent_server_times_out_at_the_deadline() -> None:
    """A server that never answers: the call raises the pool's own TimeoutError, no sooner than
    its deadline. Nothing else can end it: the server stays silent until the client closes,
    and the connect timeout is a minute. No upper bound on the seconds is asserted (a busy
    machine may run the timer late); a call still waiting after 30 s fails the test."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.read()  # never answers

    async def timed_out(pool: HttpPool, timeout: float) -> TimeoutError:
        call = asyncio.create_task(pool.request("GET", "/", timeout=timeout))
        done, _ = await asyncio.wait({call}, timeout=30)
        if call not in done:
            call.cancel()
            pytest.fail(f"a {timeout} s call still waiting after 30 s")
        error = call.exception()
        assert isinstance(error, TimeoutError), repr(error)
        return error

    async def run() -> tuple[float, TimeoutError, int]:
        async with origin(silent) as (server, url):
            pool = HttpPool(url, max_connections=2, connect_timeout=60)
            started = time.monotonic()
            error = await timed_out(pool, 0.2)
            elapsed = time.monotonic() - started
            await timed_out(pool, 0.1)
            await pool.close()
            return elapsed, error, server.connections

    elapsed, error, connections = asyncio.run(run())
    assert str(error) == "no response before the deadline"
    assert elapsed >= 0.2
    assert connections == 2  # a connection that timed out is never reused


@pytest.mark.parametrize(
    ("body_bytes", "reads_at_once"),
    [(100, True), (1024 * 1024, False)],
    ids=["slow-to-answer", "slow-to-read-a-long-body"],
)
def test_a_live_server_slow_to_answer_or_to_read_keeps_its_connection(
    body_bytes: int, reads_at_once: bool
) -> None:
    """A server that answers 0.6 s after it read the request, or that begins reading a 1 MiB
    body only after 0.6 s, its receive buffer far shorter, past an ack_timeout of 0.25 s: its
    kernel acknowledged the request (or the body's start), so the call is answered on its one
    connection, and no connection is counted as unacknowledged."""

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        if not reads_at_once:
            await asyncio.sleep(0.6)
        while await read_request(reader) is not None:
            if reads_at_once:
                await asyncio.sleep(0.6)
            writer.write(OK)
            await writer.drain()

    async def run() -> tuple[int, int, int]:
        unacknowledged: list[None] = []
        async with origin(slow, receive_buffer=64 * 1024) as (server, url):
            pool = HttpPool(
                url,
                max_connections=1,
                connect_timeout=1,
                ack_timeout=0.25,
                on_unacknowledged=lambda: unacknowledged.append(None),
            )
            response = await pool.request("POST", "/infer", b"1" * body_bytes, timeout=10)
            await pool.close()
            return response.status, len(unacknowledged), server.connections

    assert asyncio.run(run()) == (200, 0, 1)


@contextmanager
def unanswered() -> Iterator[socket.socket]:
    """A listener on the loopback whose accept queue is full (room for one connection, which a
    socket of this test's holds): the kernel drops each new SYN, so a connect hangs unanswered,
    as one to a pod on a node that died does, until the listener is served."""
    listener = socket.socket()
    with listener, socket.socket() as holder:
        listener.bind((LOOPBACK, 0))
        listener.listen(0)
        holder.connect(listener.getsockname())
        yield listener


def url_of(listener: socket.socket) -> str:
    host, port = listener.getsockname()
    return f"http://{host}:{port}"


def test_a_connect_no_one_answers_gets_others_beside_it_until_the_deadline() -> None:
    """Unanswered: another connect is begun each connect timeout (each counted), none answers,
    and the call ends at its deadline with the pool's TimeoutError, not a ConnectError: no time
    is left to send it again."""
    slow: list[None] = []

    async def run() -> Exception:
        with unanswered() as listener:
            pool = HttpPool(
                url_of(listener),
                max_connections=1,
                connect_timeout=0.1,
                on_slow_connect=lambda: slow.append(None),
            )
            with pytest.raises(TimeoutError) as deadline:
                await pool.request("GET", "/", timeout=1)
            await pool.close()
            return deadline.value

    deadline = asyncio.run(run())
    assert not isinstance(deadline, ConnectError)
    assert str(deadline) == "no connection before the deadline"
    assert slow


def test_a_connect_the_event_loop_was_too_busy_to_see_in_time_is_taken() -> None:
    """The event loop blocked for longer than the connect timeout at each turn (a busy
    gateway): the connect completed meanwhile, and is taken when the loop sees it, whatever
    other connect was begun beside it. Each of three calls on a new pool is answered."""

    async def busy(stop: asyncio.Event) -> None:
        while not stop.is_set():
            time.sleep(0.12)  # the whole loop waits
            await asyncio.sleep(0)

    async def run() -> list[int]:
        async with origin(answer_all) as (_, url):
            stop = asyncio.Event()
            hog = asyncio.create_task(busy(stop))
            statuses = []
            for _ in range(3):
                pool = HttpPool(url, max_connections=1, connect_timeout=0.05)
                try:
                    statuses.append((await pool.request("GET", "/", timeout=30)).status)
                finally:
                    await pool.close()
            stop.set()
            await hog
            return statuses

    assert asyncio.run(run()) == [200] * 3


def test_looking_up_the_host_s_name_is_not_within_the_connect_timeout() -> None:
    """A name server slower than the connect timeout (a Service's name on a busy node) costs
    the call's deadline, not a failed connect: only each connect has the shorter limit. An
    address that refuses is followed by the next one the name has. The name server here is
    the event loop's lookup, answering for the name alone: a refusing address, then the
    server's."""
    asked: list[str] = []

    async def run() -> int:
        async with origin(answer_all) as (_, url):
            port = int(url.rsplit(":", 1)[1])
            refusing = free_port()

            async def slow_lookup(host: str, *args: Any, **kwargs: Any) -> Any:
                asked.append(host)
                await asyncio.sleep(0.5)
                return [
                    (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (LOOPBACK, where))
                    for where in (refusing, port)
                ]

            loop = asyncio.get_running_loop()
            loop.getaddrinfo = slow_lookup  # type: ignore[method-assign, assignment]
            pool = HttpPool(f"http://model.test:{port}", max_connections=1, connect_timeout=0.1)
            try:
                return (await pool.request("GET", "/", timeout=30)).status
            finally:
                await pool.close()

    assert asyncio.run(run()) == 200
    assert asked == ["model.test"]


@pytest.mark.parametrize("served", [True, False], ids=["served-meanwhile", "never-served"])
def test_the_model_client_begins_another_connect_when_one_is_not_answered(served: bool) -> None:
    """A connect no one answers gets another begun beside it after
    MODEL_CONNECT_TIMEOUT_SECONDS, counted in mlstack_gateway_model_slow_connects_total, not
    left to run to the call's deadline: once the listener is served (a new connection that
    reaches a live model pod), the call is answered. Never served, the call is a 503 "timed
    out" at MODEL_TIMEOUT_SECONDS; no call was sent, so none was sent again."""

    async def run() -> tuple[list[Any] | ApiError, float, float]:
        with unanswered() as listener:
            env = {
                "MLSTACK_API_KEY": "k",
                "MODEL_URL": url_of(listener),
                "MODEL_TIMEOUT_SECONDS": "5" if served else "1",
                "MODEL_CONNECT_TIMEOUT_SECONDS": "0.1",
            }
            settings = GatewaySettings.from_env(env)
            metrics = GatewayMetrics()
            client = ModelClient(settings, CircuitBreaker(5, 1.0), metrics)
            # Its metadata call is unanswered too: it runs beside the inference.
            starting = asyncio.create_task(client.start())
            await asyncio.sleep(0)

            def counted(name: str) -> float:
                return metrics.registry.get_sample_value(f"mlstack_gateway_model_{name}") or 0.0

            payload = parse_predict_body(b'{"instances": [[1, 2, 3, 4]]}', 10, 4)
            slow_before = counted("slow_connects_total")
            call = asyncio.create_task(client.infer(new_request_id(), payload))

            async def another_begun() -> bool:
                return counted("slow_connects_total") > slow_before

            await eventually_async(another_begun, "a second connect begun", 30)
            server = await asyncio.start_server(serve_model, sock=listener) if served else None
            try:
                outcome: list[Any] | ApiError = (await call).predictions
            except ApiError as exc:
                outcome = exc
            await starting
            await client.close()
            if server is not None:
                server.close()
            return outcome, counted("slow_connects_total") - slow_before, counted("retries_total")

    outcome, slow, retries = asyncio.run(run())
    assert slow >= 1
    assert retries == 0
    if served:
        assert outcome == [2]
    else:
        assert isinstance(outcome, ApiError)
        assert (outcome.status, str(outcome)) == (503, "model unavailable: timed out")


async def one_request_raises(url: str, error: type[Exception]) -> None:
    """A GET through a pool of its own to ``url`` raises ``error``; the pool is closed after."""
    pool = HttpPool(url, max_connections=1, connect_timeout=1)
    with pytest.raises(error):
        await pool.request("GET", "/", timeout=1)
    await pool.close()


def test_nothing_listening_is_a_connect_error() -> None:
    asyncio.run(one_request_raises(f"http://127.0.0.1:{free_port()}", ConnectError))


def test_a_close_before_the_answer_is_a_disconnect_and_garbage_a_response_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)

    garbage = answer_once(b"SMTP ready\r\n\r\n")

    async def run() -> None:
        async with origin(hang_up) as (_, url):
            await one_request_raises(url, DisconnectedError)
        async with origin(garbage) as (_, url):
            await one_request_raises(url, ResponseError)

    asyncio.run(run())


def test_a_response_without_keep_alive_closes_its_connection() -> None:
    http10 = answer_once(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    async def run() -> int:
        async with origin(http10) as (server, url):
            pool = HttpPool(url, max_connections=1, connect_timeout=1)
            for _ in range(3):
                assert (await pool.request("GET", "/", timeout=1)).status == 200
            await pool.close()
            return server.connections

    assert asyncio.run(run()) == 3


def test_the_model_client_resends_a_call_its_pooled_connection_lost() -> None:
    """The model closed a keep-alive connection just as the next call went out on it: the call
    never reached the model, so the client sends it again on a fresh connection."""

    async def flaky(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int
    ) -> None:
        served = 0
        while (request := await read_request(reader)) is not None:
            if number == 1 and served == 2:
                return  # the first connection hangs up on its third request
            writer.write(model_reply(request))
            await writer.drain()
            served += 1

    async def run() -> tuple[list[Any], int, float]:
        async with origin(flaky) as (server, url):
            settings = GatewaySettings.from_env({"MLSTACK_API_KEY": "k", "MODEL_URL": url})
            metrics = GatewayMetrics()
            client = ModelClient(settings, CircuitBreaker(5, 1.0), metrics)
            await client.start()  # GET metadata: the first request on connection 1
            assert client.n_features == 4
            payload = parse_predict_body(b'{"instances": [[1, 2, 3, 4]]}', 10, 4)
            predictions = []
            for _ in range(2):
                predictions.extend((await client.infer(new_request_id(), payload)).predictions)
            await client.close()
            retries = metrics.registry.get_sample_value("mlstack_gateway_model_retries_total")
            return predictions, server.connections, retries or 0.0

    predictions, connections, retries = asyncio.run(run())
    assert predictions == [2, 2]
    assert connections == 2
    assert retries == 1


@pytest.mark.parametrize("extra", [0, 1], ids=["within-the-retries", "one-more"])
def test_the_model_client_sends_a_call_again_model_retries_times_and_no_more(extra: int) -> None:
    """Every connection the call goes out on closes before the answer, MODEL_RETRIES times in a
    row (a Service still sending a share of new connections to a model pod that died): the next
    try is answered. One failure more and the call is a 503 that names the failure."""
    retries = 0  # MODEL_RETRIES' default, read below
    hung_up = 0

    async def dying(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        nonlocal hung_up
        while (request := await read_request(reader)) is not None:
            infer = request.startswith(b"POST")
            if infer and hung_up < retries + extra:
                hung_up += 1
                return
            writer.write(model_reply(request))
            await writer.drain()

    async def run() -> tuple[list[Any] | ApiError, float]:
        nonlocal retries
        async with origin(dying) as (_, url):
            # A deadline no pause can reach: the count alone decides.
            env = {"MLSTACK_API_KEY": "k", "MODEL_URL": url, "MODEL_TIMEOUT_SECONDS": "30"}
            settings = GatewaySettings.from_env(env)
            retries = settings.model_retries
            metrics = GatewayMetrics()
            client = ModelClient(settings, CircuitBreaker(5, 1.0), metrics)
            await client.start()
            payload = parse_predict_body(b'{"instances": [[1, 2, 3, 4]]}', 10, 4)
            try:
                outcome: list[Any] | ApiError = (
                    await client.infer(new_request_id(), payload)
                ).predictions
            except ApiError as exc:
                outcome = exc
            await client.close()
            sent = metrics.registry.get_sample_value("mlstack_gateway_model_retries_total")
            return outcome, sent or 0.0

    outcome, sent = asyncio.run(run())
    assert retries >= 2
    assert sent == retries
    if extra:
        assert isinstance(outcome, ApiError)
        assert (outcome.status, str(outcome)) == (503, "model unavailable: DisconnectedError")
    else:
        assert outcome == [2]


def _infer_through_client(
    outputs: list[dict[str, Any]],
    *,
    status: int = 200,
    breaker: CircuitBreaker | None = None,
) -> tuple[list[Any], list[Any]]:
    """One prediction of a row through the gateway's ModelClient, against a model that answers
    ``outputs`` (or, with another ``status``, that status and the protocol's error body naming
    it): the predictions the client reads, and the infer request bodies it sent."""
    answer = json.dumps(
        {"model_name": MODEL_NAME, "model_version": "v9", "outputs": outputs}
        if status == 200
        else {"error": f"the model's own words for {status}"}
    )
    sent: list[Any] = []

    async def model(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while (request := await read_request(reader)) is not None:
            infer = request.startswith(b"POST")
            if infer:
                sent.append(json.loads(request.split(b"\r\n\r\n", 1)[1]))
            body = answer.encode() if infer else METADATA
            head = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (
                status if infer else 200,
                len(body),
            )
            writer.write(head + body)
            await writer.drain()

    async def run() -> list[Any]:
        async with origin(model) as (_, url):
            settings = GatewaySettings.from_env({"MLSTACK_API_KEY": "k", "MODEL_URL": url})
            client = ModelClient(settings, breaker or CircuitBreaker(5, 1.0), GatewayMetrics())
            await client.start()
            payload = parse_predict_body(b'{"instances": [[1, 2, 3, 4]]}', 10, 4)
            try:
                return (await client.infer(new_request_id(), payload)).predictions
            finally:
                await client.close()

    return asyncio.run(run()), sent


PROBA_OUTPUT = {"name": "predict_proba", "shape": [1, 3], "datatype": "FP64", "data": [0, 0, 1]}


def test_the_model_client_asks_for_predict_alone() -> None:
    """A request naming no outputs gets every output the model produces (the protocol's
    default); the gateway reads `predict` only, so it names it, and the model answers that
    tensor alone, on its one-row fast path."""
    _, sent = _infer_through_client([PREDICT_OUTPUT])
    (body,) = sent
    assert body["outputs"] == [{"name": "predict"}]
    assert body["inputs"][0]["data"] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "outputs",
    [[PROBA_OUTPUT, PREDICT_OUTPUT], [PREDICT_OUTPUT, PROBA_OUTPUT]],
    ids=["predict-last", "predict-first"],
)
def test_the_model_client_reads_predict_among_every_output(outputs: list[dict[str, Any]]) -> None:
    """An answer that holds more than `predict`, in any order, still gives the predictions:
    the client finds the tensor by its name, not by its place."""
    predictions, _ = _infer_through_client(outputs)
    assert predictions == [2]


@pytest.mark.parametrize(
    ("status", "answered", "said", "breaker_opens"),
    [
        (500, 502, "model failed (500): ", True),
        (404, 502, "model server does not serve this model: ", False),
        (400, 422, "model rejected the input: ", False),
        (503, 503, "model unavailable: ", True),
    ],
)
def test_a_model_that_answers_with_an_error_gets_the_client_the_gateway_s_answer(
    status: int, answered: int, said: str, breaker_opens: bool
) -> None:
    """The model's own failures (a 5xx) are the gateway's 502 and count against the breaker, a
    503 stays a 503 (not loaded yet, or full); a 404 (it does not serve MODEL_NAME) is a 502
    that says so; any other refusal is the client's input, a 422. Each carries the model's
    words. The breaker opens at the first failure here, and only at a failure."""
    breaker = CircuitBreaker(1, 60.0)
    with pytest.raises(ApiError) as raised:
        _infer_through_client([PREDICT_OUTPUT], status=status, breaker=breaker)
    assert (raised.value.status, raised.value.message) == (
        answered,
        f"{said}the model's own words for {status}",
    )
    assert breaker.state is (BreakerState.OPEN if breaker_opens else BreakerState.CLOSED)


def test_request_ids_are_time_ordered_version_7_uuids() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [new_request_id() for _ in range(2000)]
    after_ms = time.time_ns() // 1_000_000
    parsed = [uuid.UUID(i) for i in ids]
    assert all(
        u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == i
        for u, i in zip(parsed, ids, strict=True)
    )
    assert len(set(ids)) == len(ids)
    stamps = [u.int >> 80 for u in parsed]
    assert stamps == sorted(stamps)
    # Unix time in milliseconds, read while they were made (however long that took).
    assert before_ms <= stamps[0] and stamps[-1] <= after_ms
