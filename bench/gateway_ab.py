"""The gateway of a git revision against the working tree's, in one run: does a change cost speed?

Both versions are measured round after round, alternating which goes first; each ratio
working-tree ÷ revision is taken within its round (the machine is shared: two numbers measured
seconds apart are steadier as a ratio than alone), and the median over the rounds is reported.

``--stores``: each version's prediction store alone, in a process of its own, for each store:
``--concurrency`` tasks saving rows as fast as their commits return (saves per second, CPU per
save over all the process's threads, rows per commit). Otherwise over HTTP: both gateways side
by side, each with its own SQLite file and its own PostgreSQL database, in front of one model
server, under wrk; every 200 must have its row (rows stored are checked against 200s counted).
Prints a markdown table.

    python -m bench.gateway_ab --base HEAD --rounds 5 --seconds 4
    python -m bench.gateway_ab --base HEAD --rounds 9 --seconds 2 --stores
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.load import LoadResult, Request, run_load
from bench.run import gateway_counters, gateway_stats
from bench.servers import (
    API_KEY,
    READY_SECONDS,
    STORE_ONLY,
    bench_path,
    check_stored,
    setosa_prediction,
    start_gateway,
    start_model,
)
from components.app import MODEL_NAME
from harness.program import ROOT
from harness.services import GATEWAY_SRC, MODEL_SRC, SETOSA, GatewayProcess, import_service

STORES = ("sqlite", "postgresql")
VERSIONS = ("base", "new")


@dataclass(frozen=True)
class Sample:
    store: str
    connections: int
    round: int
    base: LoadResult
    new: LoadResult
    # Rows per commit over the run, from each gateway's own /metrics.
    base_rows_per_commit: float
    new_rows_per_commit: float


def export_gateway(revision: str, target: Path) -> Path:
    """services/gateway as it is at ``revision``, unpacked under ``target`` with the rest of
    services/ (the code it shares with the model lives in services/common)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "services"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target / "services" / "gateway"


def gateway_sources(base: str, new: str | None, work: Path) -> dict[str, Path]:
    """The gateway source folder of each version; ``new`` None is the working tree."""
    return {
        "base": export_gateway(base, work / "base"),
        "new": GATEWAY_SRC if new is None else export_gateway(new, work / "new"),
    }


def predict_request(url: str) -> Request:
    body = json.dumps({"instances": [SETOSA]}, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}
    return Request(url + "/api/v1/predict", body, headers)


def ratio(new: float, base: float) -> float:
    return new / base if base else float("nan")


def table(samples: list[Sample]) -> str:
    lines = [
        "| store | conns | req/s base | req/s new | new ÷ base req/s | p50 ms base / new "
        "| p99 ms base / new | gateway CPU µs/req base / new | rows per commit base / new |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    keys = sorted(
        {(s.store, s.connections) for s in samples}, key=lambda k: (STORES.index(k[0]), k[1])
    )
    for store, connections in keys:
        runs = [s for s in samples if (s.store, s.connections) == (store, connections)]

        def med(values: list[float]) -> float:
            return statistics.median(values)

        base_rps = med([s.base.rps for s in runs])
        new_rps = med([s.new.rps for s in runs])
        ratios = [ratio(s.new.rps, s.base.rps) for s in runs]
        lines.append(
            f"| {store} | {connections} | {base_rps:,.0f} | {new_rps:,.0f} | "
            f"{med(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}) | "
            f"{med([s.base.p50_ms for s in runs]):.3f} / {med([s.new.p50_ms for s in runs]):.3f} | "
            f"{med([s.base.p99_ms for s in runs]):.2f} / {med([s.new.p99_ms for s in runs]):.2f} | "
            f"{med([s.base.cpu_us_per_request['gateway'] for s in runs]):.0f} / "
            f"{med([s.new.cpu_us_per_request['gateway'] for s in runs]):.0f} | "
            f"{med([s.base_rows_per_commit for s in runs]):.1f} / "
            f"{med([s.new_rows_per_commit for s in runs]):.1f} |"
        )
    return "\n".join(lines)


def store_worker(
    store_kind: str, dsn: str, data_dir: str, concurrency: int, seconds: float
) -> None:
    """In a process whose PYTHONPATH holds one version's gateway: load its store, print JSON."""
    import asyncio
    import resource

    import uvloop
    from mlstack_gateway.ids import new_request_id
    from mlstack_gateway.metrics import GatewayMetrics
    from mlstack_gateway.settings import GatewaySettings

    try:
        from mlstack_gateway.stores.base import PredictionRecord
        from mlstack_gateway.stores.factory import open_store
    except ModuleNotFoundError:  # a revision from before the stores/ package (issue 22)
        from mlstack_gateway.store import (  # type: ignore[import-not-found,no-redef]
            PredictionRecord,
            open_store,
        )

    env = {**STORE_ONLY, "DATA_DIR": data_dir}
    if store_kind == "postgresql":
        env["DATABASE_URL"] = dsn
    settings = GatewaySettings.from_env(env)
    sys.setswitchinterval(0.0005)  # as the gateway's __main__ sets it

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    async def run() -> dict[str, float]:
        metrics = GatewayMetrics()
        store = open_store(settings, metrics)
        await store.open()
        saves = 0
        stop = False

        async def client() -> None:
            nonlocal saves
            while not stop:
                await store.save(PredictionRecord(*setosa_prediction(new_request_id())))
                saves += 1

        clients = [asyncio.create_task(client()) for _ in range(concurrency)]
        await asyncio.sleep(0.5)  # warm-up
        loop = asyncio.get_running_loop()
        saves_before, cpu_before, started = saves, cpu(), loop.time()
        commits_before = metrics.registry.get_sample_value("mlstack_gateway_db_commit_rows_count")
        await asyncio.sleep(seconds)
        elapsed, used, done = loop.time() - started, cpu() - cpu_before, saves - saves_before
        commits = metrics.registry.get_sample_value("mlstack_gateway_db_commit_rows_count")
        stop = True
        await asyncio.gather(*clients)
        await store.close()
        return {
            "saves_per_second": done / elapsed,
            "cpu_us_per_save": used / done * 1e6,
            "rows_per_commit": done / ((commits or 0) - (commits_before or 0)),
        }

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(json.dumps(runner.run(run())))


def store_rounds(
    revisions: tuple[str, str | None], rounds: int, seconds: float, concurrency: int
) -> str:
    from harness.postgres import running_postgres

    work = Path(tempfile.mkdtemp(prefix="mlstack-store-ab-"))
    sources = gateway_sources(*revisions, work)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with ExitStack() as stack:
        postgres = stack.enter_context(running_postgres())
        dsns = {v: postgres.create_database(f"store_{v}") for v in VERSIONS}
        for round_ in range(1, rounds + 1):
            order = VERSIONS if round_ % 2 else VERSIONS[::-1]
            for store in STORES:
                for version in order:
                    argv = [sys.executable, "-m", "bench.gateway_ab", "--worker", store]
                    argv += [dsns[version], str(work / f"data-{version}")]
                    argv += [str(concurrency), str(seconds)]
                    env = {**os.environ, "PYTHONPATH": bench_path(sources[version])}
                    done = subprocess.run(
                        argv, env=env, cwd=ROOT, capture_output=True, text=True, check=True
                    )
                    result = json.loads(done.stdout.splitlines()[-1])
                    results.setdefault((version, store), []).append(result)
                    print(
                        f"round {round_} {store:10} {version:4} "
                        f"{result['saves_per_second']:8.0f} saves/s  "
                        f"{result['cpu_us_per_save']:6.1f} µs CPU/save  "
                        f"{result['rows_per_commit']:5.1f} rows/commit",
                        flush=True,
                    )
    shutil.rmtree(work, ignore_errors=True)
    lines = [
        "| store | saves/s base | saves/s new | new ÷ base saves/s | CPU µs/save base / new "
        "| rows per commit base / new |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for store in STORES:
        base, new = results["base", store], results["new", store]
        ratios = [
            n["saves_per_second"] / b["saves_per_second"] for b, n in zip(base, new, strict=True)
        ]

        def med(runs: list[dict[str, float]], key: str) -> float:
            return statistics.median(r[key] for r in runs)

        lines.append(
            f"| {store} | {med(base, 'saves_per_second'):,.0f} | "
            f"{med(new, 'saves_per_second'):,.0f} | {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f}) | "
            f"{med(base, 'cpu_us_per_save'):.1f} / {med(new, 'cpu_us_per_save'):.1f} | "
            f"{med(base, 'rows_per_commit'):.1f} / {med(new, 'rows_per_commit'):.1f} |"
        )
    return "\n".join(lines)


@dataclass
class Setup:
    work: Path
    gateways: dict[tuple[str, str], GatewayProcess]
    # 200s answered under measurement, per (version, store): each must have its row.
    acknowledged: dict[tuple[str, str], int]


def start_all(stack: ExitStack, work: Path, revisions: tuple[str, str | None]) -> Setup:
    """PostgreSQL, the model, and a gateway per (version, store), warmed up."""
    from mlstack_model import train

    from harness.postgres import running_postgres

    logs = work / "logs"
    logs.mkdir()
    sources = gateway_sources(*revisions, work)
    postgres = stack.enter_context(running_postgres())
    train.train_all(work / "models", [MODEL_NAME])
    model = start_model(work / "models", logs)
    stack.callback(model.stop)
    model.wait_ready(READY_SECONDS)
    setup = Setup(work, {}, {})
    for version in VERSIONS:
        for store in STORES:
            name = f"gateway-{version}-{store}"
            env: dict[str, str] = {}
            if store == "sqlite":
                env["DATA_DIR"] = str(work / name)
            else:
                env["DATABASE_URL"] = postgres.create_database(name.replace("-", "_"))
            gateway = start_gateway(name, model.url, logs, sources[version], **env)
            stack.callback(gateway.stop)
            setup.gateways[version, store] = gateway
            setup.acknowledged[version, store] = 0
    for gateway in setup.gateways.values():
        gateway.wait_ready(READY_SECONDS)
        # Warm-up: connections pooled, statements prepared, pages cached.
        run_load(predict_request(gateway.url), 8, 1, work)
    return setup


def measure(setup: Setup, store: str, connections: int, round_: int, seconds: float) -> Sample:
    order = VERSIONS if round_ % 2 else VERSIONS[::-1]
    results: dict[str, LoadResult] = {}
    rows_per_commit: dict[str, float] = {}
    for version in order:
        gateway = setup.gateways[version, store]
        watch = {"gateway": gateway.pid}
        # The gateway serves /metrics on a port of its own.
        metrics_url = gateway.metrics_url or gateway.url
        before = gateway_counters(metrics_url)
        result = run_load(predict_request(gateway.url), connections, seconds, setup.work, watch)
        after = gateway_counters(metrics_url)
        rows_per_commit[version] = gateway_stats(before, after)["rows_per_commit"]
        if not result.ok:
            raise RuntimeError(f"{gateway.name}: answers that were not 200")
        setup.acknowledged[version, store] += result.requests
        results[version] = result
        print(
            f"round {round_} {store:10} c={connections:<2} {version:4} "
            f"{result.rps:8.0f} req/s  p50 {result.p50_ms:6.3f} ms  p99 {result.p99_ms:6.2f} ms  "
            f"(other load {result.other_busy_cores:.2f} cores)",
            flush=True,
        )
    return Sample(
        store,
        connections,
        round_,
        results["base"],
        results["new"],
        rows_per_commit["base"],
        rows_per_commit["new"],
    )


def check_rows(setup: Setup) -> list[str]:
    """Every 200 has its row: rows stored >= 200s measured (warm-up adds rows, not 200s)."""
    return [
        check_stored(setup.gateways[key], measured) for key, measured in setup.acknowledged.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_ab", description=__doc__)
    parser.add_argument("--base", default="HEAD", help="the git revision to compare against")
    parser.add_argument("--new", help="a git revision instead of the working tree")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one load run")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--stores", action="store_true", help="the stores alone, no HTTP")
    parser.add_argument("--concurrency", type=int, default=32, help="with --stores")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        store, dsn, data_dir, concurrency, seconds = args.worker
        store_worker(store, dsn, data_dir, int(concurrency), float(seconds))
        return 0
    # The working tree's gateway settings name each gateway's database for the rows check; a
    # worker (above) imports the gateway of the version it loads, from its PYTHONPATH.
    import_service(GATEWAY_SRC)
    heading = (
        f"{args.rounds} rounds, {args.seconds:g} s runs; base = {args.base} ({rev(args.base)}), "
        f"new = {f'{args.new} ({rev(args.new)})' if args.new else 'working tree'}; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}"
    )
    if args.stores:
        out = store_rounds((args.base, args.new), args.rounds, args.seconds, args.concurrency)
        print(f"\n{heading}; {args.concurrency} concurrent saves\n\n{out}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="mlstack-gateway-ab-"))
    samples: list[Sample] = []
    with ExitStack() as stack:
        setup = start_all(stack, work, (args.base, args.new))
        for round_ in range(1, args.rounds + 1):
            for store in STORES:
                for connections in args.connections:
                    samples.append(measure(setup, store, connections, round_, args.seconds))
        checks = check_rows(setup)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\n{heading}; wrk 1 thread, one iris row per request\n")
    print(table(samples))
    print()
    for check in checks:
        print(f"- {check}")
    return 0


def rev(revision: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", revision],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


if __name__ == "__main__":
    import_service(MODEL_SRC)
    sys.exit(main())
