"""The gateway's connections to the model: a pod on a dead node, and a busy event loop.

A Service sends each new connection to one of its pods, drawn anew each time; a pod on a node
that died keeps its share until the node is marked not ready, and a connect to it is never
answered; a connection already open to it, pooled, is never answered either. Each call here is
the gateway's ``ModelClient.infer`` on uvloop, as the gateway runs it, to the project's model
server on 127.0.0.1, with the gateway's defaults but for the one setting a condition varies:
its baseline (the setting as it was before 2026-12-07) against each other value, alternating
call by call (round by round), so that the machine's noise falls on all alike. The conditions:

- *one SYN in three dropped* (``MODEL_CONNECT_TIMEOUT_SECONDS``: ``--baseline`` 0.5 s, the
  call's whole deadline, one connect and nothing begun beside it; each ``--connect-timeout``):
  an nftables rule drops a SYN to the model's port one time in three as it arrives
  (``numgen random``): a model pod of three on a node that died. Each call on a connection of
  its own (a pool of its own: the case where a new connection is drawn);
- *the event loop busy* (the same setting): a task beside the calls blocks the loop for 20-60 ms
  at each of its turns (a gateway short of CPU): a connect completes while the loop cannot see
  it;
- *a pooled connection to a dead pod* (``MODEL_ACK_TIMEOUT_SECONDS``: 0, never looked at,
  against each ``--ack-timeout``): in each round three calls at once open three pooled
  connections (three pods); every packet on one of them, drawn at random, is dropped from then
  on, as is one SYN in three; then three calls at once, one of which is sent on it.

It reports the calls answered, the connects begun beside an unanswered one, the connections
closed with a request unacknowledged, and the calls' 95th-percentile time as a ratio to the
baseline's.

It runs itself in a network of its own (harness/private_network.py: a user namespace, no
privilege needed), so that its nftables rules and the model server's port touch nothing else
on the machine and go when it ends.

    .venv/bin/python -m bench.model_connect --out bench/results/model-connect.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from bench.servers import API_KEY, start_model, started
from harness.private_network import dropping, in_own_network, unavailable
from harness.services import GATEWAY_SRC, import_service

TABLE: Final = "mlstack_bench_connect"
# One connect in DROP_ONE_IN is unanswered: one pod of three on a dead node. The pooled
# condition opens as many connections, one per pod.
DROP_ONE_IN: Final = 3
# How long the busy condition blocks the event loop at each turn: drawn in this range.
STALL_SECONDS: Final = (0.02, 0.06)
ROW: Final = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
# Set in the run that main() starts in a network of its own.
IN_OWN_NETWORK: Final = "MLSTACK_BENCH_IN_OWN_NETWORK"


@dataclass
class Outcomes:
    """The calls with one value of the setting a condition varies: seconds each, what failed
    (by answer), and the client's counters."""

    setting: str
    value: float
    seconds: list[float] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)
    slow_connects: float = 0.0
    unacknowledged: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.seconds) - sum(self.failed.values())

    def p95(self) -> float:
        return statistics.quantiles(self.seconds, n=100, method="inclusive")[94]


def unanswered_connects(port: int) -> str:
    """The nftables rule that drops one SYN in DROP_ONE_IN to 127.0.0.1:`port`."""
    return (
        f"ip daddr 127.0.0.1 tcp dport {port} tcp flags & (syn | ack) == syn "
        f"numgen random mod {DROP_ONE_IN} == 0 counter drop"
    )


async def _busy(stop: asyncio.Event, draw: random.Random) -> None:
    while not stop.is_set():
        time.sleep(draw.uniform(*STALL_SECONDS))  # the whole loop waits
        await asyncio.sleep(0)


class Clients:
    """The gateway's model client with the settings of one Outcomes and a pool of
    `max_connections`, opened without the metadata call (whose connection would be pooled)."""

    def __init__(self, model_url: str, outcome: Outcomes, max_connections: int) -> None:
        from mlstack_gateway.breaker import CircuitBreaker
        from mlstack_gateway.client import ModelClient
        from mlstack_gateway.metrics import GatewayMetrics
        from mlstack_gateway.payload import parse_predict_body
        from mlstack_gateway.settings import GatewaySettings

        env = {
            "MLSTACK_API_KEY": API_KEY,
            "MODEL_URL": model_url,
            "MODEL_POOL_SIZE": str(max_connections),
            outcome.setting: str(outcome.value),
        }
        settings = GatewaySettings.from_env(env)
        self.outcome = outcome
        self.metrics = GatewayMetrics()
        # No breaker: every call is measured on its own.
        self.client = ModelClient(settings, CircuitBreaker(1_000_000, 1.0), self.metrics)
        self.client.open_pool()
        self._payload = parse_predict_body(ROW, 10, 4)

    async def call(self, *, measured: bool = True) -> None:
        """One inference; its time and any failure recorded in the outcome when `measured`."""
        from mlstack_gateway.errors import ApiError
        from mlstack_gateway.ids import new_request_id

        outcome = self.outcome
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        try:
            await self.client.infer(new_request_id(), self._payload)
        except ApiError as exc:
            if not measured:
                raise
            outcome.failed[str(exc)] = outcome.failed.get(str(exc), 0) + 1
        if measured:
            outcome.seconds.append(loop.time() - started_at)

    def pooled_ports(self) -> list[int]:
        """The local ports of the pool's idle connections."""
        return [
            conn._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
            for conn in self.client.pool._idle
        ]

    async def close(self) -> None:
        for name in ("slow_connects", "unacknowledged"):
            sample = self.metrics.registry.get_sample_value(f"mlstack_gateway_model_{name}_total")
            setattr(self.outcome, name, getattr(self.outcome, name) + (sample or 0.0))
        await self.client.close()


async def measure_new_connections(
    model_url: str, outcomes: list[Outcomes], calls: int, *, busy: bool
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hog = loop.create_task(_busy(stop, random.Random(7))) if busy else None
    for _ in range(calls):
        for outcome in outcomes:
            clients = Clients(model_url, outcome, max_connections=1)
            await clients.call()
            await clients.close()
    if hog is not None:
        stop.set()
        await hog


async def measure_pooled(model_url: str, port: int, outcomes: list[Outcomes], rounds: int) -> None:
    draw = random.Random(11)
    for _ in range(rounds):
        for outcome in outcomes:
            clients = Clients(model_url, outcome, max_connections=64)
            await asyncio.gather(*(clients.call(measured=False) for _ in range(DROP_ONE_IN)))
            ports = clients.pooled_ports()
            assert len(ports) == DROP_ONE_IN, ports
            dead = f"ip daddr 127.0.0.1 tcp sport {draw.choice(ports)} tcp dport {port} drop"
            with dropping(TABLE, [dead, unanswered_connects(port)]):
                await asyncio.gather(*(clients.call() for _ in range(DROP_ONE_IN)))
            await clients.close()


def table(condition: str, outcomes: list[Outcomes]) -> list[str]:
    baseline = outcomes[0]
    lines = [
        f"## {condition}",
        "",
        f"| `{baseline.setting}` | answered | 503s | connects begun beside one unanswered | "
        "connections closed, request unacknowledged | 95th percentile time |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for outcome in outcomes:
        failed = ", ".join(f"{count} {text!r}" for text, count in sorted(outcome.failed.items()))
        lines.append(
            f"| {outcome.value:g} | {outcome.answered} of {len(outcome.seconds)} "
            f"({outcome.answered / len(outcome.seconds):.1%}) | {failed or 'none'} | "
            f"{outcome.slow_connects:.0f} | {outcome.unacknowledged:.0f} | "
            f"{outcome.p95() / baseline.p95():.2f} |"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model_connect", description=__doc__)
    parser.add_argument("--calls", type=int, default=600, help="per setting, SYNs dropped")
    parser.add_argument("--busy-calls", type=int, default=60, help="per setting, loop busy")
    parser.add_argument(
        "--rounds",
        type=int,
        default=200,
        help=f"per setting, a pooled connection dead: {DROP_ONE_IN} calls each",
    )
    parser.add_argument("--baseline", type=float, default=0.5)
    parser.add_argument("--connect-timeout", type=float, action="append")
    parser.add_argument("--ack-timeout", type=float, action="append")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if IN_OWN_NETWORK not in os.environ:
        why_not = unavailable()
        if why_not is not None:
            parser.error(f"cannot run in a network of its own: {why_not}")
        again = [
            sys.executable,
            "-m",
            "bench.model_connect",
            *(sys.argv[1:] if argv is None else argv),
        ]
        env = {**os.environ, IN_OWN_NETWORK: "1"}
        return subprocess.run(in_own_network(again), check=False, env=env).returncode
    import_service(GATEWAY_SRC)
    import uvloop

    def outcomes(setting: str, values: list[float]) -> list[Outcomes]:
        return [Outcomes(setting, value) for value in values]

    from mlstack_gateway.settings import GatewaySettings

    # Against the gateway's defaults unless told otherwise.
    defaults = GatewaySettings.from_env({"MLSTACK_API_KEY": API_KEY, "MODEL_URL": "http://model"})
    connect_timeouts = [
        args.baseline,
        *(args.connect_timeout or [defaults.model_connect_timeout_seconds]),
    ]
    ack_timeouts = [0.0, *(args.ack_timeout or [defaults.model_ack_timeout_seconds])]
    text = [
        "# The gateway's connections to the model (`bench/model_connect.py`)",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} before. The settings alternate call by call (round by "
        "round); times are ratios to the first row's (the baseline).",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="mlstack-bench-") as folder:
        work = Path(folder)
        with started(start_model(work / "models", work)) as model:
            port = urlsplit(model.url).port
            assert port is not None

            def run(
                condition: str, measured: list[Outcomes], coroutine: Coroutine[Any, Any, None]
            ) -> None:
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    runner.run(coroutine)
                text.extend(table(condition, measured))

            setting = "MODEL_CONNECT_TIMEOUT_SECONDS"
            syn = outcomes(setting, connect_timeouts)
            with dropping(TABLE, [unanswered_connects(port)]):
                run(
                    f"One SYN in {DROP_ONE_IN} dropped, each call on a new connection",
                    syn,
                    measure_new_connections(model.url, syn, args.calls, busy=False),
                )
            busy = outcomes(setting, connect_timeouts)
            run(
                f"The event loop blocked {STALL_SECONDS[0]:g}-{STALL_SECONDS[1]:g} s at each "
                "turn, each call on a new connection",
                busy,
                measure_new_connections(model.url, busy, args.busy_calls, busy=True),
            )
            pooled = outcomes("MODEL_ACK_TIMEOUT_SECONDS", ack_timeouts)
            run(
                f"One pooled connection in {DROP_ONE_IN} to a dead pod, and one SYN in "
                f"{DROP_ONE_IN} dropped",
                pooled,
                measure_pooled(model.url, port, pooled, args.rounds),
            )
    report = "\n".join(text)
    sys.stdout.write(report)
    if args.out is not None:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
