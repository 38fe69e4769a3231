"""The gateway's new connections to the model: a pod on a dead node, and a busy event loop.

A Service sends each new connection to one of its pods, drawn anew each time; a pod on a node
that died keeps its share until the node is marked not ready, and a connect to it is never
answered. Each call here is the gateway's ``ModelClient.infer`` on uvloop, as the gateway runs
it, on a connection of its own (a pool of its own: the case where a new connection is drawn),
to the project's model server on 127.0.0.1, with the gateway's defaults but for
``MODEL_CONNECT_TIMEOUT_SECONDS``: ``--baseline`` (0.5 s, the call's whole deadline: one
connect, nothing begun beside it, as before 2026-12-07) against each ``--connect-timeout``,
alternating call by call, so that the machine's noise falls on both alike. Two conditions:

- *one SYN in three dropped*: an nftables rule on the loopback's output drops a SYN to the
  model's port one time in three (``numgen random``): a model pod of three on a node that died;
- *the event loop busy*: a task beside the calls blocks the loop for 20-60 ms at each of its
  turns (a gateway short of CPU): a connect completes while the loop cannot see it.

It reports the calls answered, the connects begun beside an unanswered one, and the calls'
95th-percentile time as a ratio to the baseline's.

Needs root (nft); the table is removed however the run ends.

    sudo .venv/bin/python -m bench.model_connect --out bench/results/model-connect.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from bench.servers import API_KEY, start_model, started
from e2e.process import run
from harness.services import GATEWAY_SRC, import_service

TABLE: Final = "mlstack_bench_connect"
# One connect in DROP_ONE_IN is unanswered: one pod of three on a dead node.
DROP_ONE_IN: Final = 3
# How long the busy condition blocks the event loop at each turn: drawn in this range.
STALL_SECONDS: Final = (0.02, 0.06)
ROW: Final = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'


@dataclass
class Outcomes:
    """The calls of one MODEL_CONNECT_TIMEOUT_SECONDS: seconds each, and what failed, by answer."""

    connect_timeout: float
    seconds: list[float] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)
    slow_connects: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.seconds) - sum(self.failed.values())

    def p95(self) -> float:
        return statistics.quantiles(self.seconds, n=100, method="inclusive")[94]


@contextmanager
def unanswered_connects(port: int) -> Iterator[None]:
    """Drop one SYN in DROP_ONE_IN to 127.0.0.1:`port` while inside."""
    rule = (
        f"ip daddr 127.0.0.1 tcp dport {port} tcp flags & (syn | ack) == syn "
        f"numgen random mod {DROP_ONE_IN} == 0 counter drop"
    )
    ruleset = (
        f"table inet {TABLE} {{\n  chain output {{\n"
        f"    type filter hook output priority filter; policy accept;\n    {rule}\n  }}\n}}\n"
    )
    run("nft", "-f", "-", stdin=ruleset)
    try:
        yield
    finally:
        run("nft", "delete", "table", "inet", TABLE, check=False)


async def _busy(stop: asyncio.Event, draw: random.Random) -> None:
    while not stop.is_set():
        time.sleep(draw.uniform(*STALL_SECONDS))  # the whole loop waits
        await asyncio.sleep(0)


async def measure(
    model_url: str, connect_timeouts: list[float], calls: int, *, busy: bool
) -> list[Outcomes]:
    from mlstack_gateway.breaker import CircuitBreaker
    from mlstack_gateway.client import ModelClient
    from mlstack_gateway.errors import ApiError
    from mlstack_gateway.http_pool import HttpPool
    from mlstack_gateway.ids import new_request_id
    from mlstack_gateway.metrics import GatewayMetrics
    from mlstack_gateway.payload import parse_predict_body
    from mlstack_gateway.settings import GatewaySettings

    payload = parse_predict_body(ROW, 10, 4)
    outcomes = [Outcomes(timeout) for timeout in connect_timeouts]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hog = loop.create_task(_busy(stop, random.Random(7))) if busy else None
    for _ in range(calls):
        for outcome in outcomes:
            env = {
                "MLSTACK_API_KEY": API_KEY,
                "MODEL_URL": model_url,
                "MODEL_CONNECT_TIMEOUT_SECONDS": str(outcome.connect_timeout),
            }
            settings = GatewaySettings.from_env(env)
            metrics = GatewayMetrics()
            # No breaker: every call is measured on its own draw.
            client = ModelClient(settings, CircuitBreaker(calls + 1, 1.0), metrics)
            # What ModelClient.start makes, without its metadata call's own connection.
            client._pool = HttpPool(
                settings.model_url,
                max_connections=1,
                connect_timeout=settings.model_connect_timeout_seconds,
                on_slow_connect=metrics.model_slow_connects.inc,
            )
            started_at = loop.time()
            try:
                await client.infer(new_request_id(), payload)
            except ApiError as exc:
                outcome.failed[str(exc)] = outcome.failed.get(str(exc), 0) + 1
            outcome.seconds.append(loop.time() - started_at)
            slow = metrics.registry.get_sample_value("mlstack_gateway_model_slow_connects_total")
            outcome.slow_connects += slow or 0.0
            await client.close()
    if hog is not None:
        stop.set()
        await hog
    return outcomes


def table(condition: str, outcomes: list[Outcomes]) -> list[str]:
    baseline = outcomes[0]
    lines = [
        f"## {condition}",
        "",
        "| `MODEL_CONNECT_TIMEOUT_SECONDS` | answered | 503s | connects begun beside one "
        "unanswered | 95th percentile time |",
        "| --- | --- | --- | --- | --- |",
    ]
    for outcome in outcomes:
        failed = ", ".join(f"{count} {text!r}" for text, count in sorted(outcome.failed.items()))
        lines.append(
            f"| {outcome.connect_timeout:g} | {outcome.answered} of {len(outcome.seconds)} "
            f"({outcome.answered / len(outcome.seconds):.1%}) | {failed or 'none'} | "
            f"{outcome.slow_connects:.0f} | {outcome.p95() / baseline.p95():.2f} |"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model_connect", description=__doc__)
    parser.add_argument("--calls", type=int, default=600, help="per setting, SYNs dropped")
    parser.add_argument("--busy-calls", type=int, default=60, help="per setting, loop busy")
    parser.add_argument("--baseline", type=float, default=0.5)
    parser.add_argument("--connect-timeout", type=float, action="append")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("nft needs root: run it with sudo")
    import_service(GATEWAY_SRC)
    import uvloop

    timeouts = [args.baseline, *(args.connect_timeout or [0.1])]
    text = [
        "# The gateway's new connections to the model (`bench/model_connect.py`)",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} before. Each call on a new connection, the settings "
        "alternating call by call; times are ratios to the first row's (the baseline).",
        "",
    ]
    conditions = (
        (f"One SYN in {DROP_ONE_IN} dropped", args.calls, False),
        (
            f"The event loop blocked {STALL_SECONDS[0]:g}-{STALL_SECONDS[1]:g} s at each turn",
            args.busy_calls,
            True,
        ),
    )
    with tempfile.TemporaryDirectory(prefix="mlstack-bench-") as folder:
        work = Path(folder)
        with started(start_model(work / "models", work)) as model:
            port = urlsplit(model.url).port
            assert port is not None
            for condition, calls, busy in conditions:
                with (
                    nullcontext() if busy else unanswered_connects(port),
                    asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
                ):
                    outcomes = runner.run(measure(model.url, timeouts, calls, busy=busy))
                text += table(condition, outcomes)
    report = "\n".join(text)
    sys.stdout.write(report)
    if args.out is not None:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
