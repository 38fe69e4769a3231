"""Program evaluation: wall time of `__main__.py` under Pulumi's mocks, per stack.

Run as ``python -m bench.program_eval SCENARIO`` in a fresh process: it prints one JSON line with
the first evaluation (imports of pulumi, pulumi_kubernetes and the components included) and the
median of the next ``--repeat`` evaluations in the same process, and how many resources the
program registered.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SYNTHETIC_MAIN = Path(__file__).resolve().parent / "synthetic_main.py"
REPLICAS = 100
EXTRA_SERVICES = 20

SCENARIOS = {
    "dev": "stack dev (Pulumi.dev.yaml)",
    "prod": "stack prod (Pulumi.prod.yaml)",
    "dev-100-replicas": f"dev with {REPLICAS} model replicas",
    "dev-100-replicas-20-services": (
        f"dev with {REPLICAS} model replicas and {EXTRA_SERVICES} extra Microservice components"
    ),
}


def _evaluator(scenario: str) -> Callable[[], int]:
    from harness.program import PROJECT, run_program, stack_config

    if scenario in {"dev", "prod"}:
        return lambda: len(run_program(scenario).resources)
    config: dict[str, Any] = stack_config("dev")
    model = f"{PROJECT}:model"
    config[model] = {**config[model], "replicas": REPLICAS}
    if scenario == "dev-100-replicas":
        return lambda: len(run_program("dev", config).resources)
    if scenario == "dev-100-replicas-20-services":
        os.environ["BENCH_EXTRA_SERVICES"] = str(EXTRA_SERVICES)
        return lambda: len(run_program("dev", config, program=SYNTHETIC_MAIN).resources)
    raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.program_eval")
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    evaluate = _evaluator(args.scenario)
    resources = evaluate()
    first = time.perf_counter() - started
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        evaluate()
        times.append(time.perf_counter() - started)
    result = {
        "scenario": args.scenario,
        "resources": resources,
        "first_s": first,
        "warm_s": statistics.median(times),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
