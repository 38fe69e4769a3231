"""Where each `make bench` target's server spends its CPU: py-spy samples of one load run each.

The same servers, requests and load generators as ``bench.run``; while the load runs, py-spy
samples the server process (and, for a gateway, the model server and the gateway's threads
too) and the samples are summed per function: the share of the process's busy samples spent in
each function itself (self) and in it or what it called (total). Idle threads (an event loop
waiting in epoll, a writer thread waiting for work) are not sampled, so the shares are of CPU.

    python -m bench.profile [--seconds 8] [--only model,gateway-postgresql]

Writes bench/results/profile.md, and the raw collapsed stacks beside it in build/profile/ (not
committed; speedscope or flamegraph.pl read them).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench import RESULTS
from bench.load import run_load
from bench.run import requests_for
from bench.servers import GATEWAYS, start_fleet
from components.app import MODEL_NAME
from harness.program import ROOT
from harness.services import MODEL_SRC, import_service

RAW_DIR = ROOT / "build" / "profile"
# Samples per second: enough for a 1 % share to be a few hundred samples in one run.
RATE = 250
TOP = 14


@dataclass(frozen=True)
class Target:
    name: str
    connections: int
    # The servers sampled: the first is the target itself.
    sampled: tuple[str, ...]


TARGETS = (
    Target("echo", 32, ("echo",)),
    Target("model", 32, ("model",)),
    Target("grpc-echo", 32, ("grpc-echo",)),
    Target("model-grpc", 32, ("model",)),
    Target("proxy", 32, ("proxy",)),
    Target("gateway-sqlite", 32, ("gateway-sqlite", "model")),
    Target("gateway-postgresql", 32, ("gateway-postgresql", "model")),
    Target("gateway-sqlite", 1, ("gateway-sqlite",)),
    Target("gateway-postgresql", 1, ("gateway-postgresql",)),
)


def py_spy() -> str:
    path = Path(sys.executable).parent / "py-spy"
    if not path.exists():
        raise RuntimeError(f"{path} missing: `make bench` installs py-spy (bench/requirements.txt)")
    return str(path)


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` (all its threads, Python frames) for ``seconds``, collapsed."""
    return subprocess.Popen(
        [
            py_spy(),
            "record",
            f"--pid={pid}",
            f"--duration={max(1, round(seconds))}",
            f"--rate={RATE}",
            "--format=raw",
            f"--output={out}",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _function(frame: str) -> str:
    """``name (path/to/file.py:123)`` → ``name (file.py)``: a function, not one of its lines."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    return f"{name} ({file.rsplit('/', 1)[-1]})" if file else name


@dataclass(frozen=True)
class Summary:
    samples: int
    self_share: list[tuple[str, float]]
    total_share: list[tuple[str, float]]


def summarize(collapsed: str) -> Summary:
    """Self and total share of the samples per function, from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";")]
        samples += count
        own[frames[-1]] += count
        for function in set(frames):
            inclusive[function] += count
    if not samples:
        return Summary(0, [], [])
    return Summary(
        samples,
        [(f, n / samples) for f, n in own.most_common(TOP)],
        [(f, n / samples) for f, n in inclusive.most_common(TOP + 6)],
    )


def _table(summary: Summary) -> list[str]:
    lines = ["| self | function | | total | function |", "| ---: | --- | --- | ---: | --- |"]
    total = [row for row in summary.total_share if row[1] < 0.995][:TOP]
    for index in range(max(len(summary.self_share), len(total))):
        left = summary.self_share[index] if index < len(summary.self_share) else ("", 0.0)
        right = total[index] if index < len(total) else ("", 0.0)
        lines.append(
            f"| {left[1]:.1%} | `{left[0]}` | | {right[1]:.1%} | `{right[0]}` |"
            if left[0]
            else f"| | | | {right[1]:.1%} | `{right[0]}` |"
        )
    return lines


def profile(names: set[str] | None, seconds: float, out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="mlstack-profile-"))
    RAW_DIR.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    with ExitStack() as stack:
        fleet = start_fleet(stack, work, mlserver=False)
        version = fleet.model_version
        servers = fleet.processes
        urls, grpc_targets = fleet.urls, fleet.grpc_targets
        requests = requests_for(1, urls, grpc_targets)
        for target in TARGETS:
            if names is not None and target.name not in names:
                continue
            run_load(requests[target.name], target.connections, 2, work)  # warm-up
            recorders = []
            for server_name in target.sampled:
                raw = RAW_DIR / f"{target.name}-c{target.connections}-{server_name}.txt"
                recorders.append((server_name, raw, record(servers[server_name].pid, seconds, raw)))
            # py-spy attaches within a few ms; the load then covers its whole window.
            time.sleep(0.3)
            watch = {name: servers[name].pid for name in target.sampled}
            result = run_load(requests[target.name], target.connections, seconds + 1, work, watch)
            lines = [
                f"## {target.name}, {target.connections} connection"
                + ("s" if target.connections > 1 else ""),
                "",
                f"{result.rps:,.0f} req/s, p50 {result.p50_ms:.3f} ms, CPU µs per request: "
                + ", ".join(f"{k} {v:.0f}" for k, v in result.cpu_us_per_request.items())
                + f" (other load on the machine: {result.other_busy_cores:.2f} cores).",
            ]
            for server_name, raw, process in recorders:
                _, err = process.communicate(timeout=60)
                if process.returncode != 0 or not raw.exists():
                    raise RuntimeError(f"py-spy on {server_name} failed: {err.decode()}")
                summary = summarize(raw.read_text())
                lines += [
                    "",
                    f"{server_name}: {summary.samples} busy samples "
                    f"({summary.samples / RATE / seconds:.2f} of a core on average).",
                    "",
                    *_table(summary),
                ]
            sections.append("\n".join(lines))
            print(sections[-1], "\n", flush=True)
    header = (
        "# Where the servers spend their CPU (`python -m bench.profile`)\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {version} of {MODEL_NAME}; one run of "
        f"{seconds:g} s per target under the load `make bench` gives it (wrk or ghz), sampled by "
        f"py-spy at {RATE} Hz, Python frames only (time in C code is charged to the Python "
        "function that called it). self: samples whose innermost frame is the function; "
        "total: samples with the function anywhere on the stack; both as a share of the "
        "process's busy samples (idle threads are not sampled).\n"
    )
    out.write_text(header + "\n" + "\n\n".join(sections) + "\n")
    print(f"wrote {out}; raw stacks in {RAW_DIR}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--only", help="comma-separated target names")
    parser.add_argument("--out", type=Path, default=RESULTS / "profile.md")
    args = parser.parse_args(argv)
    names = set(args.only.split(",")) if args.only else None
    known = {t.name for t in TARGETS} | set(GATEWAYS)
    if names is not None and names - known:
        parser.error(f"unknown targets {sorted(names - known)}; known: {sorted(known)}")
    profile(names, args.seconds, args.out)
    return 0


if __name__ == "__main__":
    import_service(MODEL_SRC)
    sys.exit(main())
