"""tools/database_failover.py's decisions, against a stand-in for the stack's instances (the
whole failover runs for real in the e2e suite, test 4t)."""

from __future__ import annotations

from pathlib import Path

import pytest

from components import database
from tools import database_failover as failover
from tools.database_failover import Cluster, FailoverError, Stack, lsn


class Instances(Cluster):
    """Each instance answers as a primary, a standby with WAL positions, or not at all."""

    def __init__(self, stack: Stack, answers: dict[int, str | None]) -> None:
        super().__init__(stack)
        self.answers = answers
        self.scaled: list[str] = []
        self.promoted: list[int] = []

    def kubectl(self, *args: str, timeout: float = 120) -> str:
        if args[:2] == ("scale", "statefulset"):
            self.scaled.append(args[2])
            index = next(i for i in self.answers if database.instance_name(i) == args[2])
            self.answers[index] = None
        return ""

    def running(self, index: int) -> bool:
        return self.answers.get(index) is not None

    def replicas(self, index: int) -> int:
        return 1 if self.running(index) else 0

    def sql(self, index: int, query: str) -> str:
        answer = self.answers.get(index)
        if answer is None:
            raise FailoverError(f"{index} does not answer")
        if "pg_promote" in query:
            self.promoted.append(index)
            self.answers[index] = "primary"
            return "t"
        if answer == "primary":
            return "f" if query == "SELECT pg_is_in_recovery()" else "f||"
        received, replayed = answer.split()
        return "t" if query == "SELECT pg_is_in_recovery()" else f"t|{received}|{replayed}"


def stack(replicas: int = 3, primary: int = 0) -> Stack:
    return Stack("prod", "mlstack-prod", replicas, primary, Path("/nonexistent"), None)


def test_lsn_orders_wal_positions() -> None:
    assert lsn("0/3000060") == 0x3000060
    assert lsn("1/0") > lsn("0/FFFFFFFF")


def test_the_standby_with_the_most_wal_is_promoted_after_the_primary_stopped() -> None:
    cluster = Instances(stack(), {0: "primary", 1: "0/500 0/500", 2: "0/600 0/600"})
    assert failover.failover(stack(), None, cluster) == 2
    assert cluster.scaled == ["database"]
    assert cluster.promoted == [2]


def test_a_target_with_less_wal_than_another_standby_is_refused() -> None:
    cluster = Instances(stack(), {0: "primary", 1: "0/500 0/500", 2: "0/600 0/600"})
    with pytest.raises(FailoverError, match=r"database-2-0 received more WAL .*\(--to 2\)"):
        failover.failover(stack(), 1, cluster)
    assert cluster.promoted == []


def test_a_target_that_is_not_a_standby_is_refused_before_the_primary_stops() -> None:
    cluster = Instances(stack(), {0: "primary", 1: None, 2: "0/600 0/600"})
    with pytest.raises(FailoverError, match=r"instance 1 \(database-1-0\) does not answer"):
        failover.failover(stack(), 1, cluster)
    assert cluster.scaled == [] and cluster.promoted == []


def test_a_standby_promoted_by_an_earlier_run_is_not_promoted_again() -> None:
    # The primary was stopped and instance 1 promoted, then the run stopped before `pulumi up`.
    cluster = Instances(stack(), {0: None, 1: "primary", 2: "0/600 0/600"})
    assert failover.failover(stack(), None, cluster) == 1
    assert cluster.promoted == []


@pytest.mark.parametrize(
    ("replicas", "primary", "wanted", "message"),
    [
        (1, 0, None, "one database instance"),
        (3, 0, 0, "is the primary already"),
        (3, 0, 3, "instances are 0 to 2"),
    ],
)
def test_impossible_requests_change_nothing(
    replicas: int, primary: int, wanted: int | None, message: str
) -> None:
    cluster = Instances(stack(replicas, primary), {0: "primary", 1: "0/5 0/5", 2: "0/5 0/5"})
    with pytest.raises(FailoverError, match=message):
        failover.failover(stack(replicas, primary), wanted, cluster)
    assert cluster.scaled == [] and cluster.promoted == []
