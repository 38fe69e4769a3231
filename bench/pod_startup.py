"""`make bench-startup`: where the time goes from `pulumi up` to every pod Ready, on the real node.

Against a cluster `make e2e-cluster` left running (its folder, default /tmp/mlstack-e2e-cluster:
the images are on the node already, i.e. warm), `--runs` times:

1. `pulumi destroy`, then `pulumi up` creating the whole stack, timed; every pod's way to Ready
   watched as it happens (timestamps taken here as the API server's watch reports them, finer
   than the seconds of the pods' own conditions): created → scheduled → init containers done →
   the containers started → Ready; and the gateway's migrations Job's pod, created → succeeded;
2. one pod of each workload deleted in turn, and the time until its replacement is Ready;
3. the stack's live objects (captured after the up) removed and created again by
   `kubectl apply` + `kubectl rollout status` of the three workloads + the migrations Job's
   completion + the LoadBalancer's address: the same objects, side by side with the `pulumi up`
   of the same run.

The ratio of the two creations is the figure of `bench/results/pod-startup.md`; the stack is left
deployed by `pulumi up`, as it was found. Writes bench/results/pod-startup.{md,json}.

    python -m bench.pod_startup [--dir /tmp/mlstack-e2e-cluster] [--runs 3]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.cluster_bench import ClusterBench, arguments, conditions, write_results
from components.app import MIGRATIONS
from components.labels import NAME_LABEL
from e2e.cluster import NAMESPACE, STACK, fresh_volumes
from e2e.controlplane import ControlPlane
from harness.poll import eventually
from tests.e2e import app

WORKLOADS: Final = ("database", "model", "gateway")
ROLLOUTS: Final = ("deployment/gateway", "deployment/model", "statefulset/database")


@dataclass
class PodTimes:
    """Seconds since the watch started at which each step was first seen."""

    workload: str
    created: float
    scheduled: float | None = None
    initialized: float | None = None
    started: float | None = None
    ready: float | None = None
    # A pod that runs to completion (the migrations Job's): when it had.
    succeeded: float | None = None

    def phases(self) -> dict[str, float]:
        """Scheduling, the way to the containers' start (sandbox, volumes, image, init
        containers), and from the start to Ready (the process's own start and the probes)."""
        if None in (self.scheduled, self.initialized, self.started, self.ready):
            return {}
        assert self.scheduled is not None and self.initialized is not None
        assert self.started is not None and self.ready is not None
        return {
            "scheduled": self.scheduled - self.created,
            "init_done": self.initialized - self.scheduled,
            "started": self.started - self.initialized,
            "start_to_ready": self.ready - self.started,
            "scheduled_to_ready": self.ready - self.scheduled,
        }


@dataclass
class PodWatch:
    """`kubectl get pods --watch` in the app's namespace, each pod's steps timed as seen."""

    kube: ControlPlane
    start: float = field(default_factory=time.monotonic)
    pods: dict[str, PodTimes] = field(default_factory=dict)
    _process: subprocess.Popen[str] | None = None
    _thread: threading.Thread | None = None

    def __enter__(self) -> PodWatch:
        self._process = subprocess.Popen(
            self.kube.kubectl_argv("get", "pods", "-n", NAMESPACE, "--watch", "-o", "json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
        if self._thread is not None:
            self._thread.join(10)

    def _read(self) -> None:
        """The watch prints one indented JSON object after another, each ending in a line that
        is only its closing brace; each is timed as it arrives. Parsed once it is whole, so the
        watch costs little CPU beside what it times."""
        assert self._process is not None and self._process.stdout is not None
        lines: list[str] = []
        for line in self._process.stdout:
            lines.append(line)
            if line.rstrip("\n") == "}":
                self._record(json.loads("".join(lines)), time.monotonic() - self.start)
                lines.clear()

    def _record(self, pod: dict[str, Any], now: float) -> None:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            return
        workload = (meta.get("labels") or {}).get(NAME_LABEL, "")
        times = self.pods.setdefault(meta["uid"], PodTimes(workload, now))
        status = pod.get("status") or {}
        held = {c["type"] for c in status.get("conditions") or [] if c["status"] == "True"}
        containers = status.get("containerStatuses") or []
        if "PodScheduled" in held and times.scheduled is None:
            times.scheduled = now
        if "Initialized" in held and times.initialized is None:
            times.initialized = now
        if containers and all(c.get("started") for c in containers) and times.started is None:
            times.started = now
        if "Ready" in held and times.ready is None:
            times.ready = now
        if status.get("phase") == "Succeeded" and times.succeeded is None:
            times.succeeded = now

    def first_ready(self, workload: str, created_after: float) -> float | None:
        """When the first pod of `workload` created after `created_after` was Ready."""
        found = [
            pod.ready
            for pod in self.pods.values()
            if pod.workload == workload and pod.created > created_after and pod.ready is not None
        ]
        return min(found, default=None)


@dataclass(frozen=True)
class Run:
    run: int
    pulumi_up_seconds: float
    kubectl_apply_seconds: float
    # Per workload: each phase (PodTimes.phases), for the pods `pulumi up` created.
    pods: dict[str, dict[str, float]]
    # Per workload: from the delete of one pod to its replacement's Ready.
    replacement_ready_seconds: dict[str, float]
    # The migrations Job's pod, from its creation to its success.
    migrations_seconds: float

    @property
    def ratio(self) -> float:
        return self.pulumi_up_seconds / self.kubectl_apply_seconds


class Bench(ClusterBench):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.manifests = workdir / "pulumi" / "startup-manifests.json"

    def pulumi_up(self) -> tuple[float, dict[str, dict[str, float]], float]:
        self.workspace.run("destroy", "--stack", STACK, "--yes", "--skip-preview")
        fresh_volumes(self.kube, self.node)
        with PodWatch(self.kube) as watch:
            up = self.workspace.run("up", "--stack", STACK, "--yes", "--skip-preview")
            time.sleep(1)
        self.manifests.write_text(json.dumps(app.live_manifests(self.kube, STACK)))
        phases: dict[str, list[dict[str, float]]] = {}
        for pod in watch.pods.values():
            if pod.workload in WORKLOADS and pod.phases():
                phases.setdefault(pod.workload, []).append(pod.phases())
        medians = {
            workload: {key: statistics.median(p[key] for p in found) for key in found[0]}
            for workload, found in phases.items()
        }
        (migrations,) = [
            pod.succeeded - pod.created
            for pod in watch.pods.values()
            if pod.workload == MIGRATIONS and pod.succeeded is not None
        ]
        return up.seconds, medians, migrations

    def replacements(self) -> dict[str, float]:
        found = {}
        for workload in WORKLOADS:
            eventually(lambda: not self.unready(), "every pod Ready", 120, interval=0.5)
            victim = app.live(app.pods(self.kube, workload))[0]["metadata"]["name"]
            with PodWatch(self.kube) as watch:
                time.sleep(1)  # the watch's first listing: the pods there before the delete
                start = time.monotonic() - watch.start
                self.kube.kubectl("delete", "pod", victim, "-n", NAMESPACE, "--wait=false")
                eventually(
                    lambda: watch.first_ready(workload, start) is not None,  # noqa: B023
                    f"a {workload} pod Ready again",
                    120,
                    interval=0.1,
                )
                ready = watch.first_ready(workload, start)
                assert ready is not None
            found[workload] = ready - start
        return found

    def unready(self) -> list[str]:
        """The pods not Ready, but for those that ran to completion (the migrations Job's)."""
        return [
            p["metadata"]["name"]
            for p in app.live(app.pods(self.kube))
            if not app.ready(p) and p["status"].get("phase") != "Succeeded"
        ]

    def kubectl_apply(self) -> float:
        self.workspace.run("destroy", "--stack", STACK, "--yes", "--skip-preview")
        fresh_volumes(self.kube, self.node)
        # The same watch as beside `pulumi up`, so that both sides share the machine with it.
        with PodWatch(self.kube):
            start = time.monotonic()
            self.kube.kubectl("apply", "-f", str(self.manifests), timeout=300)
            for workload in ROLLOUTS:
                self.kube.kubectl("rollout", "status", workload, "-n", NAMESPACE,
                                  "--timeout=300s", timeout=330)  # fmt: skip
            self.kube.kubectl("wait", f"job/{MIGRATIONS}", "-n", NAMESPACE, "--timeout=300s",
                              "--for=condition=Complete", timeout=330)  # fmt: skip
            self.kube.kubectl(
                "wait", "service/gateway", "-n", NAMESPACE, "--timeout=300s",
                "--for=jsonpath={.status.loadBalancer.ingress[0].ip}", timeout=330,
            )  # fmt: skip
            seconds = time.monotonic() - start
        self.kube.kubectl("delete", "namespace", NAMESPACE, "--wait=true", "--timeout=300s",
                          timeout=330)  # fmt: skip
        return seconds

    def run(self, number: int) -> Run:
        up_seconds, pods, migrations = self.pulumi_up()
        replacement = self.replacements()
        apply_seconds = self.kubectl_apply()
        return Run(
            number, round(up_seconds, 2), round(apply_seconds, 2), pods, replacement,
            round(migrations, 2),
        )  # fmt: skip

    def leave_deployed(self) -> None:
        """The stack deployed again by `pulumi up`, whichever step a run stopped at."""
        if self.kube.kubectl("get", "namespace", NAMESPACE, check=False).returncode == 0:
            self.kube.kubectl("delete", "namespace", NAMESPACE, "--wait=true",
                              "--timeout=300s", timeout=330)  # fmt: skip
        self.workspace.run("refresh", "--stack", STACK, "--yes", "--skip-preview")
        fresh_volumes(self.kube, self.node)
        self.workspace.run("up", "--stack", STACK, "--yes", "--skip-preview")


def write(runs: list[Run]) -> Path:
    measured = conditions()
    document = {
        "conditions": measured,
        "runs": [{**asdict(r), "ratio": round(r.ratio, 2)} for r in runs],
    }
    lines = [
        "# From `pulumi up` to every pod Ready, on the real node",
        "",
        f"`make bench-startup`, {measured['date']}; {measured['machine']}; the stack of "
        "`make e2e-cluster`, its images already on the node (bench/pod_startup.py says what "
        "each figure is).",
        "",
        "## Creating the whole stack: `pulumi up` against `kubectl apply` of the same objects",
        "",
        "| run | `pulumi up` (s) | `kubectl apply` + rollouts + address (s) | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for r in runs:
        lines.append(
            f"| {r.run} | {r.pulumi_up_seconds:.1f} | {r.kubectl_apply_seconds:.1f} "
            f"| {r.ratio:.2f} |"
        )
    lines += [
        "",
        "## Each pod of that `pulumi up`, per workload (medians, seconds)",
        "",
        "scheduled: from creation; init done: the init containers, from scheduling (none of "
        "these workloads has one); started: every container past its startup probe (sandbox, "
        "process start, imports, the model's load), from init; start → Ready: the first "
        "readiness probe after that. The gateway's pods start beside its migrations Job "
        "(below), and answer 503 until it has run.",
        "",
        "| run | workload | scheduled | init done | started | start → Ready | scheduled → Ready |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        for workload, p in sorted(r.pods.items()):
            lines.append(
                f"| {r.run} | {workload} | {p['scheduled']:.1f} | {p['init_done']:.1f} "
                f"| {p['started']:.1f} | {p['start_to_ready']:.1f} "
                f"| {p['scheduled_to_ready']:.1f} |"
            )
    lines += [
        "",
        "The migrations Job's pod, from its creation to its success (it waits for the new "
        "database): " + ", ".join(f"{r.migrations_seconds:.1f}" for r in runs) + " s.",
        "",
        "## One pod deleted: its replacement Ready (seconds from the delete)",
        "",
        "| run | " + " | ".join(WORKLOADS) + " |",
        "| --- |" + " --- |" * len(WORKLOADS),
    ]
    for r in runs:
        cells = " | ".join(f"{r.replacement_ready_seconds[w]:.1f}" for w in WORKLOADS)
        lines.append(f"| {r.run} | {cells} |")
    return write_results("pod-startup", document, lines)


def main() -> int:
    args = arguments("python -m bench.pod_startup")
    bench = Bench(args.dir)
    runs = []
    try:
        for number in range(1, args.runs + 1):
            found = bench.run(number)
            print(json.dumps({**asdict(found), "ratio": round(found.ratio, 2)}), flush=True)
            runs.append(found)
    finally:
        bench.leave_deployed()
    print(f"wrote {write(runs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
