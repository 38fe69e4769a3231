"""Where make puts something a Python tool also finds by default: the two say the same place.

make creates the place (Checkov's virtual environment, a local cluster's folder); a tool that is
not told where it is looks for it at its Python default."""

from __future__ import annotations

import re

from bench import cluster_bench
from harness.make import make_env, run_make
from harness.program import ROOT
from tools import policy


def dry_run(*arguments: str) -> str:
    result = run_make("-n", *arguments, env=make_env("E2E_CLUSTER_DIR"))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_make_installs_checkov_where_tools_policy_runs_it() -> None:
    # -B: the commands that make the environment, though it may be there already.
    made = re.search(r"-m venv (\S+)$", dry_run("-B", "checkov-venv"), re.M)
    assert made is not None
    assert ROOT / made.group(1) / "bin" / "checkov" == policy.DEFAULT_CHECKOV


def test_make_policy_leaves_the_checkov_path_to_tools_policy() -> None:
    dry = dry_run("policy").splitlines()
    (gate,) = [line for line in dry if " -m tools.policy " in line]
    assert gate.endswith("-m tools.policy --out build/manifests")
    (suite,) = [line for line in dry if " -m pytest tests/policy" in line]
    assert suite.startswith(".venv/bin/python "), suite


def test_the_benchmarks_find_the_cluster_where_make_e2e_cluster_leaves_it() -> None:
    made = re.search(r"-m e2e\.cluster down (\S+)$", dry_run("e2e-clean"), re.M)
    assert made is not None
    assert made.group(1) == str(cluster_bench.DEFAULT_DIR)
