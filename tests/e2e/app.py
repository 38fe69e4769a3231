"""What the app scenarios do to the running app: predictions through the gateway's LoadBalancer
address, a bounded load loop, the database's rows, commands inside the app's containers."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from components import database
from e2e.controlplane import ControlPlane
from e2e.registry import DIRECT
from tests.e2e.conftest import API_KEY, NAMESPACE

PREDICT_PATH = "/api/v1/predict"
HISTORY_PATH = "/api/v1/predictions?limit=20"
BODY = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}).encode()
APP_LABEL = "app.kubernetes.io/name"


@dataclass(frozen=True)
class Answer:
    at: float
    status: int  # 0: no HTTP answer at all
    version: str
    request_id: str
    error: str
    retry_after: str = ""  # the Retry-After header of a refusal

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def refused_with_retry_after(self) -> bool:
        """A 503 that says when to try again: the one acceptable way not to answer 200 while a
        dependency (the model, the database) is away."""
        return self.status == 503 and self.retry_after.isdigit() and int(self.retry_after) >= 1


def predict(url: str, timeout: float = 10, key: str = API_KEY) -> Answer:
    """One POST /api/v1/predict with the stack's API key, or `key` (never through a proxy)."""
    request = urllib.request.Request(
        url + PREDICT_PATH,
        data=BODY,
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    return _answer(request, timeout, lambda body: (body["model_version"], body["request_id"]))


def history(url: str, timeout: float = 10) -> Answer:
    """One GET /api/v1/predictions; `request_id` holds the ids listed, comma-separated."""
    request = urllib.request.Request(url + HISTORY_PATH, headers={"X-API-Key": API_KEY})
    return _answer(
        request,
        timeout,
        lambda body: ("", ",".join(item["request_id"] for item in body["items"])),
    )


def _answer(
    request: urllib.request.Request, timeout: float, read: Callable[[Any], tuple[str, str]]
) -> Answer:
    now = time.monotonic()
    try:
        with DIRECT.open(request, timeout=timeout) as reply:
            version, request_id = read(json.loads(reply.read()))
            return Answer(now, reply.status, version, request_id, "")
    except urllib.error.HTTPError as err:
        error = err.read().decode(errors="replace")[:300]
        return Answer(now, err.code, "", "", error, err.headers.get("Retry-After") or "")
    except (OSError, ValueError, KeyError) as err:
        return Answer(now, 0, "", "", repr(err))


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


def acknowledged(*loads: Load) -> set[str]:
    return {a.request_id for load in loads for a in load.answers if a.ok}


def pods(kube: ControlPlane, name: str | None = None) -> list[dict[str, Any]]:
    args = ["pods", "-n", NAMESPACE]
    if name:
        args += ["-l", f"{APP_LABEL}={name}"]
    items: list[dict[str, Any]] = kube.get_json(*args)["items"]  # type: ignore[assignment]
    return items


def ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def live(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods not being deleted."""
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def wait_until(what: str, check: Any, timeout: float = 180, interval: float = 0.5) -> float:
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


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


def exec_in(kube: ControlPlane, pod: str, *argv: str, check: bool = True) -> str:
    proc = kube.kubectl("exec", "-n", NAMESPACE, pod, "--", *argv, check=check, timeout=60)
    return proc.stdout + (proc.stderr if not check else "")


def psql(kube: ControlPlane, sql: str, instance: int = 0) -> list[str]:
    """Rows of `sql` run by psql inside a database instance's pod (its local socket)."""
    out = exec_in(
        kube,
        database.pod_name(instance),
        "psql", "--username", database.USER, "--dbname", database.DB_NAME,
        "--no-align", "--tuples-only", "--command", sql,
    )  # fmt: skip
    return [line for line in out.splitlines() if line]
