"""`make bench`: mlstack against what a user would pick instead, in one run on this machine.

Serving: the same trained scikit-learn model (the artifact the model service loads, exported with
joblib for MLServer's scikit-learn runtime) served by our model service and by MLServer, over REST
(wrk) and over gRPC (ghz; the input as tritonclient sends it by default, raw_input_contents), with a
bare ASGI echo and a bare grpc.aio echo as the ceilings, each at 1 and 32 connections. Every
infer request names the `predict` output: MLServer's runtime answers that alone by default, ours
(as the protocol says) every output, so both are asked for the same work. The
gateway hop: the same load through the gateway, whose every 200 waits for its row's durable
commit (SQLite, then PostgreSQL), against the model straight. Batches of 1, 32 and 256 rows.
Program evaluation: `__main__.py` under Pulumi's mocks, per stack.

Every target is measured in each of ``--rounds`` rounds, one after the other in a fixed order,
and ratios are taken within a round (the machine is shared: a ratio of two numbers measured
seconds apart is steadier than either number), then the median over the rounds is reported.
Writes bench/results/{results.md,results.json,bench.png}; the last lines printed are the
headline ratios (report.HEADLINES).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import RESULTS, report
from bench.load import GrpcRequest, Request, fdatasync_latency, ghz_path, run_load
from bench.report import Run
from bench.servers import (
    API_KEY,
    GATEWAYS,
    MLSERVER_VENV,
    check_stored,
    http_call,
    start_fleet,
)
from components.app import MODEL_NAME
from harness.http import request
from harness.metrics import samples
from harness.program import ROOT
from harness.services import GATEWAY_SRC, MODEL_SRC, import_service

CONNECTIONS = (1, 32)
BATCH_ROWS = (1, 32, 256)
BATCH_CONNECTIONS = 32
PROGRAM_SCENARIOS = ("dev", "prod", "dev-100-replicas", "dev-100-replicas-20-services")
PROTO = MODEL_SRC / "mlstack_model" / "proto" / "open_inference.proto"
GRPC_INFER = "inference.GRPCInferenceService/ModelInfer"


@dataclass
class BenchData:
    seconds: float
    rounds: int
    runs: list[Run] = field(default_factory=list)
    program: list[dict[str, Any]] = field(default_factory=list)
    # fdatasync p50/p99 (ms) on the gateways' disk, probed before each round.
    fdatasync: list[tuple[float, float]] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)


def iris_rows(count: int) -> list[list[float]]:
    from sklearn.datasets import load_iris

    data: list[list[float]] = load_iris().data.tolist()
    return [data[i % len(data)] for i in range(count)]


# The one output every benchmark request asks for (the module's docstring says why).
PREDICT = "predict"


def oip_body(rows: list[list[float]]) -> dict[str, Any]:
    flat = [value for row in rows for value in row]
    shape = [len(rows), len(rows[0])]
    return {
        "inputs": [{"name": "input-0", "shape": shape, "datatype": "FP64", "data": flat}],
        "outputs": [{"name": PREDICT}],
    }


def grpc_infer_body(rows: list[list[float]]) -> bytes:
    """A ModelInferRequest with its input as tritonclient's gRPC client sends it by default
    (FP64 raw bytes), naming the `predict` output."""
    import numpy as np
    from mlstack_model.proto import open_inference_pb2 as pb

    request = pb.ModelInferRequest(model_name=MODEL_NAME)
    request.inputs.add(name="input-0", datatype="FP64", shape=[len(rows), len(rows[0])])
    request.outputs.add(name=PREDICT)
    request.raw_input_contents.append(np.asarray(rows, dtype="<f8").tobytes())
    return request.SerializeToString()


def grpc_labels(target: str, rows: list[list[float]]) -> list[int]:
    """The predicted classes a gRPC server answers for ``rows``, raw or typed."""
    import grpc
    import numpy as np
    from mlstack_model.proto import open_inference_pb2 as pb
    from mlstack_model.tensors import BINARY_FORMAT

    with grpc.insecure_channel(target) as channel:
        infer = channel.unary_unary(
            f"/{GRPC_INFER}",
            request_serializer=None,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        response = infer(grpc_infer_body(rows), timeout=10)
    index = next(i for i, o in enumerate(response.outputs) if o.name == PREDICT)
    output = response.outputs[index]
    if response.raw_output_contents:
        raw = response.raw_output_contents[index]
        layout = "<" + BINARY_FORMAT[output.datatype]
        labels: list[int] = np.frombuffer(raw, dtype=layout).tolist()
        return labels
    return [int(v) for field, values in output.contents.ListFields() for v in values]


def requests_for(
    rows: int, urls: dict[str, str], grpc_targets: dict[str, str]
) -> dict[str, Request | GrpcRequest]:
    """The request each target gets for a batch of ``rows`` rows (the same rows for all)."""
    batch = iris_rows(rows)
    oip = json.dumps(oip_body(batch), separators=(",", ":")).encode()
    public = json.dumps({"instances": batch}, separators=(",", ":")).encode()
    json_header = {"Content-Type": "application/json"}
    infer_path = f"/v2/models/{MODEL_NAME}/infer"
    out: dict[str, Request | GrpcRequest] = {
        name: Request(urls[name] + infer_path, oip, json_header)
        for name in ("model", "mlserver", "proxy")
        if name in urls  # MLServer, unless left out
    }
    out["echo"] = Request(urls["echo"] + "/", oip, json_header)
    call = grpc_infer_body(batch)
    for name, target in grpc_targets.items():
        out[name] = GrpcRequest(target, PROTO, GRPC_INFER, call)
    for name in GATEWAYS:
        out[name] = Request(
            urls[name] + "/api/v1/predict", public, {**json_header, "X-API-Key": API_KEY}
        )
    return out


def check_same_answers(urls: dict[str, str], grpc_targets: dict[str, str], data: BenchData) -> None:
    """The model service and MLServer (REST and gRPC) and the gateways agree on every iris row."""
    rows = iris_rows(150)
    infer = f"/v2/models/{MODEL_NAME}/infer"
    answers: dict[str, list[int]] = {}
    for name in ("model", "mlserver"):
        status, body = http_call("POST", urls[name] + infer, oip_body(rows))
        if status != 200:
            raise RuntimeError(f"{name} answered {status}: {body}")
        output = next(o for o in body["outputs"] if o["name"] == PREDICT)
        answers[name] = [int(v) for v in output["data"]]
    for name in GATEWAYS:
        status, body = http_call(
            "POST", urls[name] + "/api/v1/predict", {"instances": rows}, {"X-API-Key": API_KEY}
        )
        if status != 200:
            raise RuntimeError(f"{name} answered {status}: {body}")
        answers[name] = [int(v) for v in body["predictions"]]
    for name in ("model-grpc", "mlserver-grpc"):
        answers[name] = grpc_labels(grpc_targets[name], rows)
    reference = answers["model"]
    for name, labels in answers.items():
        if labels != reference:
            raise RuntimeError(f"{name} predicts differently from the model service")
    data.checks.append(
        "the model service and MLServer (each over REST and gRPC) and both gateways predict the "
        "same classes for all 150 iris rows"
    )


_SERIES = {
    "request_ms": "mlstack_gateway_request_duration_seconds",
    "model_call_ms": "mlstack_gateway_model_call_duration_seconds",
    "commit_ms": "mlstack_gateway_db_commit_duration_seconds",
    "rows_per_commit": "mlstack_gateway_db_commit_rows",
}


def gateway_counters(metrics_url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the gateway's own timing histograms (the predict endpoint's, where a
    series is by endpoint), from GET /metrics on its metrics port."""
    reply = request("GET", metrics_url + "/metrics")
    if reply.status != 200:
        raise RuntimeError(f"GET {metrics_url}/metrics answered {reply.status}")
    values = {
        sample.name: sample.value
        for sample in samples(reply.body.decode())
        if sample.labels in ({}, {"endpoint": "predict"})
    }
    return {
        key: (values.get(f"{series}_sum", 0.0), values.get(f"{series}_count", 0.0))
        for key, series in _SERIES.items()
    }


def gateway_stats(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Means over one run: time to answer, model call, one commit; rows per commit."""
    stats: dict[str, float] = {}
    for key in _SERIES:
        total = after[key][0] - before[key][0]
        count = after[key][1] - before[key][1]
        scale = 1.0 if key == "rows_per_commit" else 1000.0
        stats[key] = total / count * scale if count else float("nan")
    return stats


class Recorder:
    """Runs the load, refuses any answer that is not 2xx, and keeps every result."""

    def __init__(self, data: BenchData, work: Path) -> None:
        self.data = data
        self.work = work
        # 200s answered per target: each one must have its row in the database.
        self.acknowledged: dict[str, int] = {}

    def measure(
        self,
        target: str,
        request: Request | GrpcRequest,
        *,
        connections: int,
        rows: int,
        round_: int,
        watch: dict[str, int],
        metrics_url: str | None = None,
    ) -> None:
        before = gateway_counters(metrics_url) if metrics_url else {}
        result = run_load(request, connections, self.data.seconds, self.work, watch)
        internals = gateway_stats(before, gateway_counters(metrics_url)) if metrics_url else {}
        if not result.ok:
            raise RuntimeError(
                f"{target} at {connections} connections: {result.non_2xx} non-2xx answers, "
                f"{result.socket_errors} socket errors in {result.requests} requests"
            )
        self.acknowledged[target] = self.acknowledged.get(target, 0) + result.requests
        self.data.runs.append(Run(target, connections, rows, round_, result, internals))
        print(
            f"  round {round_} {target:19} c={connections:<2} rows={rows:<3} "
            f"{result.rps:9.0f} req/s  p50 {result.p50_ms:7.3f} ms  "
            f"p99 {result.p99_ms:7.2f} ms  (other load {result.other_busy_cores:.2f} cores)",
            flush=True,
        )


def postgres_durability(dsn: str) -> dict[str, str]:
    from harness.postgres import query

    names = ("fsync", "synchronous_commit", "wal_sync_method", "full_page_writes")
    return {name: str(query(dsn, f"SHOW {name}")[0][0]) for name in names}


def load_runs(data: BenchData, work: Path) -> None:
    recorder = Recorder(data, work)
    with ExitStack() as stack:
        fleet = start_fleet(stack, work)
        data.environment["postgresql"] = postgres_durability(fleet.dsn)
        data.environment["model"] = (
            f"{MODEL_NAME} {fleet.model_version} (the model service's default)"
        )
        urls, grpc_targets = fleet.urls, fleet.grpc_targets
        # Every load target's server, REST and gRPC (a gRPC target is served by a REST one's
        # process): where its /metrics are, if on a port of their own.
        by_target = {**fleet.rest, **fleet.grpc}
        # What each target's CPU is charged to: its server's process; the gateway's work
        # includes the model's.
        watch = {name: {server.name: server.pid} for name, server in by_target.items()}
        for name in ("proxy", *GATEWAYS):
            watch[name]["model"] = fleet.model.pid
        watch["gateway-postgresql"]["postgresql"] = fleet.postgres.pid

        check_same_answers(urls, grpc_targets, data)
        recorder.acknowledged.update({name: 150 for name in GATEWAYS})

        single = requests_for(1, urls, grpc_targets)
        # Each gRPC pair whose ratio is reported runs back to back: the machine's other load
        # moves within seconds.
        order = (
            "model",
            "proxy",
            *GATEWAYS,
            "mlserver",
            "echo",
            "model-grpc",
            "mlserver-grpc",
            "grpc-echo",
        )
        print("warm-up", flush=True)
        for name in order:
            run_load(single[name], 32, 2, work)
        for round_ in range(1, data.rounds + 1):
            data.fdatasync.append(fdatasync_latency(fleet.sqlite_dir))
            print(
                f"  round {round_}: fdatasync on the gateways' disk: "
                f"p50 {data.fdatasync[-1][0]:.3f} ms, p99 {data.fdatasync[-1][1]:.2f} ms",
                flush=True,
            )
            for connections in CONNECTIONS:
                for name in order:
                    recorder.measure(
                        name,
                        single[name],
                        connections=connections,
                        rows=1,
                        round_=round_,
                        watch=watch[name],
                        metrics_url=by_target[name].metrics_url,
                    )
        for rows in BATCH_ROWS:
            batch = requests_for(rows, urls, grpc_targets)
            for name in ("model", "model-grpc", "mlserver", "mlserver-grpc", "gateway-sqlite"):
                recorder.measure(
                    name,
                    batch[name],
                    connections=BATCH_CONNECTIONS,
                    rows=rows,
                    round_=0,
                    watch=watch[name],
                )
        # wrk's warm-up requests were answered too: at least the measured ones must be stored.
        for gateway in fleet.gateways.values():
            data.checks.append(check_stored(gateway, recorder.acknowledged[gateway.name]))


def program_runs(data: BenchData) -> None:
    for scenario in PROGRAM_SCENARIOS:
        done = subprocess.run(
            [sys.executable, "-m", "bench.program_eval", scenario],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"program evaluation {scenario} failed:\n{done.stderr}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        data.program.append(result)
        print(
            f"  program {scenario:30} {result['resources']:4} resources  "
            f"first {result['first_s']:.3f} s  then {result['warm_s']:.3f} s",
            flush=True,
        )


def versions() -> dict[str, str]:
    freeze = subprocess.run(
        [str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "freeze"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    pins = dict(line.split("==", 1) for line in freeze.splitlines() if "==" in line)
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    # ghz built by `go install` reports "dev"; its module version is in the binary's build info.
    build_info = subprocess.run(
        ["go", "version", "-m", ghz_path()], capture_output=True, text=True, check=False
    ).stdout.split()
    return {
        "ghz": next(
            (build_info[i + 2] for i, word in enumerate(build_info[:-2]) if word == "mod"), "?"
        ),
        "python": platform.python_version(),
        "mlserver": pins.get("mlserver", "?"),
        "mlserver-sklearn": pins.get("mlserver-sklearn", "?"),
        "scikit-learn": pins.get("scikit-learn", "?"),
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0].split(" [")[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one load run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every target")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started_at = time.monotonic()
    data = BenchData(seconds=args.seconds, rounds=args.rounds)
    data.environment.update(
        {
            "cpus": os.cpu_count(),
            "loadavg_before": os.getloadavg(),
            "versions": versions(),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        }
    )
    work = Path(tempfile.mkdtemp(prefix="mlstack-bench-"))
    try:
        print(f"serving and gateway hop: {args.rounds} rounds of {args.seconds:g} s runs")
        load_runs(data, work)
        print("program evaluation")
        program_runs(data)
    except BaseException:
        print(f"bench failed; server logs are in {work / 'logs'}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    data.environment["loadavg_after"] = os.getloadavg()
    data.environment["wall_seconds"] = round(time.monotonic() - started_at, 1)
    summary = report.summarize(data.runs, data.program, data.fdatasync)
    args.out.mkdir(parents=True, exist_ok=True)
    raw = {
        "seconds": data.seconds,
        "rounds": data.rounds,
        "environment": data.environment,
        "checks": data.checks,
        "summary": summary,
        "runs": [
            {**asdict(run), "result": {**asdict(run.result), "rps": run.result.rps}}
            for run in data.runs
        ],
        "program": data.program,
    }
    (args.out / "results.json").write_text(json.dumps(raw, indent=2) + "\n")
    markdown = report.markdown(summary, data.environment, data.checks, data.seconds, data.rounds)
    (args.out / "results.md").write_text(markdown)
    report.chart(summary, args.out / "bench.png")
    print()
    print(markdown)
    print(f"wrote {args.out / 'results.md'}, results.json and bench.png")
    for key in report.HEADLINES:
        print(f"{key}: {summary['headline'][key]:.2f}")
    return 0


if __name__ == "__main__":
    import_service(MODEL_SRC)
    import_service(GATEWAY_SRC)
    sys.exit(main())
