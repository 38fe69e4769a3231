"""`make bench-failover`: how the database's failover behaves, measured on the real node.

Against a cluster `make e2e-cluster DATABASE_REPLICAS=3` left running (its folder, default
/tmp/mlstack-e2e-cluster), under one loop of predictions through the LoadBalancer, each of these
`--runs` times, one after the other:

- kill:       SIGKILL to the primary's PostgreSQL container;
- delete:     the primary's pod deleted with --force --grace-period=0;
- freeze:     SIGSTOP to every process of the primary's container until another instance is
              labelled primary (Patroni's leader lock expired), then SIGCONT;
- switchover: `make switchover` to the synchronous standby.

For each: the longest time from the event on without an acknowledged prediction (the pause in
writes), the predictions refused (503 with Retry-After) and answered otherwise,
whether another instance became the primary, and the acknowledged predictions missing from the
primary afterwards (must be 0). Each waits for the database to settle (every instance running,
one synchronous standby) before the next. Writes bench/results/database-failover.{md,json}.

    python -m bench.database_failover [--dir /tmp/mlstack-e2e-cluster] [--runs 3]
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from bench.cluster_bench import ClusterBench, arguments, conditions, write_results
from components import database
from e2e.cluster import NAMESPACE, STACK, gateway_url
from harness.poll import eventually
from tests.e2e import app

INSTANCES: Final = 3
SETTLE_SECONDS: Final = 300
# Longer than Patroni's leader lock lives (services/database/patroni.yml, ttl).
FREEZE_SECONDS: Final = 60


@dataclass(frozen=True)
class Outcome:
    event: str
    run: int
    writes_paused_seconds: float
    refused: int
    wrong: int
    acknowledged: int
    lost: int
    primary_before: str
    primary_after: str


class Bench(ClusterBench):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        key = self.workspace.run("config", "get", "apiKey", "--stack", STACK)
        self.predict = functools.partial(app.predict, key=key.stdout.strip())
        self.url = gateway_url(self.kube)

    def stored(self) -> set[str]:
        return set(app.psql(self.kube, "SELECT request_id FROM predictions",
                            app.primary_instance(self.kube)))  # fmt: skip

    def kill(self, primary: int) -> None:
        self.node.ctr("tasks", "kill", "--signal", "SIGKILL", app.container_id(self.kube, primary))

    def delete(self, primary: int) -> None:
        self.kube.kubectl(
            "delete", "pod", database.pod_name(primary), "-n", NAMESPACE,
            "--force", "--grace-period=0", "--wait=false",
        )  # fmt: skip

    def freeze(self, primary: int) -> None:
        app.frozen_until_replaced(self.node, self.kube, primary, FREEZE_SECONDS)

    def switchover(self, primary: int) -> None:
        (standby,) = [
            name
            for name, member in app.members(self.kube).items()
            if member["Role"] == "Sync Standby"
        ]
        done = self.workspace.tool(
            "database_switchover", "--stack", STACK, "--to", standby, timeout=300
        )
        if done.returncode != 0:
            raise RuntimeError(f"make switchover failed: {done.stdout}{done.stderr}")

    def settle(self) -> None:
        eventually(
            lambda: app.settled(self.kube, INSTANCES),
            "the database settled",
            SETTLE_SECONDS,
            interval=1,
        )

    def measure(self, event: str, run: int, disrupt: Callable[[int], None]) -> Outcome:
        self.settle()
        before = app.primary_instance(self.kube)
        load, start = app.under_load(
            self.url,
            lambda: disrupt(before),
            self.settle,
            event,
            limit=900,
            recovery=300,
            call=self.predict,
        )
        acknowledged = app.acknowledged(load)
        after = app.primary_instance(self.kube)
        return Outcome(
            event=event,
            run=run,
            writes_paused_seconds=round(load.longest_pause_after(start), 2),
            refused=sum(a.refused_with_retry_after for a in load.answers),
            wrong=len(load.wrong_answers),
            acknowledged=len(acknowledged),
            lost=len(acknowledged - self.stored()),
            primary_before=database.pod_name(before),
            primary_after=database.pod_name(after),
        )


def write(outcomes: list[Outcome]) -> None:
    measured = {**conditions(), "instances": INSTANCES}
    document = {"conditions": measured, "outcomes": [asdict(o) for o in outcomes]}
    lines = [
        "# Database failover on the real node",
        "",
        f"`make bench-failover`, {measured['date']}; {measured['machine']}; "
        f"{INSTANCES} instances, one loop of predictions through the LoadBalancer "
        "(bench/database_failover.py says what each event is).",
        "",
        "| event | run | writes paused (s) | refused (503) | other failures "
        "| acknowledged | lost | primary before → after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.event} | {o.run} | {o.writes_paused_seconds:.1f} | {o.refused} "
            f"| {o.wrong} | {o.acknowledged} | {o.lost} | {o.primary_before} → "
            f"{o.primary_after} |"
        )
    write_results("database-failover", document, lines)


def main() -> int:
    args = arguments("python -m bench.database_failover")
    bench = Bench(args.dir)
    events: dict[str, Callable[[int], None]] = {
        "kill": bench.kill,
        "delete": bench.delete,
        "freeze": bench.freeze,
        "switchover": bench.switchover,
    }
    outcomes = []
    for run in range(1, args.runs + 1):
        for event, disrupt in events.items():
            outcome = bench.measure(event, run, disrupt)
            print(json.dumps(asdict(outcome)), flush=True)
            outcomes.append(outcome)
    write(outcomes)
    return 0 if all(o.lost == 0 and o.wrong == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
