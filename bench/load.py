"""The load generators: wrk (from Debian) for HTTP, driven by a Lua script that reports in JSON,
and ghz (built from its Go module) for gRPC.

Every HTTP target gets the same generator, the same settings (one wrk thread, keep-alive
connections, closed loop: each connection sends its next request when the previous answer
arrives) and the same way of reading the result (wrk's own latency histogram). Every gRPC target
gets ghz with the closest settings: one CPU, N connections with one call in flight on each,
closed loop, its own latency percentiles.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

# The ghz `make bench` built and runs the benchmarks with (mk/bench.mk's GHZ); else the one on PATH.
GHZ_ENV: Final = "MLSTACK_GHZ"
_MARK = "BENCH-RESULT "
_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "%s{\\"requests\\": %d, \\"duration_us\\": %d, \\"socket_errors\\": %d, "
    .. "\\"non_2xx\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d}\\n",
    "__MARK__", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
""".replace("__MARK__", _MARK)


@dataclass(frozen=True)
class Request:
    """One HTTP request, sent over and over."""

    url: str
    body: bytes
    headers: Mapping[str, str]

    def lua(self) -> str:
        text = self.body.decode()
        if "]==]" in text:
            raise ValueError("request body cannot be quoted for Lua")
        lines = ['wrk.method = "POST"', f"wrk.body = [==[{text}]==]"]
        lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in self.headers.items()]
        return "\n".join(lines) + "\n" + _REPORT


@dataclass(frozen=True)
class GrpcRequest:
    """One unary gRPC call, sent over and over: ``method`` (package.Service/Method, declared in
    ``proto``) with the serialized request message ``body``."""

    target: str
    proto: Path
    method: str
    body: bytes


@dataclass(frozen=True)
class GeneratorReport:
    """What a load generator (wrk, ghz) says about one run."""

    requests: int
    seconds: float
    socket_errors: int
    # Answers that were not a success: HTTP non-2xx, gRPC status other than OK.
    non_2xx: int
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class LoadResult(GeneratorReport):
    """The generator's report, with what the run cost the machine."""

    # CPU seconds per request spent by each watched process tree, and by wrk itself.
    cpu_us_per_request: Mapping[str, float]
    # Cores the whole machine was busy during the run, and how many of them were not the
    # servers' or wrk's (other work on the machine: the noise in this run).
    machine_busy_cores: float
    other_busy_cores: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return self.requests > 0 and self.socket_errors == 0 and self.non_2xx == 0


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk not found: `make bench` installs it (apt-get install -y wrk)")
    return path


def ghz_path() -> str:
    path = os.environ.get(GHZ_ENV) or shutil.which("ghz")
    if path is None:
        raise RuntimeError(f"ghz not found: `make bench` builds it (go install) and sets {GHZ_ENV}")
    return path


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants."""
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw.rsplit(")", 1)[1].split()
        child, parent = int(entry), int(fields[1])
        children.setdefault(parent, []).append(child)
        stats[child] = (int(fields[11]) + int(fields[12])) / _clock_ticks()
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far, all cores together, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _clock_ticks()


def _wrk(request: Request, connections: int, seconds: float, script_dir: Path) -> list[str]:
    digest = hashlib.sha256(request.url.encode() + b"\0" + request.body).hexdigest()[:16]
    script = script_dir / f"load-{digest}.lua"
    if not script.exists():
        script.write_text(request.lua())
    return [
        wrk_path(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        request.url,
    ]


def _wrk_report(stdout: str) -> GeneratorReport:
    if _MARK not in stdout:
        raise ValueError("no report")
    report = json.loads(stdout.split(_MARK, 1)[1].splitlines()[0])
    return GeneratorReport(
        requests=int(report["requests"]),
        seconds=int(report["duration_us"]) / 1e6,
        socket_errors=int(report["socket_errors"]),
        non_2xx=int(report["non_2xx"]),
        p50_ms=int(report["p50_us"]) / 1000,
        p99_ms=int(report["p99_us"]) / 1000,
    )


def _ghz(request: GrpcRequest, connections: int, seconds: float, script_dir: Path) -> list[str]:
    digest = hashlib.sha256(request.method.encode() + b"\0" + request.body).hexdigest()[:16]
    body = script_dir / f"call-{digest}.bin"
    if not body.exists():
        body.write_bytes(request.body)
    return [
        ghz_path(),
        "--insecure",
        f"--proto={request.proto}",
        f"--call={request.method}",
        f"--binary-file={body}",
        # As wrk -t1 -cN: one CPU, N connections, one call in flight on each.
        "--cpus=1",
        f"--concurrency={connections}",
        f"--connections={connections}",
        f"--duration={max(1, round(seconds))}s",
        # Let the calls in flight at the end finish rather than cutting them off as errors.
        "--duration-stop=wait",
        "--timeout=10s",
        "--format=json",
        request.target,
    ]


def _ghz_report(stdout: str) -> GeneratorReport:
    report = json.loads(stdout)
    statuses: dict[str, int] = report.get("statusCodeDistribution") or {}
    percentiles = {int(p["percentage"]): int(p["latency"]) for p in report["latencyDistribution"]}
    requests = int(report["count"])
    return GeneratorReport(
        requests=requests,
        seconds=int(report["total"]) / 1e9,
        socket_errors=0,
        non_2xx=requests - int(statuses.get("OK", 0)),
        p50_ms=percentiles[50] / 1e6,
        p99_ms=percentiles[99] / 1e6,
    )


def run_load(
    request: Request | GrpcRequest,
    connections: int,
    seconds: float,
    script_dir: Path,
    watch: Mapping[str, int] | None = None,
) -> LoadResult:
    """Load ``request``'s target (wrk for HTTP, ghz for gRPC) and read the generator's report;
    ``watch`` names server pids whose CPU time is charged to the run."""
    if isinstance(request, GrpcRequest):
        tool, argv = "ghz", _ghz(request, connections, seconds, script_dir)
    else:
        tool, argv = "wrk", _wrk(request, connections, seconds, script_dir)
    watched = dict(watch or {})
    cpu_before = {name: _process_cpu(pid) for name, pid in watched.items()}
    busy_before = _machine_busy()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    try:
        if done.returncode != 0:
            raise ValueError(f"exit status {done.returncode}")
        report = _ghz_report(done.stdout) if tool == "ghz" else _wrk_report(done.stdout)
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"{tool} failed ({exc}): {done.stdout}{done.stderr}") from None
    wall = time.monotonic() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_after = _machine_busy()
    cpu_after = {name: _process_cpu(pid) for name, pid in watched.items()}
    requests = report.requests
    generator_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    server_cpu = {name: cpu_after[name] - cpu_before[name] for name in watched}
    per_request = {
        name: (cpu / requests * 1e6 if requests else 0.0)
        for name, cpu in {**server_cpu, tool: generator_cpu}.items()
    }
    machine_busy = busy_after - busy_before
    # /proc/stat counts every core: busy seconds over wall seconds is busy cores.
    busy_cores = machine_busy / wall if wall else 0.0
    ours = (sum(server_cpu.values()) + generator_cpu) / wall if wall else 0.0
    return LoadResult(
        **asdict(report),
        cpu_us_per_request=per_request,
        machine_busy_cores=busy_cores,
        other_busy_cores=max(0.0, busy_cores - ours),
    )


def fdatasync_latency(directory: Path, samples: int = 200) -> tuple[float, float]:
    """p50 and p99 in ms of rewriting one 4 KiB block of a file in ``directory`` and
    fdatasync-ing it: what one durable commit costs on this disk, now."""
    path = directory / ".fdatasync-probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"\0" * 4096
        for offset in range(0, 64 * 4096, 4096):
            os.pwrite(fd, block, offset)
        os.fsync(fd)
        times = []
        for index in range(samples):
            started = time.perf_counter()
            os.pwrite(fd, block, (index % 64) * 4096)
            os.fdatasync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000
