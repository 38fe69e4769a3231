"""The gateway while the model or the database is away: it stays ready (so the LoadBalancer keeps
sending it clients), answers what needs the missing one 503 with Retry-After, and says which one
is away in /metrics and in GET /dependencies on the metrics port. /readyz asks neither of them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness.http import Reply, request
from harness.poll import eventually
from harness.ports import free_port
from harness.postgres import PostgresServer
from harness.services import SETOSA, ServiceProcess, start_gateway, start_model
from tests.services.support import FreezableProxy, history, metric, predict

UP = "mlstack_gateway_dependency_up"


def dependencies(gateway: ServiceProcess) -> dict[str, Any]:
    assert gateway.metrics_url is not None
    reply = request("GET", gateway.metrics_url + "/dependencies")
    assert reply.status == 200, reply.body
    found: dict[str, Any] = reply.json()["dependencies"]
    return found


def wait_for_state(gateway: ServiceProcess, dependency: str, up: bool) -> None:
    """Until both the gauge and the detail say `dependency` is `up` (the background check
    asks every few seconds)."""
    gateway.wait_for(
        f"reporting {dependency} {'up' if up else 'down'}",
        lambda: (
            metric(gateway, UP, dependency=dependency) == (1.0 if up else 0.0)
            and dependencies(gateway)[dependency] == {"up": up}
        ),
        timeout=20,
    )


def assert_refused_with_retry_after(reply: Reply) -> None:
    assert reply.refused_with_retry_after, (reply.status, reply.headers, reply.body)


def test_with_the_model_stopped_the_gateway_stays_ready_and_says_the_model_is_down(
    model_dir: Path, log_dir: Path
) -> None:
    port = free_port()
    model = start_model(model_dir, log_dir, port=port)
    gateway = start_gateway(model.url, log_dir)
    try:
        assert predict(gateway.url, [SETOSA]).status == 200
        wait_for_state(gateway, "model", up=True)
        assert dependencies(gateway)["database"] == {"up": True}
        model.stop()

        assert_refused_with_retry_after(predict(gateway.url, [SETOSA]))
        ready = request("GET", gateway.url + "/readyz")
        assert (ready.status, ready.json()) == (200, {"ready": True})
        wait_for_state(gateway, "model", up=False)
        # What does not need the model is still answered.
        assert history(gateway, "?limit=1").status == 200

        model = start_model(model_dir, log_dir, port=port)
        wait_for_state(gateway, "model", up=True)
        gateway.wait_for("predicting again", lambda: predict(gateway.url, [SETOSA]).status == 200)
    finally:
        gateway.stop()
        model.stop()


def test_with_postgresql_stopped_the_gateway_stays_ready_and_says_the_database_is_down(
    model_server: ServiceProcess, postgres: PostgresServer, log_dir: Path
) -> None:
    dsn = postgres.create_database("degraded")
    gateway = start_gateway(
        model_server.url, log_dir, DATABASE_URL=dsn, DB_WRITE_TIMEOUT_SECONDS="0.5"
    )
    try:
        assert predict(gateway.url, [SETOSA]).status == 200
        wait_for_state(gateway, "database", up=True)
        postgres.stop()
        try:
            assert_refused_with_retry_after(predict(gateway.url, [SETOSA]))
            assert_refused_with_retry_after(history(gateway, "?limit=1"))
            ready = request("GET", gateway.url + "/readyz")
            assert (ready.status, ready.json()) == (200, {"ready": True})
            wait_for_state(gateway, "database", up=False)
            assert dependencies(gateway)["model"] == {"up": True}
        finally:
            postgres.start()
        wait_for_state(gateway, "database", up=True)
        gateway.wait_for("storing again", lambda: predict(gateway.url, [SETOSA]).status == 200)
    finally:
        gateway.stop()


def test_a_flood_of_readiness_probes_is_answered_while_postgresql_hangs_and_its_pool_is_taken(
    model_server: ServiceProcess, postgres: PostgresServer, log_dir: Path
) -> None:
    postgres.create_database("hung")
    proxy = FreezableProxy(postgres.port)
    gateway = start_gateway(
        model_server.url,
        log_dir,
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{proxy.port}/hung",
        DB_POOL_SIZE="2",
        DB_WRITE_TIMEOUT_SECONDS="5",
    )
    try:
        assert predict(gateway.url, [SETOSA]).status == 200
        proxy.freeze()
        with ThreadPoolExecutor(max_workers=16) as pool:
            # Writes that hang on the frozen server hold every connection of the pool.
            writes = [pool.submit(predict, gateway.url, [SETOSA]) for _ in range(4)]
            eventually(
                lambda: metric(gateway, "mlstack_gateway_requests_in_flight") == len(writes),
                "the writes hanging on the frozen server",
                10,
            )
            probes = [
                pool.submit(request, "GET", gateway.url + "/readyz", None, None, 2.0)
                for _ in range(200)
            ]
            statuses = [probe.result().status for probe in probes]
            # Each write waits out DB_WRITE_TIMEOUT_SECONDS, then is refused.
            for write in writes:
                assert_refused_with_retry_after(write.result())
        assert statuses == [200] * len(probes)
        wait_for_state(gateway, "database", up=False)
        proxy.thaw()
        wait_for_state(gateway, "database", up=True)
    finally:
        gateway.stop()
        proxy.close()
