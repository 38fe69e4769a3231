"""Rows per second that concurrent group commits write into the gateway's PostgreSQL table: its
insert, which takes the commit-order lock (stores/postgres.py, _INSERT), against the same insert
without the lock, as it was before ids were given in commit order.

Each writer stands for one gateway: its own connection, one commit at a time, ``--batch`` rows
each, for ``--seconds``; then the other statement, alternately, ``--rounds`` times, on one
throwaway PostgreSQL (harness/postgres.py). Printed: the ratio of locked to unlocked rows per
second, the median of the rounds, for each count of writers and batch size.

    python -m bench.commit_order
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid

import asyncpg

from harness.postgres import running_postgres
from harness.services import GATEWAY_SRC, import_service

# The gateway's insert without the lock (before 13218e9).
UNLOCKED = """
INSERT INTO predictions
    (request_id, model_name, model_version, instances, predictions, latency_ms)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[], $6::float8[])
ON CONFLICT (request_id) DO NOTHING
"""


async def rows_per_second(
    dsn: str, statement: str, writers: int, batch: int, seconds: float
) -> float:
    async def write() -> int:
        conn = await asyncpg.connect(dsn)
        written, end = 0, time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                columns = (
                    [uuid.uuid4() for _ in range(batch)],
                    ["iris"] * batch,
                    ["v1"] * batch,
                    ["[[5.1, 3.5, 1.4, 0.2]]"] * batch,
                    ["[0]"] * batch,
                    [1.0] * batch,
                )
                await conn.execute(statement, *columns)
                written += batch
        finally:
            await conn.close()
        return written

    return sum(await asyncio.gather(*(write() for _ in range(writers)))) / seconds


async def measure(args: argparse.Namespace) -> None:
    from mlstack_gateway.stores.postgres import _INSERT, migrate_database

    with running_postgres() as server:
        dsn = server.dsn()
        await migrate_database(dsn, 60)
        for writers in args.writers:
            for batch in args.batch:
                ratios = []
                for _ in range(args.rounds):
                    unlocked = await rows_per_second(dsn, UNLOCKED, writers, batch, args.seconds)
                    locked = await rows_per_second(dsn, _INSERT, writers, batch, args.seconds)
                    ratios.append(locked / unlocked)
                print(
                    f"{writers} writers, {batch:3} rows per commit: locked/unlocked rows/s "
                    f"{statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.commit_order", description=__doc__)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(measure(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    import_service(GATEWAY_SRC)
    sys.exit(main())
