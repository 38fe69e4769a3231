"""The gateway of a git revision against the working tree's, in one run: does a change cost speed?

Both versions (and any ``--variant``: another revision, or a folder holding services/, such as
a worktree with a change undone locally) are measured round after round, the order rotating
from round to round; each version's ratio to the base is taken within its round (the machine
is shared: two numbers measured seconds apart are steadier as a ratio than alone), and the
median over the rounds is reported. A variant that is the base again measures the noise.

``--stores``: each version's prediction store alone, in a process of its own, for each store:
``--concurrency`` tasks saving rows as fast as their commits return (saves per second, CPU per
save over all the process's threads, rows per commit). Otherwise over HTTP: both gateways side
by side, each with its own SQLite file and its own PostgreSQL database (one server for both),
in front of one model server, under wrk; every 200 must have its row (rows stored are checked
against 200s counted). ``--store-kind`` measures one store only. Prints a markdown table, with
each round's ratio.

    python -m bench.gateway_ab --base HEAD --rounds 5 --seconds 4
    python -m bench.gateway_ab --base HEAD --rounds 9 --seconds 2 --stores
    python -m bench.gateway_ab --base 7a5e7a7 --new main --variant control 7a5e7a7 \
        --variant no-lock /tmp/no-lock --store-kind postgresql --rounds 21 --seconds 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
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
# What every other version is measured against.
BASE = "base"
# A variant's name: it names the variant's processes and PostgreSQL databases too.
VARIANT_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")


@dataclass(frozen=True)
class Sample:
    store: str
    connections: int
    round: int
    # By version.
    results: dict[str, LoadResult]
    # Rows per commit over each version's run, from its gateway's own /metrics.
    rows_per_commit: dict[str, float]


def rotated(versions: list[str], round_: int) -> list[str]:
    """The order of ``round_``'s runs: each version goes first in turn (two alternate)."""
    start = (round_ - 1) % len(versions)
    return versions[start:] + versions[:start]


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


@dataclass(frozen=True)
class Versions:
    """What to measure: the base revision, the new one (None: the working tree) and the
    variants, each a name and a revision or a folder holding services/."""

    base: str
    new: str | None
    variants: list[tuple[str, str]]

    @property
    def names(self) -> list[str]:
        return [BASE, "new", *(name for name, _ in self.variants)]

    def sources(self, work: Path) -> dict[str, Path]:
        """The gateway source folder of each version, base first."""
        sources = {
            BASE: export_gateway(self.base, work / BASE),
            "new": GATEWAY_SRC if self.new is None else export_gateway(self.new, work / "new"),
        }
        for name, source in self.variants:
            folder = Path(source)
            sources[name] = (
                folder / "services" / "gateway"
                if folder.is_dir()
                else export_gateway(source, work / "variants" / name)
            )
        return sources

    def describe(self) -> str:
        new = f"{self.new} ({rev(self.new)})" if self.new else "working tree"
        parts = [f"base = {self.base} ({rev(self.base)})", f"new = {new}"]
        for name, source in self.variants:
            where = f"folder {source}" if Path(source).is_dir() else f"{source} ({rev(source)})"
            parts.append(f"{name} = {where}")
        return ", ".join(parts)


def predict_request(url: str) -> Request:
    body = json.dumps({"instances": [SETOSA]}, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}
    return Request(url + "/api/v1/predict", body, headers)


def ratio(new: float, base: float) -> float:
    return new / base if base else float("nan")


def cpu(results: list[LoadResult], process: str) -> str:
    """A watched process's median CPU µs per request over ``results``; "-" where it was not
    watched (PostgreSQL's, in a SQLite gateway's runs)."""
    if any(process not in r.cpu_us_per_request for r in results):
        return "-"
    return f"{statistics.median(r.cpu_us_per_request[process] for r in results):.0f}"


def table(samples: list[Sample], versions: list[str]) -> str:
    """A row per store, connections and version: medians over the rounds, and the version's
    requests/s over the base's (the median of each round's ratio, then each round's)."""
    lines = [
        "| store | conns | version | req/s | ÷ base req/s | each round's ÷ base | p50 ms "
        "| p99 ms | gateway CPU µs/req | PostgreSQL CPU µs/req | rows per commit |",
        "| --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    keys = sorted(
        {(s.store, s.connections) for s in samples}, key=lambda k: (STORES.index(k[0]), k[1])
    )

    def med(values: list[float]) -> float:
        return statistics.median(values)

    for store, connections in keys:
        runs = [s for s in samples if (s.store, s.connections) == (store, connections)]
        for version in versions:
            results = [s.results[version] for s in runs]
            ratios = [ratio(s.results[version].rps, s.results[BASE].rps) for s in runs]
            against = (
                ("", "")
                if version == BASE
                else (
                    f"{med(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})",
                    " ".join(f"{r:.2f}" for r in ratios),
                )
            )
            lines.append(
                f"| {store} | {connections} | {version} | {med([r.rps for r in results]):,.0f} | "
                f"{against[0]} | {against[1]} | {med([r.p50_ms for r in results]):.3f} | "
                f"{med([r.p99_ms for r in results]):.2f} | {cpu(results, 'gateway')} | "
                f"{cpu(results, 'postgresql')} | "
                f"{med([s.rows_per_commit[version] for s in runs]):.1f} |"
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


def store_rounds(versions: Versions, rounds: int, seconds: float, concurrency: int) -> str:
    from harness.postgres import running_postgres

    work = Path(tempfile.mkdtemp(prefix="mlstack-store-ab-"))
    sources = versions.sources(work)
    names = versions.names
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with ExitStack() as stack:
        postgres = stack.enter_context(running_postgres())
        dsns = {v: postgres.create_database(f"store_{v.replace('-', '_')}") for v in names}
        for round_ in range(1, rounds + 1):
            for store in STORES:
                for version in rotated(names, round_):
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
                        f"round {round_} {store:10} {version:8} "
                        f"{result['saves_per_second']:8.0f} saves/s  "
                        f"{result['cpu_us_per_save']:6.1f} µs CPU/save  "
                        f"{result['rows_per_commit']:5.1f} rows/commit",
                        flush=True,
                    )
    shutil.rmtree(work, ignore_errors=True)
    lines = [
        "| store | version | saves/s | ÷ base saves/s | CPU µs/save | rows per commit |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    for store in STORES:
        base = results[BASE, store]
        for version in names:
            runs = results[version, store]
            ratios = [
                n["saves_per_second"] / b["saves_per_second"]
                for b, n in zip(base, runs, strict=True)
            ]
            against = (
                ""
                if version == BASE
                else f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, "
                f"max {max(ratios):.3f})"
            )
            lines.append(
                f"| {store} | {version} | {med(runs, 'saves_per_second'):,.0f} | {against} | "
                f"{med(runs, 'cpu_us_per_save'):.1f} | {med(runs, 'rows_per_commit'):.1f} |"
            )
    return "\n".join(lines)


@dataclass
class Setup:
    work: Path
    # Base first.
    versions: list[str]
    gateways: dict[tuple[str, str], GatewayProcess]
    # 200s answered under measurement, per (version, store): each must have its row.
    acknowledged: dict[tuple[str, str], int]
    # The PostgreSQL server's postmaster: its CPU (its backends') is charged to the
    # PostgreSQL gateways' runs.
    postgres_pid: int


def start_all(stack: ExitStack, work: Path, versions: Versions, stores: tuple[str, ...]) -> Setup:
    """PostgreSQL, the model, and a gateway per (version, store of ``stores``), warmed up."""
    from mlstack_model import train

    from harness.postgres import running_postgres

    logs = work / "logs"
    logs.mkdir()
    sources = versions.sources(work)
    postgres = stack.enter_context(running_postgres())
    train.train_all(work / "models", [MODEL_NAME])
    model = start_model(work / "models", logs)
    stack.callback(model.stop)
    model.wait_ready(READY_SECONDS)
    setup = Setup(work, versions.names, {}, {}, postgres.pid)
    for version in versions.names:
        for store in stores:
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
    results: dict[str, LoadResult] = {}
    rows_per_commit: dict[str, float] = {}
    for version in rotated(setup.versions, round_):
        gateway = setup.gateways[version, store]
        watch = {"gateway": gateway.pid}
        if store == "postgresql":
            watch["postgresql"] = setup.postgres_pid
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
            f"round {round_} {store:10} c={connections:<2} {version:8} "
            f"{result.rps:8.0f} req/s  p50 {result.p50_ms:6.3f} ms  p99 {result.p99_ms:6.2f} ms  "
            f"(other load {result.other_busy_cores:.2f} cores)",
            flush=True,
        )
    return Sample(store, connections, round_, results, rows_per_commit)


def check_rows(setup: Setup) -> list[str]:
    """Every 200 has its row: rows stored >= 200s measured (warm-up adds rows, not 200s)."""
    return [
        check_stored(setup.gateways[key], measured) for key, measured in setup.acknowledged.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_ab", description=__doc__)
    parser.add_argument("--base", default="HEAD", help="the git revision to compare against")
    parser.add_argument("--new", help="a git revision instead of the working tree")
    parser.add_argument(
        "--variant",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "SOURCE"),
        help="another version: a git revision, or a folder holding services/ (repeatable)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one load run")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--stores", action="store_true", help="the stores alone, no HTTP")
    parser.add_argument(
        "--store-kind", nargs="+", choices=STORES, default=list(STORES), help="over HTTP"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="with --stores")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    variants = [(name, source) for name, source in args.variant]
    for name, _ in variants:
        if not VARIANT_NAME.fullmatch(name) or name in (BASE, "new"):
            parser.error(f"--variant {name}: a name of a-z, 0-9 and -, not base or new")
    if len({name for name, _ in variants}) < len(variants):
        parser.error("--variant: each name once")
    versions = Versions(args.base, args.new, variants)
    if args.worker:
        store, dsn, data_dir, concurrency, seconds = args.worker
        store_worker(store, dsn, data_dir, int(concurrency), float(seconds))
        return 0
    # The working tree's gateway settings name each gateway's database for the rows check; a
    # worker (above) imports the gateway of the version it loads, from its PYTHONPATH.
    import_service(GATEWAY_SRC)
    heading = (
        f"{args.rounds} rounds, {args.seconds:g} s runs; {versions.describe()}; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}"
    )
    if args.stores:
        out = store_rounds(versions, args.rounds, args.seconds, args.concurrency)
        print(f"\n{heading}; {args.concurrency} concurrent saves\n\n{out}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="mlstack-gateway-ab-"))
    samples: list[Sample] = []
    with ExitStack() as stack:
        stores = tuple(store for store in STORES if store in args.store_kind)
        setup = start_all(stack, work, versions, stores)
        for round_ in range(1, args.rounds + 1):
            for store in stores:
                for connections in args.connections:
                    samples.append(measure(setup, store, connections, round_, args.seconds))
        checks = check_rows(setup)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\n{heading}; wrk 1 thread, one iris row per request\n")
    print(table(samples, versions.names))
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
