"""The benchmarks' tools and targets. `make bench`'s ghz: where mk/bench.mk builds it is where the
benchmarks run it from, a path make hands to bench/load.py (MLSTACK_GHZ) rather than a second copy
of it. The benchmarks on `make e2e-cluster`'s cluster, when there is none."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import load
from harness.make import make_env, run_make
from tests.paths import ROOT

# A target that prints the MLSTACK_GHZ its recipe is given, run (`+`) under `make -n` as a
# prerequisite of bench: a target-specific variable reaches the prerequisites of its target.
PROBE = ["--eval", 'ghz-probe: ; +@echo "MLSTACK_GHZ=$$MLSTACK_GHZ"', "--eval", "bench: ghz-probe"]


def test_make_bench_runs_the_benchmarks_with_the_ghz_it_builds() -> None:
    done = subprocess.run(
        ["make", "-s", "-n", *PROBE, "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (given,) = [line for line in done.stdout.splitlines() if line.startswith("MLSTACK_GHZ=")]
    ghz = Path(given.removeprefix("MLSTACK_GHZ="))
    assert ghz.is_absolute() and ghz.name == "ghz"
    assert f'GOBIN="{ghz.parent}" go install github.com/bojand/ghz/cmd/ghz@' in done.stdout


def test_the_benchmarks_run_the_ghz_make_gives_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ghz = tmp_path / "ghz"
    monkeypatch.setenv(load.GHZ_ENV, str(ghz))
    assert load.ghz_path() == str(ghz)
    monkeypatch.delenv(load.GHZ_ENV)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="make bench"):
        load.ghz_path()


@pytest.mark.parametrize("target", ["bench-failover", "bench-startup"])
def test_a_cluster_benchmark_without_a_cluster_says_so_in_one_line(
    tmp_path: Path, target: str
) -> None:
    done = run_make(target, f"E2E_CLUSTER_DIR={tmp_path}", env=make_env("E2E_CLUSTER_DIR"))
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if not line.startswith("make: ***")]
    assert said == [
        f"{tmp_path} holds no cluster (no pulumi/, cluster/, images/): `make e2e-cluster` starts "
        "one there (E2E_CLUSTER_DIR); the benchmark's --dir"
    ]
    assert not list(tmp_path.iterdir())
