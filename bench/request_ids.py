"""CPU per group commit into the gateway's SQLite table: random (v4) against time-ordered (v7) ids.

The gateway's own schema, insert, file and connection (WAL, synchronous=FULL); commits of
``--rows-per-commit`` rows until ``--rows`` rows are in; process CPU and wall time per commit,
and each round's v7 over v4 (the machine is shared: a round's ratio, not its times, is the
result), then the ratios' median.

    python -m bench.request_ids
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

from bench.servers import STORE_ONLY, setosa_prediction
from harness.services import GATEWAY_SRC, import_service


def per_commit(make_id: Callable[[], str], rows: int, rows_per_commit: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per commit."""
    from mlstack_gateway.settings import GatewaySettings
    from mlstack_gateway.stores.base import PredictionRecord
    from mlstack_gateway.stores.sqlite import MIGRATIONS, _connect, _insert_batch

    with tempfile.TemporaryDirectory() as folder:
        settings = GatewaySettings.from_env({**STORE_ONLY, "DATA_DIR": folder})
        conn = _connect(settings.sqlite_path, settings.db_write_timeout_seconds)
        for _, statement in MIGRATIONS:
            conn.execute(statement)
        commits = rows // rows_per_commit
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(commits):
            batch = [
                PredictionRecord(*setosa_prediction(make_id())) for _ in range(rows_per_commit)
            ]
            _insert_batch(conn, batch)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        conn.close()
    return cpu / commits * 1e6, wall / commits * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.request_ids", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rows-per-commit", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from mlstack_gateway.ids import new_request_id

    kinds: dict[str, Callable[[], str]] = {
        "v4 (random)": lambda: str(uuid.uuid4()),
        "v7 (time-ordered)": new_request_id,
    }
    ratios: list[tuple[float, float]] = []
    for round_ in range(1, args.rounds + 1):
        measured = []
        for name, make_id in kinds.items():
            cpu, wall = per_commit(make_id, args.rows, args.rows_per_commit)
            measured.append((cpu, wall))
            print(f"round {round_} {name:18} {cpu:5.0f} µs CPU, {wall:5.0f} µs wall per commit")
        (v4_cpu, v4_wall), (v7_cpu, v7_wall) = measured
        ratios.append((v7_cpu / v4_cpu, v7_wall / v4_wall))
        print(f"round {round_} v7 over v4: CPU {ratios[-1][0]:.3f}, wall {ratios[-1][1]:.3f}")
    cpu_ratio = statistics.median(r[0] for r in ratios)
    wall_ratio = statistics.median(r[1] for r in ratios)
    print(f"median v7 over v4: CPU {cpu_ratio:.3f}, wall {wall_ratio:.3f}")
    return 0


if __name__ == "__main__":
    import_service(GATEWAY_SRC)
    sys.exit(main())
