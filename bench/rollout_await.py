"""Does `pulumi up` return only once a model rollout has ended? The provider's own Deployment
await against the `pulumi.com/waitFor` conditions of `components/rollout.py`, on the local
cluster of `make e2e-cluster` (root).

Each round sets `model.version` to the other version and runs `pulumi up`; the moment it returns,
the stack's workloads are read (`e2e.cluster.unfinished_rollouts`, what `kubectl rollout status`
checks). Each round starts once the previous one's rollouts have ended. The rounds alternate
between the two ways of awaiting: the workspace's copy of `components/rollout.py` is swapped for
one that sets no annotation, so that the provider falls back on its own await logic.

    python -m bench.rollout_await [--dir /tmp/mlstack-e2e-cluster] [--rounds 10]
"""

from __future__ import annotations

import shutil
import statistics
import sys

from bench.cluster_bench import ClusterBench, parser
from components.config import MODEL_VERSIONS
from e2e.cluster import STACK, unfinished_rollouts
from e2e.controlplane import ControlPlane
from e2e.workspace import PulumiWorkspace
from harness.poll import wait_until
from harness.program import PROJECT, ROOT

PROVIDER_AWAIT = '''"""The bench's stand-in: no annotation, the provider's own await logic."""


def await_deployment() -> dict[str, str]:
    return {}


def await_stateful_set() -> dict[str, str]:
    return {}
'''
MODES = ("provider's own await", "waitFor conditions")


def use(workspace: PulumiWorkspace, mode: str) -> None:
    """The workspace's program: this work tree's components, with or without the conditions."""
    components = workspace.project_dir / "components"
    shutil.copytree(ROOT / "components", components, dirs_exist_ok=True)
    if mode == MODES[0]:
        (components / "rollout.py").write_text(PROVIDER_AWAIT)


def settle(plane: ControlPlane, timeout: float = 600) -> None:
    """Every round starts from ended rollouts, whatever the round before it returned on."""
    unfinished: list[str] = []

    def ended() -> bool:
        nonlocal unfinished
        unfinished = unfinished_rollouts(plane)
        return not unfinished

    try:
        wait_until(ended, "every rollout to end", timeout, interval=1)
    except RuntimeError as error:
        raise RuntimeError(f"{error}; still unfinished: {unfinished}") from None


def main(argv: list[str]) -> int:
    command_line = parser("python -m bench.rollout_await", __doc__.split("\n\n")[0])
    command_line.add_argument("--rounds", type=int, default=10, help="rounds of each mode")
    args = command_line.parse_args(argv)
    cluster = ClusterBench(args.dir)
    plane, workspace = cluster.kube, cluster.workspace
    results: dict[str, list[tuple[float, bool]]] = {mode: [] for mode in MODES}
    # The running one: the program's default when the stack file sets none.
    version = workspace.get_config(STACK, f"{PROJECT}:model.version", MODEL_VERSIONS[-1])
    try:
        for round_ in range(2 * args.rounds):
            mode = MODES[round_ % 2]
            settle(plane)
            use(workspace, mode)
            version = "v1" if version == "v2" else "v2"
            workspace.set_config(STACK, f"{PROJECT}:model.version", version)
            up = workspace.run("up", "--stack", STACK, "--yes", "--skip-preview")
            ended = not unfinished_rollouts(plane)
            results[mode].append((up.seconds, ended))
            print(f"{mode}: to {version}: up {up.seconds:.1f} s, rollout ended: {ended}")
    finally:
        use(workspace, MODES[1])
    print(report(results))
    return 0


def report(results: dict[str, list[tuple[float, bool]]]) -> str:
    baseline = statistics.median(s for s, _ in results[MODES[0]])
    lines = [
        "| await | rounds | `pulumi up` returned before the rollout ended | median `pulumi up` "
        "/ the provider's own await's |",
        "| --- | --- | --- | --- |",
    ]
    for mode, rounds in results.items():
        early = sum(1 for _, ended in rounds if not ended)
        ratio = statistics.median(s for s, _ in rounds) / baseline
        lines.append(f"| {mode} | {len(rounds)} | {early} | {ratio:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
