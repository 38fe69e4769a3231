"""What the app scenarios do to the running app: predictions through the gateway's LoadBalancer
address, a bounded load loop, the database's rows, commands inside the app's containers."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from components import database
from components.labels import NAME_LABEL
from e2e.controlplane import ControlPlane
from e2e.node import Node
from harness.http import refused_with_retry_after, request
from harness.poll import eventually
from harness.services import SETOSA, VIRGINICA
from tests.e2e.conftest import API_KEY, NAMESPACE

PREDICT_PATH = "/api/v1/predict"
HISTORY_PATH = "/api/v1/predictions?limit=20"
BODY = json.dumps({"instances": [SETOSA, VIRGINICA]}).encode()
# The server closes each connection, so its side keeps the TIME_WAIT: the loads send thousands
# of requests a minute, and a client that closed first would run out of local ports.
CLOSE: Final = {"Connection": "close"}


@dataclass(frozen=True)
class Answer:
    at: float
    status: int  # 0: no HTTP answer at all
    version: str
    request_id: str
    error: str
    retry_after: str = ""  # the Retry-After header of a refusal
    # When the answer came (time.monotonic()); `at` is when the request was sent.
    done: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def refused_with_retry_after(self) -> bool:
        return refused_with_retry_after(self.status, self.retry_after)


# The stack's API key now: API_KEY until the rotation scenario moves the stack to another.
STACK_KEY = [API_KEY]


def predict(
    url: str, timeout: float = 10, key: str | None = None, idempotency_key: str | None = None
) -> Answer:
    """One POST /api/v1/predict with the stack's API key, or `key` (never through a proxy), and
    `idempotency_key` as its Idempotency-Key if given."""
    return _answer(
        "POST",
        url + PREDICT_PATH,
        BODY,
        timeout,
        lambda body: (body["model_version"], body["request_id"]),
        key=key or STACK_KEY[0],
        headers={"Idempotency-Key": idempotency_key} if idempotency_key else {},
    )


def history(url: str, timeout: float = 10) -> Answer:
    """One GET /api/v1/predictions; `request_id` holds the ids listed, comma-separated."""
    return _answer(
        "GET",
        url + HISTORY_PATH,
        None,
        timeout,
        lambda body: ("", ",".join(item["request_id"] for item in body["items"])),
        key=STACK_KEY[0],
    )


def _answer(
    method: str,
    url: str,
    body: bytes | None,
    timeout: float,
    read: Callable[[Any], tuple[str, str]],
    *,
    key: str,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    now = time.monotonic()
    try:
        reply = request(method, url, body, {"X-API-Key": key, **CLOSE, **(headers or {})}, timeout)
        if reply.status >= 300:
            error = reply.body.decode(errors="replace")[:300]
            retry_after = reply.headers.get("Retry-After", "")
            return Answer(now, reply.status, "", "", error, retry_after, done=time.monotonic())
        version, request_id = read(reply.json())
        return Answer(now, reply.status, version, request_id, "", done=time.monotonic())
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as err:
        # No whole, well-formed answer (a reset, an answer cut off mid-body, a status line or a
        # body that is not what was asked): a failed request, counted as one, never an exception
        # that would end a load loop's thread in silence, its failures unseen.
        return Answer(now, 0, "", "", repr(err), done=time.monotonic())


@dataclass
class Load:
    """A bounded load loop through the LoadBalancer: one request at a time, a short pause
    between them, for at most `limit` seconds (or until `stop`)."""

    url: str
    limit: float = 600
    pause: float = 0.05
    # What each request is: a prediction, or a history read.
    call: Callable[[str], Answer] = predict
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.answers.append(self.call(self.url))
            self._stop.wait(self.pause)

    @property
    def failures(self) -> list[Answer]:
        return [a for a in self.answers if not a.ok]

    @property
    def wrong_answers(self) -> list[Answer]:
        """Answers neither 200 nor 503 with Retry-After (a 500, a dropped connection, ...)."""
        return [a for a in self.answers if not a.ok and not a.refused_with_retry_after]

    def longest_pause_after(self, at: float) -> float:
        """The longest time from `at` on without an acknowledged prediction: between `at` or an
        answer 200 and the next answer 200 (requests refused or hung in between), the pause in
        writes a failover costs."""
        done = [at, *sorted(a.done for a in self.answers if a.ok and a.done > at)]
        return max((b - a for a, b in itertools.pairwise(done)), default=0.0)

    def since(self, at: float) -> Callable[[], bool]:
        """A check: whether a request sent after `at` (time.monotonic()) was answered 200."""
        return lambda: any(a.ok and a.at > at for a in self.answers)

    def versions(self) -> list[str]:
        """The model versions answered, in order, repeats collapsed (`["v2", "v1"]`)."""
        seen: list[str] = []
        for a in self.answers:
            if a.ok and (not seen or seen[-1] != a.version):
                seen.append(a.version)
        return seen

    def summary(self) -> str:
        fails = self.failures
        statuses = sorted({a.status for a in fails})
        counts = ", ".join(f"{sum(a.status == s for a in fails)}x {s}" for s in statuses)
        shown = "; ".join(f"{a.status} {a.error}" for a in (self.wrong_answers or fails)[:5])
        return (
            f"{len(self.answers)} requests, {len(fails)} failed [{counts}] ({shown}), "
            f"{self.versions()}"
        )


def under_load(
    url: str,
    disrupt: Callable[[], None],
    settle: Callable[[], object],
    what: str,
    *,
    limit: float,
    recovery: float,
    call: Callable[[str], Answer] = predict,
) -> tuple[Load, float]:
    """`disrupt()` under a steady load through `url`, once a request has been answered, then
    `settle()`: the stopped load, and when the disruption began (time.monotonic()). Fails unless a
    request sent after `disrupt` returned is answered 200 within `recovery` seconds."""
    with Load(url, limit=limit, call=call) as load:
        eventually(load.since(time.monotonic()), f"{what}: a prediction answered", 60, interval=0.5)
        time.sleep(2)
        start = time.monotonic()
        disrupt()
        # Since the disruption took effect: a request sent while `disrupt` was still running (a
        # kubectl call before the kill) may be answered by the instance about to go.
        eventually(
            load.since(time.monotonic()),
            f"{what}: a prediction acknowledged again",
            recovery,
            interval=0.5,
        )
        settle()
        time.sleep(2)
    return load, start


def acknowledged(*loads: Load) -> set[str]:
    return {a.request_id for load in loads for a in load.answers if a.ok}


def pods(kube: ControlPlane, name: str | None = None) -> list[dict[str, Any]]:
    args = ["pods", "-n", NAMESPACE]
    if name:
        args += ["-l", f"{NAME_LABEL}={name}"]
    items: list[dict[str, Any]] = kube.get_json(*args)["items"]  # type: ignore[assignment]
    return items


def ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def live(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods not being deleted."""
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready_pods(kube: ControlPlane, name: str) -> list[dict[str, Any]]:
    """The pods of workload `name` that are Ready and not being deleted."""
    return [p for p in live(pods(kube, name)) if ready(p)]


def ready_endpoints(kube: ControlPlane, service: str) -> set[str]:
    """The ready addresses of the Service's EndpointSlices."""
    slices: Any = kube.get_json(
        "endpointslices", "-n", NAMESPACE, "-l", f"kubernetes.io/service-name={service}"
    )
    found = set()
    for item in slices["items"]:
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready"):
                found.update(endpoint["addresses"])
    return found


def exec_in(
    kube: ControlPlane, pod: str, *argv: str, check: bool = True, container: str | None = None
) -> str:
    which = ["--container", container] if container else []
    proc = kube.kubectl("exec", "-n", NAMESPACE, pod, *which, "--", *argv, check=check, timeout=60)
    return proc.stdout + (proc.stderr if not check else "")


def psql(kube: ControlPlane, sql: str, instance: int = 0) -> list[str]:
    """Rows of `sql` run inside a database instance's pod on the application's database, by the
    image's own superuser psql (through the local socket, the only way it may log in)."""
    out = exec_in(
        kube,
        database.pod_name(instance),
        "mlstack-database", "--psql", f"--dbname={database.DB_NAME}",
        "--no-align", "--tuples-only", "--command", sql,
    )  # fmt: skip
    return [line for line in out.splitlines() if line]


def pod_ip(kube: ControlPlane, instance: int) -> str:
    """The instance's pod address; "" while its pod has none (made again, not started yet)."""
    found: Any = kube.get_json("pod", database.pod_name(instance), "-n", NAMESPACE)
    return str(found["status"].get("podIP", ""))


def roles(kube: ControlPlane) -> dict[str, str]:
    """Patroni's role label of each live database pod, by pod name ("" before it has one)."""
    return {
        p["metadata"]["name"]: (p["metadata"].get("labels") or {}).get(database.ROLE_LABEL, "")
        for p in live(pods(kube, "database"))
    }


def primary_instance(kube: ControlPlane) -> int:
    """The instance labelled primary; exactly one must be."""
    (name,) = [pod for pod, role in roles(kube).items() if role == database.PRIMARY]
    return int(name.rsplit("-", 1)[1])


def members(kube: ControlPlane) -> dict[str, dict[str, Any]]:
    """`patronictl list` as Patroni sees its cluster: each member's role, state, timeline."""
    any_pod = sorted(roles(kube))[0]
    out = exec_in(kube, any_pod, "patronictl", "list", "--format", "json")
    return {m["Member"]: m for m in json.loads(out)}


def settled(kube: ControlPlane, instances: int) -> bool:
    """Every instance runs, one leads, one standby is synchronous, the others stream; each pod
    carries its role and the Services lead to them."""
    try:
        found = members(kube)
    except (AssertionError, ValueError, RuntimeError, subprocess.SubprocessError):
        # A pod going or coming (kubectl exec refused, patronictl cut off): not settled yet.
        return False
    kinds = sorted(m.get("Role", "") for m in found.values())
    expected = ["Leader", *(["Sync Standby"] if instances > 1 else []),
                *(["Replica"] * (instances - 2))]  # fmt: skip
    states = {m.get("State", "") for m in found.values()}
    if len(found) != instances or kinds != sorted(expected) or states - {"running", "streaming"}:
        return False
    labelled = roles(kube)
    if sorted(labelled.values()) != sorted(
        [database.PRIMARY, *[database.REPLICA] * (instances - 1)]
    ):
        return False
    leader = primary_instance(kube)
    return ready_endpoints(kube, database.NAME) == {pod_ip(kube, leader)}


def _container_status(kube: ControlPlane, instance: int, container: str) -> Any:
    found: Any = kube.get_json("pod", database.pod_name(instance), "-n", NAMESPACE)
    (status,) = [s for s in found["status"]["containerStatuses"] if s["name"] == container]
    return status


def container_id(
    kube: ControlPlane, instance: int, container: str = database.POSTGRES_CONTAINER
) -> str:
    """The containerd id of one container of a database instance (PostgreSQL's by default)."""
    return str(_container_status(kube, instance, container)["containerID"].split("://", 1)[1])


def restarts(
    kube: ControlPlane, instance: int, container: str = database.POSTGRES_CONTAINER
) -> int:
    return int(_container_status(kube, instance, container)["restartCount"])


def frozen_until_replaced(
    node: Node, kube: ControlPlane, primary: int, timeout: float
) -> tuple[float, float]:
    """SIGSTOP to every process of the PostgreSQL container of instance `primary` until another
    instance is labelled primary (at most `timeout` seconds), then SIGCONT; the seconds from the
    SIGSTOP until another was labelled primary, and until the SIGCONT."""
    listing = node.ctr("tasks", "ps", container_id(kube, primary)).stdout.splitlines()[1:]
    pids = [int(line.split()[0]) for line in listing if line.strip()]
    stopped = time.monotonic()
    try:
        for pid in pids:
            _signal(pid, signal.SIGSTOP)
        replaced = eventually(
            lambda: any(
                role == database.PRIMARY and pod != database.pod_name(primary)
                for pod, role in roles(kube).items()
            ),
            "another instance labelled primary",
            timeout,
            interval=0.5,
        )
    finally:
        # Every one of them, whatever stopped the wait: a frozen process left behind would
        # freeze the instance for good.
        for pid in pids:
            _signal(pid, signal.SIGCONT)
    return replaced, time.monotonic() - stopped


def _signal(pid: int, signum: int) -> None:
    # A process of the container that has exited since the listing needs no signal.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


# The kinds the program creates in the cluster, in an order `kubectl apply` can take them in.
MANIFEST_KINDS = (
    "namespaces",
    "serviceaccounts",
    "roles",
    "rolebindings",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "services",
    "networkpolicies",
    "poddisruptionbudgets",
    "jobs",
    "deployments",
    "statefulsets",
    "horizontalpodautoscalers",
)
SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")
# The labels the Job controller puts on a Job and its pod template (with a selector on them).
JOB_LABELS = ("batch.kubernetes.io/", "controller-uid", "job-name")


def _without_job_labels(meta: dict[str, Any]) -> None:
    labels = meta.get("labels") or {}
    for key in list(labels):
        if key.startswith(JOB_LABELS):
            del labels[key]


def live_manifests(kube: ControlPlane, stack: str) -> dict[str, Any]:
    """The stack's live objects as one plain `List` manifest (server-set fields removed): what a
    renderer would write, for a `kubectl apply` of the same objects."""
    items: list[dict[str, Any]] = []
    for kind in MANIFEST_KINDS:
        found: Any = kube.get_json(kind, "--all-namespaces", "-l",
                                   f"app.kubernetes.io/instance={stack}")  # fmt: skip
        for item in found["items"]:
            meta = item["metadata"]
            if database.SCOPE_LABEL in (meta.get("labels") or {}):
                continue  # Patroni's own state (its ConfigMaps): made at run time, not by us
            for key in SERVER_FIELDS:
                meta.pop(key, None)
            annotations = meta.get("annotations") or {}
            for key in list(annotations):
                if key.startswith(("pv.kubernetes.io/", "volume.", "deployment.kubernetes.io/")):
                    del annotations[key]
            item.pop("status", None)
            spec = item.get("spec") or {}
            for key in ("clusterIP", "clusterIPs", "volumeName"):
                spec.pop(key, None)
            if item["kind"] == "Job":
                spec.pop("selector", None)
                _without_job_labels(meta)
                _without_job_labels(spec["template"]["metadata"])
            items.append(item)
    return {"apiVersion": "v1", "kind": "List", "items": items}
