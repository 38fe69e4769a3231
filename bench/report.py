"""Summaries of the load runs, the Markdown table and the PNG chart of bench/results/."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import LoadResult

LABELS = {
    "model": "mlstack model service",
    "model-grpc": "mlstack model service, gRPC",
    "mlserver": "MLServer + mlserver-sklearn",
    "mlserver-grpc": "MLServer + mlserver-sklearn, gRPC",
    "echo": "bare ASGI echo (ceiling)",
    "grpc-echo": "bare grpc.aio echo (gRPC ceiling)",
    "proxy": "bare ASGI proxy → model (hop floor)",
    "gateway-sqlite": "gateway + SQLite → model",
    "gateway-postgresql": "gateway + PostgreSQL → model",
}
HEADLINE_GATEWAY = "gateway-sqlite"
TARGETS = {
    "model_vs_mlserver_rps": (">=", 3.0),
    # Issue 23: no worse than the ratio of the last run before it (bench/results, 2026-12-01).
    "model_vs_mlserver_p99": ("<=", 0.14),
    "model_grpc_vs_mlserver_grpc_rps": (">=", 3.0),
    "gateway_vs_direct_rps": (">=", 0.5),
    # Issue 23: against the same machine's ceilings, measured in the same round.
    "model_vs_echo_rps": (">=", 0.5),
    "model_grpc_vs_grpc_echo_rps": (">=", 0.8),
    "gateway_pg_vs_direct_rps": (">=", 0.6),
    "gateway_sqlite_vs_direct_rps": (">=", 0.65),
    "gateway_added_p50_vs_proxy": ("<=", 2.0),
}
# Printed last by `make bench`, in this order: those of issues 7 and 13, then issue 23's.
HEADLINES = (
    "model_vs_mlserver_rps",
    "model_grpc_vs_mlserver_grpc_rps",
    "gateway_vs_direct_rps",
    "model_vs_echo_rps",
    "model_grpc_vs_grpc_echo_rps",
    "gateway_pg_vs_direct_rps",
    "gateway_sqlite_vs_direct_rps",
    "gateway_added_p50_vs_proxy",
)


@dataclass
class Run:
    """One measurement of `make bench`: a target under load at a number of connections."""

    target: str
    connections: int
    rows: int
    round: int
    result: LoadResult
    # For a gateway: means per request from its own /metrics over the run (bench.run's
    # gateway_stats).
    internals: dict[str, float] = field(default_factory=dict)


# The serving ratios at 32 connections, each taken within a round (_paired): the first target's
# measure (a LoadResult field) over the second's.
SERVING_RATIOS = {
    "model_vs_mlserver_rps": ("model", "mlserver", "rps"),
    "model_vs_mlserver_p99": ("model", "mlserver", "p99_ms"),
    "model_vs_echo_rps": ("model", "echo", "rps"),
    "model_grpc_vs_mlserver_grpc_rps": ("model-grpc", "mlserver-grpc", "rps"),
    "model_grpc_vs_mlserver_grpc_p99": ("model-grpc", "mlserver-grpc", "p99_ms"),
    "model_grpc_vs_grpc_echo_rps": ("model-grpc", "grpc-echo", "rps"),
    "model_grpc_vs_model_rps": ("model-grpc", "model", "rps"),
}


def _median(values: Iterable[float]) -> float:
    listed = list(values)
    return statistics.median(listed) if listed else float("nan")


def _select(runs: Sequence[Run], target: str, connections: int) -> list[Run]:
    """The rounds' runs of ``target`` (round 0 holds the batch runs)."""
    return [
        r
        for r in runs
        if r.target == target and r.connections == connections and r.rows == 1 and r.round > 0
    ]


def _paired(
    runs: Sequence[Run],
    a: str,
    b: str,
    connections: int,
    value: Callable[[Run, Run], float],
) -> float:
    """The median over rounds of ``value(run of a, run of b)``, both from the same round."""
    by_round = {r.round: r for r in _select(runs, b, connections)}
    return _median(
        value(run, by_round[run.round])
        for run in _select(runs, a, connections)
        if run.round in by_round
    )


def _ratio(measure: str) -> Callable[[Run, Run], float]:
    """The first run's `measure` over the second's."""

    def ratio(a: Run, b: Run) -> float:
        return float(getattr(a.result, measure)) / float(getattr(b.result, measure))

    return ratio


def _rounds(runs: Sequence[Run]) -> list[int]:
    return sorted({r.round for r in runs if r.round > 0})


def _added_ratio(runs: Sequence[Run], gateway: str, round_: int) -> float:
    """In one round at 1 connection: (gateway p50 - model p50) / (proxy p50 - model p50)."""
    p50 = {
        r.target: r.result.p50_ms
        for r in _select(runs, gateway, 1) + _select(runs, "proxy", 1) + _select(runs, "model", 1)
        if r.round == round_
    }
    if len(p50) < 3 or p50["proxy"] <= p50["model"]:
        return float("nan")
    return (p50[gateway] - p50["model"]) / (p50["proxy"] - p50["model"])


def summarize(
    runs: Sequence[Run],
    program: Sequence[dict[str, Any]],
    fdatasync: Sequence[tuple[float, float]],
) -> dict[str, Any]:
    targets = sorted({r.target for r in runs if r.round > 0}, key=list(LABELS).index)
    serving: dict[str, dict[str, dict[str, Any]]] = {}
    for target in targets:
        serving[target] = {}
        for connections in sorted({r.connections for r in runs if r.round > 0}):
            chosen = _select(runs, target, connections)
            if not chosen:
                continue
            processes = chosen[0].result.cpu_us_per_request.keys()
            serving[target][str(connections)] = {
                "rps": _median(r.result.rps for r in chosen),
                "p50_ms": _median(r.result.p50_ms for r in chosen),
                "p99_ms": _median(r.result.p99_ms for r in chosen),
                "cpu_us_per_request": {
                    p: _median(r.result.cpu_us_per_request[p] for r in chosen) for p in processes
                },
            }
    ratios = {
        key: _paired(runs, a, b, 32, _ratio(measure))
        for key, (a, b, measure) in SERVING_RATIOS.items()
    }
    hop: dict[str, dict[str, float]] = {}
    for gateway in ("proxy", "gateway-sqlite", "gateway-postgresql"):
        if gateway not in targets:
            continue
        hop[gateway] = {
            "rps_ratio_32": _paired(runs, gateway, "model", 32, _ratio("rps")),
            "added_p50_ms_1": _paired(
                runs, gateway, "model", 1, lambda a, b: a.result.p50_ms - b.result.p50_ms
            ),
            "added_p50_ms_32": _paired(
                runs, gateway, "model", 32, lambda a, b: a.result.p50_ms - b.result.p50_ms
            ),
        }
        if "proxy" in targets and gateway != "proxy":
            # What the hop adds to one request over what the bare proxy's adds, both against
            # the model's p50 of the same round.
            hop[gateway]["added_p50_vs_proxy_1"] = _median(
                _added_ratio(runs, gateway, round_) for round_ in _rounds(runs)
            )
        for connections in (1, 32):
            chosen = _select(runs, gateway, connections)
            for key in chosen[0].internals if chosen else ():
                hop[gateway][f"{key}_{connections}"] = _median(r.internals[key] for r in chosen)
    batch: dict[str, dict[str, float]] = {}
    for run in runs:
        if run.round == 0:
            batch.setdefault(run.target, {})[str(run.rows)] = run.result.rps * run.rows
    headline = {
        "model_vs_mlserver_rps": ratios["model_vs_mlserver_rps"],
        "model_grpc_vs_mlserver_grpc_rps": ratios["model_grpc_vs_mlserver_grpc_rps"],
        "gateway_vs_direct_rps": hop[HEADLINE_GATEWAY]["rps_ratio_32"],
        "model_vs_echo_rps": ratios["model_vs_echo_rps"],
        "model_grpc_vs_grpc_echo_rps": ratios["model_grpc_vs_grpc_echo_rps"],
        "gateway_pg_vs_direct_rps": hop["gateway-postgresql"]["rps_ratio_32"],
        "gateway_sqlite_vs_direct_rps": hop["gateway-sqlite"]["rps_ratio_32"],
        "gateway_added_p50_vs_proxy": hop[HEADLINE_GATEWAY]["added_p50_vs_proxy_1"],
    }
    measured = {**headline, "model_vs_mlserver_p99": ratios["model_vs_mlserver_p99"]}
    verdicts = {
        key: {
            "value": measured[key],
            "target": f"{op} {bound:g}",
            "met": measured[key] >= bound if op == ">=" else measured[key] <= bound,
        }
        for key, (op, bound) in TARGETS.items()
    }
    other = [r.result.other_busy_cores for r in runs]
    return {
        "serving": serving,
        "ratios": ratios,
        "hop": hop,
        "batch": batch,
        "program": list(program),
        "headline": headline,
        "targets": verdicts,
        "other_load_cores": {"median": _median(other), "max": max(other, default=0.0)},
        "fdatasync_ms": {
            "p50": _median(p50 for p50, _ in fdatasync),
            "p99": _median(p99 for _, p99 in fdatasync),
        },
    }


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def markdown(
    summary: dict[str, Any],
    environment: dict[str, Any],
    checks: Sequence[str],
    seconds: float,
    rounds: int,
) -> str:
    serving = summary["serving"]
    lines = [
        "# mlstack benchmarks",
        "",
        f"One `make bench` run, {environment['date']}, on {environment['cpus']} CPUs. "
        f"Load: wrk (REST), one thread, keep-alive; ghz (gRPC), one CPU, one call in flight "
        f"per connection; {seconds:g} s per run, {rounds} rounds over every "
        "target; each figure is the median over the rounds, each ratio the median of the ratios "
        "within a round. Requests: one iris row unless the batch table says otherwise; over "
        "gRPC, the input as tritonclient sends it by default (FP64 in "
        "raw_input_contents). Every infer request names the one output `predict`, the "
        "answer MLServer gives by default.",
        "",
        "## Headline",
        "",
        "| measure | value | target | met |",
        "| --- | ---: | --- | --- |",
    ]
    names = {
        "model_vs_mlserver_rps": "model service req/s ÷ MLServer req/s, 32 connections",
        "model_vs_mlserver_p99": "model service p99 ÷ MLServer p99, 32 connections",
        "model_grpc_vs_mlserver_grpc_rps": (
            "model service gRPC req/s ÷ MLServer gRPC req/s, 32 connections"
        ),
        "gateway_vs_direct_rps": "gateway (SQLite) req/s ÷ model req/s, 32 connections",
        "model_vs_echo_rps": "model service req/s ÷ bare ASGI echo req/s, 32 connections",
        "model_grpc_vs_grpc_echo_rps": (
            "model service gRPC req/s ÷ bare grpc.aio echo req/s, 32 connections"
        ),
        "gateway_pg_vs_direct_rps": "gateway (PostgreSQL) req/s ÷ model req/s, 32 connections",
        "gateway_sqlite_vs_direct_rps": "gateway (SQLite) req/s ÷ model req/s, 32 connections",
        "gateway_added_p50_vs_proxy": (
            "gateway (SQLite) added p50 ÷ bare proxy's added p50, 1 connection"
        ),
    }
    for key, verdict in summary["targets"].items():
        met = "yes" if verdict["met"] else "**no**"
        lines.append(f"| {names[key]} | {verdict['value']:.2f} | {verdict['target']} | {met} |")
    lines += [
        "",
        "## Serving and the gateway hop",
        "",
        "| target | req/s (1 conn) | p50 ms | p99 ms | req/s (32 conns) | p50 ms | p99 ms "
        "| CPU µs per request (32 conns) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for target, by_connections in serving.items():
        one, many = by_connections.get("1"), by_connections.get("32")
        if one is None or many is None:
            continue
        cpu = ", ".join(f"{p} {v:.0f}" for p, v in many["cpu_us_per_request"].items())
        lines.append(
            f"| {LABELS[target]} | {_fmt(one['rps'])} | {one['p50_ms']:.3f} | "
            f"{one['p99_ms']:.2f} | {_fmt(many['rps'])} | {many['p50_ms']:.2f} | "
            f"{many['p99_ms']:.2f} | {cpu} |"
        )
    ratios = summary["ratios"]
    lines += [
        "",
        f"Model service at 32 connections: {ratios['model_vs_mlserver_rps']:.1f}x MLServer's "
        f"requests/s with {ratios['model_vs_mlserver_p99']:.2f}x its p99, and "
        f"{ratios['model_vs_echo_rps']:.2f}x the bare echo's requests/s. Over gRPC: "
        f"{ratios['model_grpc_vs_mlserver_grpc_rps']:.1f}x MLServer's gRPC requests/s with "
        f"{ratios['model_grpc_vs_mlserver_grpc_p99']:.2f}x its p99, "
        f"{ratios['model_grpc_vs_grpc_echo_rps']:.2f}x the bare grpc.aio echo's, and "
        f"{ratios['model_grpc_vs_model_rps']:.2f}x its own REST requests/s.",
        "",
        "| gateway hop | req/s ÷ direct (32 conns) | added p50, 1 conn (ms) "
        "| ÷ the proxy's | added p50, 32 conns (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for gateway, hop in summary["hop"].items():
        vs_proxy = hop.get("added_p50_vs_proxy_1")
        lines.append(
            f"| {LABELS[gateway]} | {hop['rps_ratio_32']:.2f} | {hop['added_p50_ms_1']:.3f} | "
            f"{'' if vs_proxy is None else f'{vs_proxy:.1f}'} | "
            f"{hop['added_p50_ms_32']:.2f} |"
        )
    fsync = summary["fdatasync_ms"]
    lines += [
        "",
        "Inside the gateway (means per request from its own `/metrics` over each run; "
        f"fdatasync of one 4 KiB block on the same disk, probed before each round: "
        f"p50 {fsync['p50']:.3f} ms, p99 {fsync['p99']:.2f} ms):",
        "",
        "| gateway | conns | answer (ms) | model call (ms) | one commit (ms) | rows per commit |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for gateway, hop in summary["hop"].items():
        for connections in (1, 32):
            if f"request_ms_{connections}" not in hop:
                continue
            lines.append(
                f"| {LABELS[gateway]} | {connections} | {hop[f'request_ms_{connections}']:.3f} | "
                f"{hop[f'model_call_ms_{connections}']:.3f} | "
                f"{hop[f'commit_ms_{connections}']:.3f} | "
                f"{hop[f'rows_per_commit_{connections}']:.1f} |"
            )
    lines += [
        "",
        "## Batches (32 connections): rows scored per second",
        "",
        "| target | 1 row | 32 rows | 256 rows |",
        "| --- | ---: | ---: | ---: |",
    ]
    for target, by_rows in summary["batch"].items():
        cells = " | ".join(_fmt(by_rows.get(str(rows), float("nan"))) for rows in (1, 32, 256))
        lines.append(f"| {LABELS[target]} | {cells} |")
    lines += [
        "",
        "## Program evaluation (`__main__.py` under Pulumi's mocks)",
        "",
        "Times are this run's; the ratios, each over the first scenario's of the same run, are",
        "what compares across runs on a shared machine.",
        "",
        "| stack | resources | first evaluation, fresh process (s) | next evaluations (s) | "
        "first ÷ the first scenario's | next ÷ the first scenario's |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = summary["program"][0] if summary["program"] else None
    for item in summary["program"]:
        assert base is not None
        lines.append(
            f"| {item['scenario']} | {item['resources']} | {item['first_s']:.3f} | "
            f"{item['warm_s']:.3f} | {item['first_s'] / base['first_s']:.2f} | "
            f"{item['warm_s'] / base['warm_s']:.2f} |"
        )
    other = summary["other_load_cores"]
    pg = environment.get("postgresql", {})
    v = environment["versions"]
    lines += [
        "",
        "## Conditions",
        "",
        f"- Other work on the machine during the load runs (busy cores not used by the servers "
        f"or wrk): median {other['median']:.2f}, max {other['max']:.2f} of "
        f"{environment['cpus']}. Load average before {environment['loadavg_before'][0]:.2f}, "
        f"after {environment['loadavg_after'][0]:.2f}. Whole run: "
        f"{environment['wall_seconds']:.0f} s.",
        f"- Model: {environment['model']}; MLServer loads the same fitted estimator, exported "
        "with joblib. MLServer runs with `parallel_workers: 0` (its default of one worker "
        "process does not start with the uvloop it installs) and `debug: false` (no access "
        "log, as ours); everything else is its default.",
        "- Durability: the gateway answers 200 only after its row is committed. SQLite: WAL, "
        "`synchronous=FULL` (the WAL is fdatasync'ed at every commit). PostgreSQL: "
        + ", ".join(f"`{k}={val}`" for k, val in pg.items())
        + ".",
        f"- Versions: Python {v['python']}, MLServer {v['mlserver']}, mlserver-sklearn "
        f"{v['mlserver-sklearn']}, scikit-learn {v['scikit-learn']}, {v['wrk']}, "
        f"ghz {v.get('ghz', '?')}.",
        *[f"- Check: {check}." for check in checks],
        "",
    ]
    return "\n".join(lines)


def chart(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    serving = summary["serving"]
    targets = [t for t in LABELS if t in serving and "32" in serving[t]]
    short = {
        "model": "model",
        "model-grpc": "model\ngRPC",
        "mlserver": "MLServer",
        "mlserver-grpc": "MLServer\ngRPC",
        "echo": "echo",
        "grpc-echo": "gRPC\necho",
        "proxy": "proxy",
        "gateway-sqlite": "gw+\nSQLite",
        "gateway-postgresql": "gw+\nPG",
    }
    colors = {
        "model": "#2b7bba",
        "model-grpc": "#6fa8dc",
        "mlserver": "#e07b39",
        "mlserver-grpc": "#f4b183",
        "echo": "#9e9e9e",
        "grpc-echo": "#cfcfcf",
        "proxy": "#c9b458",
        "gateway-sqlite": "#3a9e5f",
        "gateway-postgresql": "#7a5cb8",
    }
    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    rps_axis, latency_axis, batch_axis, program_axis = axes.ravel()

    rps = [serving[t]["32"]["rps"] for t in targets]
    bars = rps_axis.bar([short[t] for t in targets], rps, color=[colors[t] for t in targets])
    rps_axis.bar_label(bars, labels=[f"{v:,.0f}" for v in rps], fontsize=8)
    rps_axis.tick_params(axis="x", labelsize=8)
    rps_axis.set_title("Requests/s at 32 connections (1 row each)")
    rps_axis.set_ylabel("requests/s")

    width = 0.2
    series = [("1", "p50_ms"), ("1", "p99_ms"), ("32", "p50_ms"), ("32", "p99_ms")]
    for index, (connections, key) in enumerate(series):
        values = [serving[t][connections][key] for t in targets]
        positions = [i + (index - 1.5) * width for i in range(len(targets))]
        latency_axis.bar(positions, values, width, label=f"{key[:3]}, {connections} conn")
    latency_axis.set_xticks(range(len(targets)), [short[t] for t in targets], fontsize=8)
    latency_axis.set_yscale("log")
    latency_axis.set_ylabel("ms (log)")
    latency_axis.set_title("Latency")
    latency_axis.legend(fontsize=8)

    batch = summary["batch"]
    batch_targets = [t for t in LABELS if t in batch]
    for index, rows in enumerate(("1", "32", "256")):
        values = [batch[t].get(rows, 0.0) for t in batch_targets]
        positions = [i + (index - 1) * 0.27 for i in range(len(batch_targets))]
        label = "1 row" if rows == "1" else f"{rows} rows"
        batch_axis.bar(positions, values, 0.27, label=f"{label} per request")
    batch_axis.set_xticks(range(len(batch_targets)), [short[t] for t in batch_targets])
    batch_axis.set_yscale("log")
    batch_axis.set_ylabel("rows/s (log)")
    batch_axis.set_title("Batch throughput at 32 connections")
    batch_axis.legend(fontsize=8)

    program = summary["program"]
    names = [f"{p['scenario']}\n({p['resources']} resources)" for p in program]
    positions = list(range(len(program)))
    program_axis.bar(
        [p - 0.2 for p in positions], [p["first_s"] for p in program], 0.4, label="first"
    )
    program_axis.bar(
        [p + 0.2 for p in positions], [p["warm_s"] for p in program], 0.4, label="next"
    )
    program_axis.set_xticks(positions, names, fontsize=7)
    program_axis.set_ylabel("seconds")
    program_axis.set_title("Program evaluation under Pulumi mocks")
    program_axis.legend(fontsize=8)

    headline = summary["headline"]
    figure.suptitle(
        f"mlstack bench: model {headline['model_vs_mlserver_rps']:.1f}x MLServer req/s "
        f"(gRPC {headline['model_grpc_vs_mlserver_grpc_rps']:.1f}x); "
        f"gateway {headline['gateway_vs_direct_rps']:.2f}x direct req/s, "
        f"added p50 {headline['gateway_added_p50_vs_proxy']:.1f}x the bare proxy's"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
