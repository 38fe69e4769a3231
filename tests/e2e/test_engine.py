"""The real engine, the real kubernetes provider, a real API server and a real node, on the `e2e`
stack: the app's images built here, its pods run by containerd under the restricted Pod Security
level, its traffic through the gateway's LoadBalancer address.

The scenarios run in order against one stack. Each starts by naming the state it needs (the
`ensure_*` steps below), which costs a kubectl call when the scenario before left that state and
brings the stack there otherwise: a scenario runs alone (`-k 4s`) as it runs in the sequence:
preview on an empty stack, up, the pods as they run, a prediction stored, the database's roles,
the pull-request preview and its up, a model rollout under load, self-healing, the database and
then the model away under load, scaling, NetworkPolicy, egress, an API key rotated under load, a
standby added by config, a standby killed, a third instance added, the primary killed,
force-deleted, frozen and switched over under load, an instance removed, a restore to a time,
the replication and gateway passwords rotated under load on two instances, the model autoscaled
out under load (kept through an up, not drift) and back in, `make drift`
clean, then naming an out-of-band scale, then clean after up, and teardown. A bad config and the
policy pack are checked on stacks of their own; the last scenario watches the node remove the
containers of the model pod 4b deleted.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import hmac
import json
import math
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from components import database, pod
from components.app import METRICS_PORT, MIGRATIONS
from components.config import MODEL_VERSIONS
from components.labels import NAME_LABEL
from e2e import addresses
from e2e.cluster import fresh_volumes, gateway_url, unfinished, unfinished_rollouts
from e2e.controlplane import ControlPlane
from e2e.node import Node
from e2e.node.pods import restricted_namespace
from e2e.process import mounts_under, run
from e2e.workspace import PulumiWorkspace, Run
from harness.metrics import metric_value
from harness.poll import eventually, poll
from harness.program import run_program, urn_type_name
from tests.e2e import app
from tests.e2e.conftest import (
    API_KEY,
    CLAIM,
    COUNTS,
    NAMESPACE,
    NODES,
    STACK,
    TIMINGS,
    needs_root,
    secrets,
    stack_config,
)
from tests.paths import POLICY_PACK

pytestmark = needs_root
INSTANCE = f"app.kubernetes.io/instance={STACK}"


def changes(preview: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in preview.get("steps") or [] if s.get("op") not in ("same", "read")]


def expected_resources(plane: ControlPlane) -> set[tuple[str, str]]:
    """What the program registers for this config under Pulumi's mocks (harness/): the
    real engine must plan exactly these creates, no more, no less."""
    config = {**stack_config(plane), **secrets()}
    mocked = run_program(STACK, config=config, preview=True)
    # What the program reads from the cluster (the API server's EndpointSlice) is no create.
    return {(r.type, r.name) for r in mocked.resources if not r.read}


def k8s_objects(plan: set[tuple[str, str]]) -> set[str]:
    return {t.rsplit(":", 1)[-1] for t, _ in plan if t.startswith("kubernetes:")}


# --- What each scenario needs -------------------------------------------------------------------
# Each scenario names the state it starts from with one `ensure_*` call (or `probe_pods`). Each
# checks the stack file and the live objects first and changes only what differs (a `pulumi up`,
# a switchover, a destroy): in the full ordered run the scenario before has left that state, and
# the check costs a kubectl call or two; run alone (`pytest tests/e2e/test_engine.py -k 4s`), a
# scenario brings the stack there itself. What a scenario changes is the next one's ensure step's
# to put right, unless its docstring says it puts it back itself.

# The stack file's config at the last `pulumi up` that succeeded: what is deployed, as far as the
# config goes (empty before the first up of the session and after a destroy).
DEPLOYED: list[dict[str, Any]] = []
# The request ids of the predictions answered 200 since the stack was created: the database must
# hold every one (a destroy takes them with it).
ACKNOWLEDGED: set[str] = set()
# The database passwords 4u rotated, by stack config key: the stack's own since then, in place of
# those of secrets() (a new stack has the suite's again).
ROTATED_PASSWORDS: dict[str, str] = {}
AUTOSCALING = "mlstack:model.autoscaling"
# What a key of the stack file means when it is not set (components/config.py).
DEFAULTS: dict[str, Any] = {"mlstack:model.version": MODEL_VERSIONS[-1]}
# The keys the scenarios change, as test 2 creates the stack (the session's bring-up,
# e2e/cluster.py).
AS_CREATED: dict[str, Any] = {
    "mlstack:gateway.replicas": 2,
    "mlstack:model.replicas": 2,
    AUTOSCALING: None,
    "mlstack:model.version": "v2",
    "mlstack:database.replicas": 1,
}


def pulumi_up(workspace: PulumiWorkspace, kube: ControlPlane, *args: str) -> Run:
    """`pulumi up` of the stack; the moment it returns, every workload's rollout has ended
    (components/rollout.py)."""
    run = workspace.run("up", "--stack", STACK, "--yes", "--skip-preview", *args)
    unfinished = unfinished_rollouts(kube)
    assert not unfinished, f"pulumi up returned after {run.seconds:.1f} s, before {unfinished}"
    DEPLOYED[:] = [workspace.config(STACK)]
    return run


def up_with(workspace: PulumiWorkspace, kube: ControlPlane, key: str, value: Any) -> Run:
    """`pulumi up` of the stack after one key of its stack file is set to `value`."""
    workspace.set_config(STACK, key, value)
    return pulumi_up(workspace, kube)


def autoscaling_off(workspace: PulumiWorkspace, kube: ControlPlane) -> None:
    """`pulumi up` of a stack file whose model autoscaling was just turned off, as the README
    does it: one up deletes the HPA (last, after the rest is applied, so it may still scale the
    Deployment meanwhile), the next, with a refresh, sets the fixed count."""
    workspace.run("up", "--stack", STACK, "--yes", "--skip-preview")
    pulumi_up(workspace, kube, "--refresh")


def init_stack(workspace: PulumiWorkspace, kube: ControlPlane) -> None:
    """The stack as the session's bring-up leaves it: the suite's config and secrets (the
    stack's API key and database passwords the suite's), nothing deployed."""
    workspace.init_stack(STACK, stack_config(kube), secrets())
    app.STACK_KEY[0] = API_KEY
    ROTATED_PASSWORDS.clear()


def stack_secrets() -> dict[str, str]:
    """The stack's secrets now: the suite's, but for the database passwords a scenario rotated."""
    return {**secrets(), **ROTATED_PASSWORDS}


def namespace_exists(kube: ControlPlane) -> bool:
    return kube.kubectl("get", "namespace", NAMESPACE, check=False).returncode == 0


def destroy_stack(workspace: PulumiWorkspace, kube: ControlPlane, node: Node) -> None:
    """`pulumi destroy` and `stack rm` of the stack, and a fresh volume for each database claim
    a later `pulumi up` may make."""
    workspace.run("destroy", "--stack", STACK, "--yes", "--skip-preview")
    workspace.run("stack", "rm", STACK, "--yes")
    workspace.stack_file(STACK).unlink(missing_ok=True)
    DEPLOYED.clear()
    ACKNOWLEDGED.clear()
    fresh_volumes(kube, node)


def configure(workspace: PulumiWorkspace, settings: dict[str, Any]) -> None:
    """Each key of `settings` set in the stack file, where it does not hold that value yet."""
    for key, value in settings.items():
        if workspace.get_config(STACK, key, DEFAULTS.get(key)) != value:
            workspace.set_config(STACK, key, value)


def ensure_not_deployed(workspace: PulumiWorkspace, kube: ControlPlane, node: Node) -> None:
    """Needs: the stack as the session's bring-up leaves it: nothing deployed, the suite's API
    key and database passwords, the counts of AS_CREATED. A destroy and a new stack only when
    something is deployed or the key or a password was rotated."""
    if workspace.stack_file(STACK).exists() and (
        DEPLOYED
        or app.STACK_KEY[0] != API_KEY
        or ROTATED_PASSWORDS
        or workspace.get_config(STACK, "mlstack:apiKeyPrevious") is not None
        or namespace_exists(kube)
    ):
        destroy_stack(workspace, kube, node)
    if not workspace.stack_file(STACK).exists():
        init_stack(workspace, kube)
    configure(workspace, AS_CREATED)


def ensure_destroyed(workspace: PulumiWorkspace, kube: ControlPlane, node: Node) -> None:
    """Needs: nothing of the stack left and the stack removed, as test 5 leaves it."""
    if workspace.stack_file(STACK).exists():
        destroy_stack(workspace, kube, node)
    if namespace_exists(kube):
        kube.kubectl("delete", "namespace", NAMESPACE, "--wait=true", "--timeout=300s", timeout=360)


def workloads(kube: ControlPlane) -> list[dict[str, Any]]:
    """The stack's Deployments, StatefulSets, HPAs and Services, live."""
    kinds = "deployments,statefulsets,horizontalpodautoscalers,services"
    found: Any = kube.get_json(kinds, "-n", NAMESPACE)
    items: list[dict[str, Any]] = found["items"]
    return items


def counts_as_configured(workspace: PulumiWorkspace, items: list[dict[str, Any]]) -> bool:
    """Whether the live workloads are those the stack file configures, at its counts (the
    model's count is the HPA's when autoscaling is on)."""
    live = {
        (item["kind"], item["metadata"]["name"]): item["spec"].get("replicas")
        for item in items
        if item["kind"] != "Service"
    }
    autoscaled = workspace.get_config(STACK, AUTOSCALING) is not None
    wanted = {
        ("Deployment", "gateway"): workspace.get_config(STACK, "mlstack:gateway.replicas"),
        ("Deployment", "model"): (
            live.get(("Deployment", "model"), -1)
            if autoscaled
            else workspace.get_config(STACK, "mlstack:model.replicas")
        ),
        ("StatefulSet", "database"): workspace.get_config(STACK, "mlstack:database.replicas"),
    }
    if autoscaled:
        wanted[("HorizontalPodAutoscaler", "model")] = None
    return live == wanted


def serving(items: list[dict[str, Any]]) -> bool:
    """Whether every rollout has ended and the gateway's Service has its LoadBalancer address."""
    addressed = [
        item
        for item in items
        if item["kind"] == "Service"
        and item["metadata"]["name"] == "gateway"
        and ((item.get("status") or {}).get("loadBalancer") or {}).get("ingress")
    ]
    return bool(addressed) and not unfinished(items)


def ensure_stack(
    workspace: PulumiWorkspace, kube: ControlPlane, settings: dict[str, Any] | None = None
) -> bool:
    """Needs: the stack deployed with each key of `settings` at its value, every workload at its
    configured count with its rollout ended, the gateway at its LoadBalancer address. A `pulumi
    up` (returns True) only when the stack file differs from what the last up deployed or the
    live workloads from the stack file; turning the model's autoscaling off takes the README's
    two. Otherwise, only a wait for what the controllers are still rolling."""
    if not workspace.stack_file(STACK).exists():
        init_stack(workspace, kube)
    autoscaled = workspace.get_config(STACK, AUTOSCALING) is not None
    configure(workspace, settings or {})
    items = workloads(kube)
    if workspace.config(STACK) in DEPLOYED and counts_as_configured(workspace, items):
        if not serving(items):
            eventually(
                lambda: serving(workloads(kube)), "the stack's rollouts ended", 180, interval=0.5
            )
        return False
    if autoscaled and workspace.get_config(STACK, AUTOSCALING) is None:
        autoscaling_off(workspace, kube)
    else:
        pulumi_up(workspace, kube)
    return True


def ensure_model(workspace: PulumiWorkspace, kube: ControlPlane, replicas: int) -> None:
    """Needs: the model at a fixed count of `replicas` (no autoscaler), at either version."""
    ensure_stack(workspace, kube, {AUTOSCALING: None, "mlstack:model.replicas": replicas})


def other_version(workspace: PulumiWorkspace) -> tuple[str, str]:
    """The model version the stack file deploys, and the other one: a rollout's way."""
    current = (
        workspace.get_config(STACK, "mlstack:model.version") or DEFAULTS["mlstack:model.version"]
    )
    (new,) = [version for version in MODEL_VERSIONS if version != current]
    return current, new


def labelled_settled(labelled: dict[str, str], instances: int) -> bool:
    """Whether `instances` database pods, and no other, carry their role: one primary."""
    pods = {database.pod_name(i) for i in range(instances)}
    roles = sorted([database.PRIMARY, *[database.REPLICA] * (instances - 1)])
    return set(labelled) == pods and sorted(labelled.values()) == roles


def ensure_database(
    workspace: PulumiWorkspace, kube: ControlPlane, instances: int, primary: int | None = None
) -> None:
    """Needs: `instances` database instances, settled, the primary `primary` when it is given. A
    `pulumi up` only when the count differs (the primary first switched over to an instance a
    smaller count keeps; one up per instance taken away), a wait for Patroni only when a pod
    does not carry its role yet, a switchover only when another instance leads."""
    live = kube.kubectl(
        "get", "statefulset", database.NAME, "-n", NAMESPACE, "-o", "jsonpath={.spec.replicas}",
        check=False,
    ).stdout  # fmt: skip
    if live.isdigit() and int(live) > instances + 1:
        # One instance per `pulumi up`: the API server refuses more (database_scale_in.py).
        ensure_database(workspace, kube, int(live) - 1)
        ensure_database(workspace, kube, instances, primary)
        return
    labelled = app.roles(kube)
    for _ in range(len(labelled)):
        leaders = [name for name, role in labelled.items() if role == database.PRIMARY]
        if instances >= len(labelled) or not leaders or leader_of(leaders) < instances:
            break
        make_switchover(workspace)
        wait_settled(kube, len(labelled), "switched over")
        labelled = app.roles(kube)
    if instances > len(labelled):
        # The claims an earlier, lower count deleted left their volumes Released.
        fresh_volumes(kube, NODES[0], released_only=True)
    if ensure_stack(workspace, kube, {"mlstack:database.replicas": instances}) or not (
        labelled_settled(labelled, instances)
    ):
        wait_settled(kube, instances, f"{instances} database instances")
        labelled = app.roles(kube)
    if primary is not None and labelled.get(database.pod_name(primary)) != database.PRIMARY:
        make_switchover(workspace, primary)
        wait_settled(kube, instances, f"database-{primary} the primary")


def leader_of(leaders: list[str]) -> int:
    (name,) = leaders
    return int(name.rsplit("-", 1)[1])


def probe_pods(node: Node, kube: ControlPlane, *pods: tuple[str, str]) -> None:
    """Needs: a probe pod Ready for each `(namespace, name)`, a namespace other than the app's
    made restricted. Applied, which leaves a pod already there as it is."""
    for ns in sorted({ns for ns, _ in pods} - {NAMESPACE}):
        kube.kubectl("apply", "-f", "-", stdin=json.dumps(restricted_namespace(ns)))
    for ns, name in pods:
        probe = node.probe_pod(name, ns, {NAME_LABEL: name})
        kube.kubectl("apply", "-f", "-", stdin=json.dumps(probe))
    for ns, name in pods:
        kube.kubectl("wait", "-n", ns, "--for=condition=Ready", f"pod/{name}", "--timeout=120s")


def test_1_preview_of_empty_stack_plans_exactly_the_expected_creates(
    workspace: PulumiWorkspace, control_plane: ControlPlane, node: Node
) -> None:
    ensure_not_deployed(workspace, control_plane, node)
    preview = workspace.run("preview", "--stack", STACK, "--json").json()
    steps = changes(preview)
    assert steps, "the preview planned nothing"
    ops = {s["op"] for s in steps}
    assert ops == {"create"}, f"an empty stack must plan only creates, got {ops}"

    planned = {urn_type_name(s["urn"]) for s in steps if "pulumi:pulumi:Stack" not in s["urn"]}
    expected = expected_resources(control_plane)
    assert planned == expected, (
        f"missing: {sorted(expected - planned)}\nunexpected: {sorted(planned - expected)}"
    )
    kinds = k8s_objects(planned)
    for kind in ("NetworkPolicy", "Secret", "ServiceAccount", "PodDisruptionBudget"):
        assert kind in kinds, f"no {kind} planned"
    names: dict[str, set[str]] = {}
    for step in steps:
        kind = urn_type_name(step["urn"])[0].rsplit(":", 1)[-1]
        metadata = ((step.get("newState") or {}).get("inputs") or {}).get("metadata") or {}
        if "name" in metadata:
            names.setdefault(kind, set()).add(metadata["name"])
    assert names["Namespace"] == {NAMESPACE}
    assert names["Deployment"] == {"gateway", "model"}
    assert names["StatefulSet"] == {"database"}
    assert names["Service"] == {
        "gateway",
        "model",
        database.NAME,
        database.READ_NAME,
        database.HEADLESS_NAME,
    }
    assert names["PersistentVolumeClaim"] == {"data-database-0"}
    # Patroni makes its own ConfigMaps at run time; the program's one is the backup bucket's CA.
    assert names["ConfigMap"] == {database.BACKUP_CA_CONFIG_MAP}
    assert names["Role"] == names["RoleBinding"] == {database.NAME}
    assert names["PodDisruptionBudget"] == {"gateway", "model", database.NAME}


def test_2_up_creates_everything_with_await_logic_on(
    workspace: PulumiWorkspace, control_plane: ControlPlane, node: Node
) -> None:
    ensure_not_deployed(workspace, control_plane, node)
    up = pulumi_up(workspace, control_plane)
    TIMINGS["pulumi up (create, await on)"] = up.seconds
    kube = control_plane

    namespace = kube.get_json("namespace", NAMESPACE)
    labels = namespace["metadata"]["labels"]  # type: ignore[index]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["app.kubernetes.io/part-of"] == "mlstack"
    assert labels["app.kubernetes.io/managed-by"] == "pulumi"

    for name in ("gateway", "model"):
        deployment: Any = kube.get_json("deployment", name, "-n", NAMESPACE)
        assert deployment["spec"]["replicas"] == 2, name
        assert deployment["status"].get("availableReplicas") == 2, name

    database: Any = kube.get_json("statefulset", "database", "-n", NAMESPACE)
    assert database["status"].get("readyReplicas") == 1
    # The schema's migrations ran once, in the Job `pulumi up` waited for.
    job: Any = kube.get_json("job", MIGRATIONS, "-n", NAMESPACE)
    assert job["status"].get("succeeded") == 1, job["status"]
    claim: Any = kube.get_json("pvc", "data-database-0", "-n", NAMESPACE)
    assert claim["status"]["phase"] == "Bound"

    types = {
        name: kube.get_json("service", name, "-n", NAMESPACE)["spec"]["type"]  # type: ignore[index]
        for name in ("gateway", "model", "database")
    }
    assert types == {"gateway": "LoadBalancer", "model": "ClusterIP", "database": "ClusterIP"}

    policies: Any = kube.get_json("networkpolicy", "-n", NAMESPACE)
    expected = {
        name
        for kind, name in expected_resources(control_plane)
        if kind == "kubernetes:networking.k8s.io/v1:NetworkPolicy"
    }
    assert len(policies["items"]) == len(expected) > 0

    gateway: Any = kube.get_json("service", "gateway", "-n", NAMESPACE)
    ingress = gateway["status"]["loadBalancer"]["ingress"][0]["ip"]
    assert ingress == addresses.load_balancer_ip(gateway["spec"]["clusterIP"])
    url = workspace.run("stack", "output", "gateway_url", "--stack", STACK).stdout.strip()
    assert ingress in url, url


def test_2a_every_app_pod_runs_ready_on_the_node_with_its_security_context_in_force(
    workspace: PulumiWorkspace, node: Node, control_plane: ControlPlane
) -> None:
    kube = control_plane
    ensure_stack(workspace, kube, AS_CREATED)
    pods = app.live(app.pods(kube))
    # The migrations Job's pod ran to completion, on the node, and stays with its log.
    (migrations,) = [p for p in pods if p["metadata"]["labels"][NAME_LABEL] == MIGRATIONS]
    assert migrations["spec"]["nodeName"] == node.name
    assert migrations["status"]["phase"] == "Succeeded", migrations["status"]
    items = [p for p in pods if p is not migrations]
    names = sorted(p["metadata"]["labels"][NAME_LABEL] for p in items)
    assert names == ["database", "gateway", "gateway", "model", "model"], names
    slowest = 0.0
    for item in items:
        name = item["metadata"]["name"]
        assert item["spec"]["nodeName"] == node.name, name
        assert item["status"]["phase"] == "Running" and app.ready(item), name
        created = item["metadata"]["creationTimestamp"]
        became = next(c for c in item["status"]["conditions"] if c["type"] == "Ready")
        slowest = max(slowest, seconds_between(created, became["lastTransitionTime"]))
        # What the kernel enforces inside the container, not what the spec asks for.
        uid = app.exec_in(kube, name, "id", "-u").strip()
        assert uid == str(pod.RUN_AS_USER), f"{name} runs as uid {uid}"
        write = app.exec_in(kube, name, "touch", "/.e2e-write-test", check=False)
        assert "Read-only file system" in write, f"{name}: the root filesystem took a write"
        status = app.exec_in(kube, name, "cat", "/proc/1/status")
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["CapEff"].strip() == "0" * 16, f"{name} has capabilities"
        assert fields["NoNewPrivs"].strip() == "1", f"{name} may gain privileges"
        assert fields["Seccomp"].strip() == "2", f"{name} runs without a seccomp filter"
        if item["metadata"]["labels"][NAME_LABEL] != "database":
            version = app.exec_in(kube, name, "python", "-c", "import sys; print(sys.version)")
            assert version.startswith("3.11."), f"{name} runs Python {version}"
    TIMINGS["pod ready after creation (slowest app pod)"] = slowest


def app_process(pid: int, uids: set[str]) -> bool:
    """Whether the process runs in the cgroup of one of the app's pods (kubelet names a pod's
    cgroup after its uid)."""
    try:
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return any(uid.replace("-", "_") in cgroup or uid in cgroup for uid in uids)


def seconds_between(start: str, end: str) -> float:
    from datetime import datetime

    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds()


def test_2b_a_prediction_through_the_load_balancer_is_answered_and_stored(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    ensure_stack(workspace, control_plane)
    url = gateway_url(control_plane)
    answer = app.predict(url)
    assert answer.ok, answer
    rows = app.psql(
        control_plane,
        f"SELECT model_version, predictions FROM predictions "
        f"WHERE request_id = '{answer.request_id}'",
    )
    assert rows == [f"{answer.version}|[0, 2]"], rows
    # With an Idempotency-Key, sent twice: one row, one answer, as the gateway's role (which may
    # only read and insert) on the image's PostgreSQL.
    key = str(uuid.uuid4())
    first, again = (app.predict(url, idempotency_key=key) for _ in range(2))
    assert first.ok and again.ok, (first, again)
    assert first.request_id == again.request_id == key
    count = f"SELECT count(*) FROM predictions WHERE request_id = '{key}'"
    assert app.psql(control_plane, count) == ["1"]


# The roles that log in with a password, with the stack secret each password is set from.
DATABASE_PASSWORDS = {
    database.OWNER: "mlstack:databaseOwnerPassword",
    database.GATEWAY_USER: "mlstack:databasePassword",
    "replicator": "mlstack:databaseReplicationPassword",
    "rewind": "mlstack:databaseRewindPassword",
}


def test_2c_the_primary_holds_the_roles_with_the_stack_s_passwords_and_no_more(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    """What Patroni's bootstrap and the image's role callback (services/database/roles.sql) made
    on the primary: each role's verifier is of the stack's own password (passwords full of the
    characters URLs and connection strings give a meaning to), none is a superuser or may make
    roles or databases, only Patroni's replication role replicates, and the owner owns the
    application's database. The superuser has no password at all: the local socket only."""
    ensure_stack(workspace, control_plane)
    roles = password_roles(control_plane, app.primary_instance(control_plane))
    assert set(roles) == {*DATABASE_PASSWORDS, "postgres"}, roles
    current = stack_secrets()
    for role, key in DATABASE_PASSWORDS.items():
        superuser, createrole, createdb, replication, verifier = roles[role]
        assert (superuser, createrole, createdb) == ("f", "f", "f"), role
        assert replication == ("t" if role == "replicator" else "f"), role
        assert scram_verifies(verifier, current[key]), role
    assert roles["postgres"][-1] == "", "the superuser has a password"
    owner = app.psql(
        control_plane,
        f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{database.DB_NAME}'",
    )
    assert owner == [database.OWNER]


def password_roles(kube: ControlPlane, instance: int) -> dict[str, list[str]]:
    """On the database instance `instance`, for each role of DATABASE_PASSWORDS and the
    superuser: rolsuper, rolcreaterole, rolcreatedb, rolreplication and the stored password
    verifier ("" for none)."""
    names = ", ".join(f"'{role}'" for role in (*DATABASE_PASSWORDS, "postgres"))
    rows = app.psql(
        kube,
        "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, "
        f"coalesce(rolpassword, '') FROM pg_authid WHERE rolname IN ({names})",
        instance,
    )
    return {line.split("|")[0]: line.split("|")[1:] for line in rows}


def scram_verifies(verifier: str, password: str) -> bool:
    """Whether PostgreSQL's stored verifier `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:
    <ServerKey>` was made from `password` (RFC 5802: StoredKey = H(HMAC(salted, "Client Key")))."""
    method, parameters, keys = verifier.split("$")
    iterations, salt = parameters.split(":")
    stored_key = base64.b64decode(keys.split(":")[0])
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return method == "SCRAM-SHA-256" and hashlib.sha256(client_key).digest() == stored_key


def test_3_pull_request_preview_shows_one_in_place_update_then_up_applies_it(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    ensure_model(workspace, control_plane, 2)
    workspace.set_config(STACK, "mlstack:model.replicas", 3)
    preview = workspace.run("preview", "--stack", STACK, "--diff", "--json").json()
    steps = changes(preview)
    assert len(steps) == 1, json.dumps(steps, indent=1)[:4000]
    step = steps[0]
    assert step["op"] == "update"
    assert urn_type_name(step["urn"])[0] == "kubernetes:apps/v1:Deployment"
    assert step["newState"]["inputs"]["metadata"]["name"] == "model"
    assert not step.get("replaceReasons")
    assert set(step.get("detailedDiff") or {}) == {"spec.replicas"}, step.get("detailedDiff")

    up = pulumi_up(workspace, control_plane)
    TIMINGS["pulumi up (scale model 2 -> 3)"] = up.seconds
    model: Any = control_plane.get_json("deployment", "model", "-n", NAMESPACE)
    assert model["spec"]["replicas"] == 3
    assert model["status"].get("availableReplicas") == 3


def rolled_pods_gone(kube: ControlPlane) -> None:
    """The model pods a rollout replaced drain after `pulumi up` returns (their pre-stop sleep),
    answering what reaches them meanwhile, on the gateways' open connections too: once they are
    gone, and a moment more for the answers in flight, every answer is the new version's."""
    eventually(
        lambda: not [p for p in app.pods(kube, "model") if p["metadata"].get("deletionTimestamp")],
        "the rolled model pods to be gone",
        90,
        interval=0.5,
    )
    time.sleep(1)


def rollout(workspace: PulumiWorkspace, kube: ControlPlane, url: str, version: str) -> app.Load:
    """`model.version` set to `version`, `pulumi up` while the load loop runs."""
    with app.Load(url) as load:
        up = up_with(workspace, kube, "mlstack:model.version", version)
        rolled_pods_gone(kube)
    TIMINGS[f"pulumi up (model rollout to {version}, under load)"] = up.seconds
    ACKNOWLEDGED.update(app.acknowledged(load))
    return load


def test_4a_the_model_version_rolls_under_load_without_a_failed_request(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    """One rollout to the other version (a rollback is the same rollout the other way; 4v rolls
    once more, under the autoscaler)."""
    ensure_model(workspace, control_plane, 3)
    url = gateway_url(control_plane)
    old, new = other_version(workspace)
    load = rollout(workspace, control_plane, url, new)
    assert not load.failures, load.summary()
    assert load.versions()[0] == old and load.versions()[-1] == new, load.summary()
    tail = [a.version for a in load.answers[-10:]]
    assert tail == [new] * len(tail), load.summary()
    model: Any = control_plane.get_json("deployment", "model", "-n", NAMESPACE)
    assert model["status"].get("availableReplicas") == model["spec"]["replicas"] == 3


# The containers of the model pod that 4b deletes: test 8 sees the kubelet remove them.
DELETED_POD_CONTAINERS: set[str] = set()


def test_4b_a_deleted_model_pod_and_a_killed_model_container_are_replaced(
    workspace: PulumiWorkspace, node: Node, control_plane: ControlPlane
) -> None:
    kube = control_plane
    replicas = 3
    ensure_model(workspace, kube, replicas)
    url = gateway_url(kube)
    retries_before = sum(gateway_metrics(kube, "mlstack_gateway_model_retries_total"))
    with app.Load(url) as load:
        deleted = app.live(app.pods(kube, "model"))[0]
        victim = deleted["metadata"]["name"]
        DELETED_POD_CONTAINERS.update(
            status["containerID"].split("://", 1)[1]
            for status in deleted["status"]["containerStatuses"]
        )
        kube.kubectl("delete", "pod", victim, "-n", NAMESPACE, "--wait=false")
        # The deleted pod drains for a few seconds more (its pre-stop sleep), answering what
        # still reaches it, but it is no longer live: what counts is its replacement, Ready
        # beside the others.
        healed = eventually(
            lambda: len(app.ready_pods(kube, "model")) == replicas,
            "a new model pod Ready in place of the deleted one",
            180,
            interval=0.5,
        )
        TIMINGS["model pod deleted -> replacement Ready"] = healed
        target = app.live(app.pods(kube, "model"))[0]
        name = target["metadata"]["name"]
        status = target["status"]["containerStatuses"][0]
        container_id = status["containerID"].split("://", 1)[1]
        node.ctr("tasks", "kill", "--signal", "SIGKILL", container_id)

        def restarted() -> bool:
            found: Any = kube.get_json("pod", name, "-n", NAMESPACE)
            now = found["status"]["containerStatuses"][0]
            return bool(now["restartCount"] > status["restartCount"] and app.ready(found))

        TIMINGS["model container killed -> restarted and Ready"] = eventually(
            restarted, "the killed model container restarted and Ready", 180, interval=0.5
        )
        back = time.monotonic()
        time.sleep(2)
    ACKNOWLEDGED.update(app.acknowledged(load))
    # Calls the gateways sent again because the connection failed before the request went out
    # (a connection the Service still gave the killed container): the retries that kept them
    # from the client.
    retries = sum(gateway_metrics(kube, "mlstack_gateway_model_retries_total")) - retries_before
    said = f"{load.summary()}; model calls retried: {retries:.0f}"
    assert len(load.answers) > 20, said
    assert not load.failures, said
    # The load ran through both disruptions: a request sent once the container was back was
    # answered too, not only the ones before the pod was deleted.
    assert load.since(back)(), load.summary()


def test_4c_a_deleted_database_pod_under_load_costs_only_503s_and_no_acknowledged_row(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    """The database pod deleted under predictions and history reads through the LoadBalancer:
    while it is away each request is answered 200 or 503 with Retry-After, never 500; once it
    is back, both are answered again and every prediction answered 200 is stored."""
    kube = control_plane
    ensure_database(workspace, kube, 1)
    url = gateway_url(kube)
    before: Any = kube.get_json("pod", f"{database.NAME}-0", "-n", NAMESPACE)

    def back() -> bool:
        found = app.ready_pods(kube, "database")
        return bool(found) and found[0]["metadata"]["uid"] != before["metadata"]["uid"]

    with app.Load(url, limit=600) as load, app.Load(url, limit=600, call=app.history) as reads:
        eventually(load.since(0.0), "a prediction answered", 60, interval=0.5)
        time.sleep(3)
        kube.kubectl(
            "delete", "pod", f"{database.NAME}-0", "-n", NAMESPACE, "--wait=true", timeout=180
        )
        TIMINGS["database pod deleted -> back Ready"] = eventually(
            back, "database-0 back", 300, interval=0.5
        )
        # The gateway reconnects by itself: predictions are stored and read again.
        returned = time.monotonic()
        eventually(load.since(returned), "a prediction stored again", 120, interval=0.5)
        eventually(reads.since(returned), "a history read answered again", 120, interval=0.5)
    ACKNOWLEDGED.update(app.acknowledged(load))
    assert not load.wrong_answers, load.summary()
    assert not reads.wrong_answers, reads.summary()
    rows = set(app.psql(kube, "SELECT request_id FROM predictions"))
    missing = ACKNOWLEDGED - rows
    assert not missing, f"{len(missing)} acknowledged predictions lost, e.g. {sorted(missing)[:3]}"
    claim: Any = kube.get_json("pvc", CLAIM, "-n", NAMESPACE)
    # The same local volume on the node (e2e/node/volumes.py names it after the claim).
    assert claim["spec"]["volumeName"] == f"{NAMESPACE}-{CLAIM}", claim


def test_4c_the_model_scaled_to_zero_under_load_costs_only_503s_and_no_gateway_endpoint(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    """The model Deployment scaled to 0 under predictions through the LoadBalancer, then back:
    while it is away each request is answered 200 or 503 with Retry-After (no refused, reset or
    timed-out connection) and every gateway stays a ready endpoint (readiness does not follow
    the model); a retry with the Idempotency-Key of a prediction answered before is answered
    as it was, from the database; once the model is back, predictions are answered again."""
    kube = control_plane
    replicas = 3
    ensure_model(workspace, kube, replicas)
    url = gateway_url(kube)
    gateways = app.ready_endpoints(kube, "gateway")
    assert gateways, "no ready gateway endpoint before the model goes"
    seen: list[set[str]] = []
    key = str(uuid.uuid4())
    keyed = app.predict(url, idempotency_key=key)
    assert keyed.ok, keyed
    with app.Load(url, limit=600) as load:
        eventually(load.since(0.0), "a prediction answered", 60, interval=0.5)
        kube.kubectl("scale", "deployment", "model", "-n", NAMESPACE, "--replicas=0")
        try:
            TIMINGS["model scaled to 0 -> no model pod left"] = eventually(
                lambda: not app.pods(kube, "model"), "no model pod left", 120, interval=0.5
            )
            # A look-up the database cannot answer in its time is the model's 503: sent again.
            retries: list[app.Answer] = []

            def retried() -> bool:
                retries.append(app.predict(url, idempotency_key=key))
                return retries[-1].ok

            eventually(retried, "the keyed retry answered from the database", 30, interval=0.5)
            assert all(r.ok or r.refused_with_retry_after for r in retries), retries
            assert (retries[-1].version, retries[-1].request_id) == (keyed.version, key)
            # Once a second, for long enough that readiness probes would have failed had they
            # followed the model: twice the gateway's three misses a second apart, and the
            # endpoints' update.
            for _ in range(8):
                seen.append(app.ready_endpoints(kube, "gateway"))
                time.sleep(1)
            refused = [a for a in load.answers if a.refused_with_retry_after]
            assert refused, load.summary()
        finally:
            kube.kubectl("scale", "deployment", "model", "-n", NAMESPACE, f"--replicas={replicas}")
        TIMINGS["model scaled back -> its pods Ready"] = eventually(
            lambda: len(app.ready_pods(kube, "model")) == replicas,
            f"{replicas} model pods Ready",
            180,
            interval=0.5,
        )
        returned = time.monotonic()
        eventually(load.since(returned), "a prediction answered again", 120, interval=0.5)
    ACKNOWLEDGED.update(app.acknowledged(load))
    assert not load.wrong_answers, load.summary()
    assert all(endpoints == gateways for endpoints in seen), seen


def test_4d_gateway_replicas_scale_3_1_by_config_and_endpoints_follow(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    kube = control_plane
    ensure_stack(workspace, kube, {"mlstack:gateway.replicas": 2})
    previous = 2
    for replicas in (3, 1):
        up = up_with(workspace, kube, "mlstack:gateway.replicas", replicas)
        TIMINGS[f"pulumi up (gateway replicas {previous} -> {replicas})"] = up.seconds
        previous = replicas
        eventually(
            lambda: len(app.ready_endpoints(kube, "gateway")) == replicas,  # noqa: B023
            f"{replicas} ready gateway endpoints",
            60,
            interval=0.5,
        )
        ips = {p["status"]["podIP"] for p in app.ready_pods(kube, "gateway")}
        assert app.ready_endpoints(kube, "gateway") == ips
        assert app.predict(gateway_url(kube)).ok


OUTSIDER_NS = "mlstack-e2e-outsider"
# The app namespace's default-deny (components/network_policy.py) holds every pod in it to DNS
# alone, a probe pod too: without this policy the intruder's dials would be refused by its own
# egress, whatever the model's and the database's ingress policies admit.
INTRUDER_EGRESS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "e2e-intruder-egress", "namespace": NAMESPACE},
    "spec": {
        "podSelector": {"matchLabels": {NAME_LABEL: "intruder"}},
        "policyTypes": ["Egress"],
        "egress": [{}],
    },
}


def test_4e_network_policy_admits_only_the_gateway_to_model_and_database(
    workspace: PulumiWorkspace, node: Node, control_plane: ControlPlane
) -> None:
    """kube-router enforces the program's NetworkPolicies: a pod of the app's namespace that is
    not the gateway, and a pod of another namespace, cannot open the model's or the database's
    port (by Service or pod address); the gateway can. Both probes reach the gateway first, so
    the refusals are the model's and the database's policies: not a broken network, nor the
    intruder's own namespace denying it egress (INTRUDER_EGRESS lifts that for it)."""
    kube = control_plane
    ensure_stack(workspace, kube)
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(INTRUDER_EGRESS))
    try:
        probe_pods(node, kube, (NAMESPACE, "intruder"), (OUTSIDER_NS, "outsider"))

        def service(name: str) -> str:
            found: Any = kube.get_json("service", name, "-n", NAMESPACE)
            return f"{found['spec']['clusterIP']}:{found['spec']['ports'][0]['port']}"

        def pod_address(name: str, port: int) -> str:
            return f"{app.live(app.pods(kube, name))[0]['status']['podIP']}:{port}"

        def reaches(ns: str, name: str, target: str) -> bool:
            out = node.exec_probe(ns, name, "dial", target, check=False)
            return out.stdout.strip() == "connected"

        probes = ((NAMESPACE, "intruder"), (OUTSIDER_NS, "outsider"))
        for ns, name in probes:
            eventually(
                lambda: reaches(ns, name, service("gateway")),  # noqa: B023
                f"{ns}/{name} to reach the gateway",
                30,
                interval=1,
            )
        protected = [
            service("model"),
            pod_address("model", 8080),
            service("database"),
            pod_address("database", database.PORT),
        ]
        for ns, name in probes:
            for target in protected:
                out = node.exec_probe(ns, name, "dial", target, check=False)
                assert out.returncode != 0 and "connected" not in out.stdout, (
                    f"{ns}/{name} reached {target}: {out.stdout}"
                )
        gateway = app.live(app.pods(kube, "gateway"))[0]["metadata"]["name"]
        for target in protected:
            host, port = target.rsplit(":", 1)
            connect = f"import socket; socket.create_connection(({host!r}, {port}), 5).close()"
            app.exec_in(kube, gateway, "python", "-c", connect)
    finally:
        kube.kubectl(
            "delete", "pod", "intruder", "-n", NAMESPACE, "--grace-period=1", "--wait=true",
            "--ignore-not-found",
        )  # fmt: skip
        kube.kubectl("delete", "-f", "-", "--ignore-not-found", stdin=json.dumps(INTRUDER_EGRESS))


def test_4f_a_pod_connection_to_an_outside_address_is_refused(
    node: Node, control_plane: ControlPlane
) -> None:
    """From the outsider probe pod of 4e (made here when 4e did not run); its namespace is
    deleted at the end."""
    probe_pods(node, control_plane, (OUTSIDER_NS, "outsider"))
    try:
        node.check_egress_refused(OUTSIDER_NS, "outsider")
    finally:
        node.kubectl("delete", "namespace", OUTSIDER_NS, "--wait=true", timeout=180)


def in_recovery(kube: ControlPlane, instance: int) -> str:
    """`t` for a standby, `f` for a primary."""
    (answer,) = app.psql(kube, "SELECT pg_is_in_recovery()", instance)
    return answer


def pod_uid(kube: ControlPlane, instance: int) -> str:
    """The uid of the instance's pod; empty between a pod's removal and its replacement."""
    found = kube.kubectl("get", "pod", database.pod_name(instance), "-n", NAMESPACE,
                         "-o", "jsonpath={.metadata.uid}", check=False)  # fmt: skip
    if found.returncode != 0 and "NotFound" not in found.stderr:
        raise RuntimeError(f"kubectl get pod failed: {found.stderr}")
    return found.stdout.strip()


def streaming_to(kube: ControlPlane, primary: int) -> set[str]:
    """The standbys (application names: their pod names) streaming from `primary`."""
    rows = app.psql(kube, "SELECT application_name FROM pg_stat_replication "
                    "WHERE state = 'streaming'", primary)  # fmt: skip
    return set(rows)


def stored_on(kube: ControlPlane, instance: int) -> set[str]:
    return set(app.psql(kube, "SELECT request_id FROM predictions", instance))


def acknowledged_on(kube: ControlPlane, instance: int) -> None:
    """Wait until standby `instance` holds every acknowledged prediction (it replays them)."""
    eventually(
        lambda: stored_on(kube, instance) >= ACKNOWLEDGED,
        f"every acknowledged prediction on instance {instance}",
        60,
        interval=0.5,
    )


def rows_before_a_new_instance(kube: ControlPlane, url: str) -> set[str]:
    """One prediction acknowledged now, then every row the primary holds: what an instance made
    after this must copy. Never empty, whichever scenarios ran before (ACKNOWLEDGED is empty in
    a scenario run alone)."""
    answer = app.predict(url)
    assert answer.ok, answer
    ACKNOWLEDGED.add(answer.request_id)
    rows = stored_on(kube, app.primary_instance(kube))
    assert answer.request_id in rows, "the acknowledged prediction is not on the primary"
    return rows


def up_with_secrets(
    workspace: PulumiWorkspace,
    kube: ControlPlane,
    secrets: dict[str, str],
    removed: tuple[str, ...] = (),
) -> Run:
    """`pulumi up` of the stack after `pulumi config set --secret` of each of `secrets` and
    `pulumi config rm` of each of `removed`, as the README's rotation does."""
    for key, value in secrets.items():
        workspace.set_secret(STACK, key, value)
    for key in removed:
        workspace.run("config", "rm", "--stack", STACK, key)
    return pulumi_up(workspace, kube)


def gateway_uids(kube: ControlPlane) -> set[str]:
    return {p["metadata"]["uid"] for p in app.live(app.pods(kube, "gateway"))}


def drained(kube: ControlPlane, rolled: set[str]) -> None:
    """Until the gateway pods `rolled` (uids) are gone: they drain after `pulumi up` returns,
    still answering what reaches them with the key set they started with."""
    eventually(
        lambda: not {p["metadata"]["uid"] for p in app.pods(kube, "gateway")} & rolled,
        "the rolled gateway pods to be gone",
        90,
        interval=0.5,
    )


def rotate_api_key(
    workspace: PulumiWorkspace, kube: ControlPlane, url: str, old: str, new: str
) -> None:
    """The README's rotation from `old` to `new`, each step's `pulumi up` under load from a
    client of the key it keeps: not one request may fail."""
    old_client = functools.partial(app.predict, key=old)
    new_client = functools.partial(app.predict, key=new)
    # 1. The new key becomes current, the old one previous: while the gateway pods roll, old
    # pods (the old key only) and new ones (both) answer side by side.
    rolled = gateway_uids(kube)
    with app.Load(url, call=old_client) as adding:
        up = up_with_secrets(
            workspace, kube, {"mlstack:apiKey": new, "mlstack:apiKeyPrevious": old}
        )
    TIMINGS["pulumi up (API key added, old key under load)"] = up.seconds
    assert adding.answers and not adding.failures, adding.summary()
    assert not gateway_uids(kube) & rolled, "the gateway pods were not rolled"
    ACKNOWLEDGED.update(app.acknowledged(adding))
    drained(kube, rolled)
    # Every pod takes both keys now; the old key's requests are counted as the previous key's.
    for _ in range(3):
        assert old_client(url).ok and new_client(url).ok
    assert sum(gateway_metrics(kube, "mlstack_gateway_api_key_requests_total", key="previous")) >= 3
    # 2. The clients move to the new key. 3. The old key is dropped: pods with both keys and
    # pods with the new key only answer side by side.
    rolled = gateway_uids(kube)
    with app.Load(url, call=new_client) as dropping:
        up = up_with_secrets(workspace, kube, {}, removed=("mlstack:apiKeyPrevious",))
    TIMINGS["pulumi up (old API key dropped, new key under load)"] = up.seconds
    assert dropping.answers and not dropping.failures, dropping.summary()
    assert not gateway_uids(kube) & rolled, "the gateway pods were not rolled"
    ACKNOWLEDGED.update(app.acknowledged(dropping))
    drained(kube, rolled)
    assert old_client(url).status == 401
    assert new_client(url).ok


def test_4g_api_key_rotation_answers_every_request_of_either_key(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    """A rotation from the suite's key to a new one, which the later scenarios use (app.STACK_KEY):
    once a session, on the stack as deployed."""
    ensure_stack(workspace, control_plane)
    url = gateway_url(control_plane)
    rotated = "e2e-gateway-api-key-rotated"
    rotate_api_key(workspace, control_plane, url, API_KEY, rotated)
    app.STACK_KEY[0] = rotated


def pod_metrics(
    kube: ControlPlane, pod: str, port: int, python: str = "python", container: str | None = None
) -> str:
    """A container's /metrics on `port`, read from inside its pod by the container's `python`."""
    read = (
        "import urllib.request as u; "
        f"print(u.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
    )
    return app.exec_in(kube, pod, python, "-c", read, container=container)


def gateway_metrics(kube: ControlPlane, name: str, **labels: str) -> list[float]:
    """The value of the sample `name` with `labels` on each gateway pod's /metrics that has it."""
    values = []
    for gateway in app.live(app.pods(kube, "gateway")):
        text = pod_metrics(kube, gateway["metadata"]["name"], METRICS_PORT)
        value = metric_value(text, name, **labels)
        if value is not None:
            values.append(value)
    return values


def wait_settled(kube: ControlPlane, instances: int, what: str, timeout: float = 180) -> float:
    return eventually(
        lambda: app.settled(kube, instances), f"{what}: the database settled", timeout, interval=0.5
    )


def assert_preview_shows_no_change(workspace: PulumiWorkspace) -> None:
    """Patroni's work (roles, labels, its ConfigMaps) is nothing the program declared."""
    preview = workspace.run("preview", "--stack", STACK, "--json", "--expect-no-changes").json()
    assert changes(preview) == [], json.dumps(changes(preview), indent=1)[:3000]


def assert_every_acknowledged_prediction_stored(kube: ControlPlane) -> None:
    missing = ACKNOWLEDGED - stored_on(kube, app.primary_instance(kube))
    assert not missing, f"{len(missing)} acknowledged predictions lost, e.g. {sorted(missing)[:3]}"


def test_4r_a_standby_added_by_config_streams_synchronously_and_serves_the_history(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    kube = control_plane
    ensure_database(workspace, kube, 1)
    url = gateway_url(kube)
    had = rows_before_a_new_instance(kube, url)
    primary_uid = pod_uid(kube, 0)
    up = up_with(workspace, kube, "mlstack:database.replicas", 2)
    TIMINGS["pulumi up adding a standby"] = up.seconds
    assert pod_uid(kube, 0) == primary_uid, "adding a standby restarted the primary"
    TIMINGS["standby added -> synchronous"] = wait_settled(kube, 2, "a standby added")
    assert app.primary_instance(kube) == 0
    assert in_recovery(kube, 1) == "t"
    sync = app.psql(kube, "SELECT application_name, sync_state FROM pg_stat_replication", 0)
    assert sync == [f"{database.pod_name(1)}|sync"], sync
    assert app.ready_endpoints(kube, database.READ_NAME) == {app.pod_ip(kube, 1)}
    # Every row the primary had is on the copy, and a new prediction is there once answered.
    assert stored_on(kube, 1) >= had | ACKNOWLEDGED
    answer = app.predict(url)
    assert answer.ok, answer
    ACKNOWLEDGED.add(answer.request_id)
    eventually(
        lambda: answer.request_id in stored_on(kube, 1),
        "the prediction on the standby",
        30,
        interval=0.5,
    )
    # The history is read from the standby (within the gateway's bound on its lag): each
    # gateway pod counts where its reads went.
    eventually(
        lambda: answer.request_id in app.history(url).request_id.split(","),
        "the prediction in the history",
        30,
        interval=0.5,
    )
    replica_reads = "mlstack_gateway_db_reads_total"
    eventually(
        lambda: (
            bool(app.history(url).ok)
            and sum(gateway_metrics(kube, replica_reads, source="replica")) > 0
        ),
        "a gateway pod reading from the standby",
        30,
        interval=0.5,
    )
    # The standby's replay lag as the reads measured it (NaN on a pod that has not measured).
    lags = gateway_metrics(kube, "mlstack_gateway_db_read_lag_seconds")
    measured = [lag for lag in lags if not math.isnan(lag)]
    assert measured and all(0 <= lag <= 5 for lag in measured), lags
    assert_preview_shows_no_change(workspace)


def test_4s_a_killed_standby_costs_no_acknowledged_prediction(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    """The synchronous standby deleted under load: commits wait for it until Patroni lets the
    primary go on alone (a few seconds), so requests may be slower, or refused with a 503 and
    Retry-After, never answered wrongly; it comes back as the synchronous standby, and
    predictions and history reads are answered 200 again."""
    kube = control_plane
    ensure_database(workspace, kube, 2, primary=0)
    url = gateway_url(kube)
    standby_uid = pod_uid(kube, 1)
    with app.Load(url, limit=600) as load, app.Load(url, limit=600, call=app.history) as reads:
        eventually(load.since(0.0), "a prediction answered", 60, interval=0.5)
        time.sleep(2)
        kube.kubectl(
            "delete", "pod", database.pod_name(1), "-n", NAMESPACE, "--wait=true", timeout=180
        )
        eventually(
            lambda: pod_uid(kube, 1) not in ("", standby_uid),
            "the standby's new pod",
            120,
            interval=0.5,
        )
        TIMINGS["standby deleted -> synchronous again"] = wait_settled(kube, 2, "standby back")
        back = time.monotonic()
        eventually(load.since(back), "a prediction acknowledged again", 60, interval=0.5)
        eventually(reads.since(back), "a history read answered again", 60, interval=0.5)
    assert load.answers and not load.wrong_answers, load.summary()
    assert reads.answers and not reads.wrong_answers, reads.summary()
    COUNTS["standby deleted: predictions refused"] = len(load.failures)
    ACKNOWLEDGED.update(app.acknowledged(load))
    assert app.primary_instance(kube) == 0
    acknowledged_on(kube, 1)


def test_4t_a_third_instance_comes_by_config_without_touching_the_primary(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    kube = control_plane
    ensure_database(workspace, kube, 2, primary=0)
    had = rows_before_a_new_instance(kube, gateway_url(kube))
    primary_uid = pod_uid(kube, 0)
    up_with(workspace, kube, "mlstack:database.replicas", 3)
    TIMINGS["third instance -> settled"] = wait_settled(kube, 3, "a third instance")
    assert pod_uid(kube, 0) == primary_uid, "adding an instance restarted the primary"
    assert in_recovery(kube, 2) == "t"
    assert stored_on(kube, 2) >= had | ACKNOWLEDGED


def failover_under_load(
    workspace: PulumiWorkspace, kube: ControlPlane, what: str, disrupt: Callable[[int], None]
) -> tuple[int, int, app.Load]:
    """`disrupt(primary)` under a steady load of predictions; returns the former primary, the
    primary after it, and the load. Every request is answered 200 or 503 with Retry-After; every
    prediction answered 200 is stored; the database settles with three instances again; the
    preview after it shows no change."""
    before = app.primary_instance(kube)
    load, start = app.under_load(
        gateway_url(kube),
        lambda: disrupt(before),
        lambda: wait_settled(kube, 3, what),
        what,
        limit=600,
        recovery=120,
    )
    # Over every answer of the load: measured at the first acknowledgement after the event, it
    # would end at the first answer of a request sent in the event's first moments.
    TIMINGS[f"{what}: writes paused"] = load.longest_pause_after(start)
    after = app.primary_instance(kube)
    ACKNOWLEDGED.update(app.acknowledged(load))
    COUNTS[f"{what}: predictions refused"] = len(load.failures)
    assert not load.wrong_answers, load.summary()
    assert_every_acknowledged_prediction_stored(kube)
    assert_preview_shows_no_change(workspace)
    return before, after, load


def test_4t_b_the_primary_s_container_killed_under_load_loses_nothing(
    workspace: PulumiWorkspace, node: Node, control_plane: ControlPlane
) -> None:
    """`kill -9` of the primary's container: the instance restarts, and Patroni keeps writes
    going (the restarted instance still holds the leader lock, or a synchronous standby takes
    it once the lock expires)."""
    ensure_database(workspace, control_plane, 3)
    restarted: list[int] = []

    def kill(primary: int) -> None:
        restarted.append(app.restarts(control_plane, primary))
        node.ctr("tasks", "kill", "--signal", "SIGKILL", app.container_id(control_plane, primary))

    before, after, _ = failover_under_load(workspace, control_plane, "primary killed", kill)
    assert app.restarts(control_plane, before) > restarted[0], "the container was not killed"
    print(f"primary killed: database-{before} -> database-{after}")


def test_4t_c_the_primary_s_pod_force_deleted_under_load_loses_nothing(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    ensure_database(workspace, control_plane, 3)
    deleted: list[str] = []

    def force_delete(primary: int) -> None:
        deleted.append(pod_uid(control_plane, primary))
        control_plane.kubectl(
            "delete", "pod", database.pod_name(primary), "-n", NAMESPACE,
            "--force", "--grace-period=0", "--wait=false",
        )  # fmt: skip

    before, after, _ = failover_under_load(
        workspace, control_plane, "primary force-deleted", force_delete
    )
    assert pod_uid(control_plane, before) != deleted[0], "the pod was not deleted"
    print(f"primary force-deleted: database-{before} -> database-{after}")


# Longer than Patroni's leader lock lives (services/database/patroni.yml, ttl), shorter than
# the kubelet's liveness probe takes to restart a frozen container.
FREEZE_TIMEOUT = 45


def test_4t_d_a_frozen_primary_is_replaced_and_demotes_itself_when_thawed(
    workspace: PulumiWorkspace, node: Node, control_plane: ControlPlane
) -> None:
    """SIGSTOP of every process of the primary's container: a standby takes over once the
    leader lock expires; after SIGCONT the former primary finds it has lost the lock, demotes
    itself and follows the new one (pg_rewind), without a restart by the kubelet; no prediction
    is acknowledged by it after its lease (each acknowledged one is on the new primary)."""
    kube = control_plane
    ensure_database(workspace, kube, 3)

    def freeze(primary: int) -> None:
        restarts_before = app.restarts(kube, primary)
        replaced, thawed = app.frozen_until_replaced(node, kube, primary, FREEZE_TIMEOUT)
        TIMINGS["primary frozen -> another labelled primary"] = replaced
        TIMINGS["primary frozen for"] = thawed
        eventually(
            lambda: app.roles(kube).get(database.pod_name(primary)) == database.REPLICA,
            "the thawed instance labelled replica",
            60,
            interval=0.5,
        )
        assert app.restarts(kube, primary) == restarts_before, "the kubelet restarted it"

    before, after, _ = failover_under_load(workspace, kube, "primary frozen", freeze)
    assert after != before
    assert in_recovery(kube, before) == "t"
    # A standby now, it replays what the new primary took while it was frozen.
    acknowledged_on(kube, before)


def sync_standby(kube: ControlPlane) -> int:
    """The instance Patroni names as the synchronous standby: the only one it hands over to."""
    (name,) = [m for m, found in app.members(kube).items() if found["Role"] == "Sync Standby"]
    return int(name.rsplit("-", 1)[1])


def make_switchover(workspace: PulumiWorkspace, target: int | None = None) -> None:
    """`make switchover STACK=e2e [TO=<target>]`'s command, against the suite's backend."""
    to = ["--to", str(target)] if target is not None else []
    done = workspace.tool("database_switchover", "--stack", STACK, *to, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_4t_e_make_switchover_moves_the_primary_under_load(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    """A planned switchover to the synchronous standby (Patroni hands over to that one only
    while synchronous mode is on): the requests it costs are counted."""
    ensure_database(workspace, control_plane, 3)
    target: list[int] = []

    def switchover(primary: int) -> None:
        target.append(sync_standby(control_plane))
        make_switchover(workspace, target[0])

    before, after, _ = failover_under_load(workspace, control_plane, "switchover", switchover)
    assert after == target[0] != before


def test_4t_f_an_instance_goes_by_config_and_the_primary_keeps_its_role(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    """Back to two instances: the StatefulSet removes the last one. The tests above moved the
    primary; make it 0 or 1 first (a switchover is how an operator would) and check the set
    shrinks around it. Two at once is refused by the API server (components/database_scale_in.py):
    in the preview already, and from `kubectl scale` too."""
    kube = control_plane
    ensure_database(workspace, kube, 3)
    refusal = "3 database instances lowered to 1 at once"
    workspace.set_config(STACK, "mlstack:database.replicas", 1)
    try:
        preview = workspace.run("preview", "--stack", STACK, check=False)
    finally:
        workspace.set_config(STACK, "mlstack:database.replicas", 3)
    assert preview.returncode != 0 and refusal in preview.output, preview.output[-3000:]
    scale = ("scale", "statefulset", database.NAME, "-n", NAMESPACE, "--replicas=1")
    scaled = kube.kubectl(*scale, check=False)
    assert scaled.returncode != 0 and refusal in scaled.stderr, scaled.stdout + scaled.stderr
    if app.primary_instance(kube) == 2:
        # The synchronous standby is one of the other two.
        make_switchover(workspace, sync_standby(kube))
        wait_settled(kube, 3, "switched over")
    leader = app.primary_instance(kube)
    assert leader != 2, "the switchover left the primary on the instance the scale-in removes"
    leader_uid = pod_uid(kube, leader)
    up_with(workspace, kube, "mlstack:database.replicas", 2)
    wait_settled(kube, 2, "an instance removed")
    assert app.primary_instance(kube) == leader
    assert pod_uid(kube, leader) == leader_uid, "scaling restarted the primary"
    assert database.pod_name(2) not in app.roles(kube)
    assert_every_acknowledged_prediction_stored(kube)
    assert_preview_shows_no_change(workspace)


def backup_metrics(kube: ControlPlane) -> str:
    """The primary's backups container's /metrics."""
    pod = database.pod_name(app.primary_instance(kube))
    return pod_metrics(
        kube,
        pod,
        database.BACKUP_METRICS_PORT,
        "/opt/patroni/bin/python",
        container=database.BACKUPS_CONTAINER,
    )


def test_4t_g_make_restore_puts_back_exactly_the_predictions_acknowledged_before_the_time(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    """Backups to the suite's S3 server (SeaweedFS): the backups container has taken one and tells
    its age, and no WAL waits to be archived; predictions acknowledged, a time noted, more
    acknowledged; `make restore` to that time puts back every prediction acknowledged before it and
    none after. The database goes back to one instance at the end, as the stack began."""
    kube = control_plane
    ensure_database(workspace, kube, 2)
    eventually(
        lambda: (
            metric_value(backup_metrics(kube), "mlstack_database_backup_age_seconds") is not None
        ),
        "a good backup in the repository",
        180,
        interval=2,
    )
    metrics = backup_metrics(kube)
    assert metric_value(metrics, "mlstack_database_backup_repository_up") == 1, metrics
    assert (metric_value(metrics, "mlstack_database_backups", type="full") or 0) >= 1, metrics
    # The archive keeps up: nothing waits for archive_command once a check has seen it through.
    eventually(
        lambda: (
            metric_value(backup_metrics(kube), "mlstack_database_wal_archive_pending_bytes") == 0
        ),
        "no WAL waiting to be archived",
        120,
        interval=2,
    )
    before, moment, at_moment, after = predictions_around_a_moment(kube)
    ACKNOWLEDGED.update(before)
    stored = make_restore(workspace, kube, moment, instances=2, timing="make restore (2 instances)")
    assert stored == at_moment, (
        f"missing {len(at_moment - stored)}, unexpected {len(stored - at_moment)}"
    )
    assert stored >= ACKNOWLEDGED
    assert not stored & set(after)
    eventually(
        lambda: app.predict(gateway_url(kube)).ok,
        "a prediction answered after the restore",
        120,
        interval=1,
    )
    # The rest of the suite on one instance, as the stack began: two cores run it all.
    up_with(workspace, kube, "mlstack:database.replicas", 1)
    wait_settled(kube, 1, "back to one instance")
    assert_every_acknowledged_prediction_stored(kube)


def make_restore(
    workspace: PulumiWorkspace,
    kube: ControlPlane,
    moment: datetime.datetime,
    *,
    instances: int = 1,
    timing: str | None = None,
) -> set[str]:
    """`make restore STACK=e2e TIME=<moment>`'s command, on `instances` database instances (its
    seconds in TIMINGS under `timing`); the predictions stored once they have settled again:
    every row there at that moment (acknowledged or not: a request cut off after its commit)."""
    start = time.monotonic()
    done = workspace.tool(
        "database_backup", "restore", "--stack", STACK, "--time", moment.isoformat(), timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    if timing is not None:
        TIMINGS[timing] = time.monotonic() - start
    wait_settled(kube, instances, "restored")
    return stored_on(kube, app.primary_instance(kube))


def make_backup(workspace: PulumiWorkspace) -> None:
    """`make backup STACK=e2e`'s command: a full backup, after any the schedule has under way."""
    done = workspace.tool("database_backup", "backup", "--stack", STACK, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr


def predictions_around_a_moment(
    kube: ControlPlane,
) -> tuple[list[str], datetime.datetime, set[str], list[str]]:
    """Five predictions acknowledged, a moment, five more: their ids, the moment and every row
    stored at that moment."""
    url = gateway_url(kube)
    before = [app.predict(url) for _ in range(5)]
    assert all(a.ok for a in before), before
    time.sleep(1.5)
    moment = datetime.datetime.now(datetime.UTC)
    at_moment = stored_on(kube, app.primary_instance(kube))
    time.sleep(1.5)
    after = [app.predict(url) for _ in range(5)]
    assert all(a.ok for a in after), after
    return [a.request_id for a in before], moment, at_moment, [a.request_id for a in after]


def test_4t_h_a_second_restore_puts_back_the_timeline_that_was_live_at_its_time(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    """Two restores in a row. T1, a full backup, T2; `make restore` to T1 (a new timeline: what
    came after T1 is abandoned), and the restored primary backs itself up at once; predictions
    on the new timeline, T3. Then `make restore` to T2, which lies on the abandoned timeline
    and after the backup taken there: the predictions stored at T2, those acknowledged after T1
    included; then to T3: those of the restored timeline, none of the abandoned one's."""
    kube = control_plane
    ensure_database(workspace, kube, 1)
    # A base for T1 on the timeline the database is on: after an earlier restore, the backups
    # of the timeline before it may be expired already, with the WAL they needed.
    make_backup(workspace)
    time.sleep(1.5)
    first, t1, at_t1, _ = predictions_around_a_moment(kube)
    # A full backup of the timeline the first restore abandons, newer than T1.
    make_backup(workspace)
    time.sleep(1.5)
    _, t2, at_t2, _ = predictions_around_a_moment(kube)

    restored_at = time.time()
    assert make_restore(workspace, kube, t1) == at_t1
    # The restored primary's full backup, taken at once, is a base on its own timeline: the
    # newest backup ended after the restore.
    eventually(
        lambda: (
            (age := metric_value(backup_metrics(kube), "mlstack_database_backup_age_seconds"))
            is not None
            and age < time.time() - restored_at
        ),
        "a full backup of the restored timeline",
        300,
        interval=2,
    )
    time.sleep(1.5)
    restored, t3, at_t3, _ = predictions_around_a_moment(kube)
    assert at_t3 >= at_t1 | set(restored)

    # T2 is on the timeline the first restore abandoned: PostgreSQL alone would follow the
    # restored one, and pgBackRest would take the backup of the abandoned one.
    assert make_restore(workspace, kube, t2) == at_t2
    assert make_restore(workspace, kube, t3) == at_t3
    assert not at_t3 & (at_t2 - at_t1)
    ACKNOWLEDGED.update(first, restored)
    eventually(
        lambda: app.predict(gateway_url(kube)).ok,
        "a prediction answered after the restores",
        120,
        interval=1,
    )


def test_4u_database_passwords_rotated_under_load_on_two_instances_roll_and_lose_nothing(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    """New `databaseReplicationPassword` and `databasePassword`, and `pulumi up`, on two
    instances (the primary database-0) under predictions and history reads through the
    LoadBalancer, as README's "Rotating the database passwords" does it. The StatefulSet rolls
    database-1 first: the new replication password is refused until the kubelet has written the
    Secret's new values into database-0's pod and its password watch has set them, then
    database-1 streams and the roll goes on to database-0 (a switchover). The gateway pods roll
    too. `pulumi up` returns with every rollout ended; every request is answered 200 or 503 with
    Retry-After; every prediction answered 200 is stored on both instances; database-0 handed
    the primary over to database-1 (the roll waits until database-1 has been Ready for
    minReadySeconds, by then its synchronous standby: without that wait, database-0 stopped
    before, took its lock back once its pod was up, and writes paused for its whole restart);
    the primary's roles hold the new passwords (the owner's and the rewind role's the ones they
    had). The database goes back to one instance at the end, as the stack began."""
    kube = control_plane
    ensure_database(workspace, kube, 2, primary=0)
    url = gateway_url(kube)
    before = stack_secrets()
    rotated = {
        key: f"{before[key]}-rotated"
        for key in ("mlstack:databaseReplicationPassword", "mlstack:databasePassword")
    }
    instances = {instance: pod_uid(kube, instance) for instance in range(2)}
    gateways = gateway_uids(kube)
    with app.Load(url, limit=900) as load, app.Load(url, limit=900, call=app.history) as reads:
        eventually(load.since(0.0), "a prediction answered", 60, interval=0.5)
        start = time.monotonic()
        # The stack's from the moment the stack file holds them.
        ROTATED_PASSWORDS.update(rotated)
        up = up_with_secrets(workspace, kube, rotated)
        TIMINGS["pulumi up (replication and gateway passwords, 2 instances, under load)"] = (
            up.seconds
        )
        wait_settled(kube, 2, "passwords rotated")
        back = time.monotonic()
        eventually(load.since(back), "a prediction acknowledged again", 120, interval=0.5)
        eventually(reads.since(back), "a history read answered again", 120, interval=0.5)
    ACKNOWLEDGED.update(app.acknowledged(load))
    TIMINGS["passwords rotated: writes paused"] = load.longest_pause_after(start)
    COUNTS["passwords rotated: predictions refused"] = len(load.failures)
    assert load.answers and not load.wrong_answers, load.summary()
    assert reads.answers and not reads.wrong_answers, reads.summary()
    for instance, uid in instances.items():
        assert pod_uid(kube, instance) != uid, f"database-{instance} was not rolled"
    assert not gateway_uids(kube) & gateways, "the gateway pods were not rolled"
    primary = app.primary_instance(kube)
    assert primary == 1, "the roll did not hand the primary over to database-1"
    roles = password_roles(kube, primary)
    current = stack_secrets()
    for role, key in DATABASE_PASSWORDS.items():
        assert scram_verifies(roles[role][-1], current[key]), role
    assert_every_acknowledged_prediction_stored(kube)
    acknowledged_on(kube, 1 - primary)
    assert_preview_shows_no_change(workspace)
    # The rest of the suite on one instance, as the stack began: two cores run it all.
    ensure_database(workspace, kube, 1)
    assert_every_acknowledged_prediction_stored(kube)


# The model's autoscaler in the scenario below: a floor of 1, a ceiling of 3, and a short
# scale-down window so that the scale-in shows within seconds (the e2e control plane's HPA
# controller syncs every 5 s).
MODEL_AUTOSCALING = {"maxReplicas": 3, "cpuUtilization": 50, "scaleDownStabilizationSeconds": 5}
# Concurrent request loops through the LoadBalancer: one loop keeps the model far below its
# target; several push its pods past half their CPU request.
LOAD_LOOPS = 8


def test_4v_the_autoscaler_scales_the_model_out_under_load_keeps_it_through_an_up_and_back_in(
    workspace: PulumiWorkspace, control_plane: ControlPlane, node: Node
) -> None:
    """Autoscaling on for the model (floor 1, ceiling 3): load through the LoadBalancer adds
    replicas; a `pulumi up` of `model.version` while scaled out keeps the count (ignoreChanges:
    no SSA conflict with the HPA controller) and rolls without a failed request; the drift check
    finds no drift in the HPA's count; without load the replicas come back to the floor. The
    model goes back to a fixed count of 3 at the end, as the README turns autoscaling off."""
    kube = control_plane
    # From the floor: the autoscaler is turned on where it would settle idle, so that the load
    # is what moves it.
    ensure_model(workspace, kube, 1)
    url = gateway_url(kube)
    node.wait_for_metrics()
    up_with(workspace, kube, AUTOSCALING, MODEL_AUTOSCALING)
    hpa: Any = kube.get_json("hpa", "model", "-n", NAMESPACE)
    ceiling = MODEL_AUTOSCALING["maxReplicas"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, ceiling)
    assert len(app.ready_pods(kube, "model")) == 1
    loads = [app.Load(url, pause=0) for _ in range(LOAD_LOOPS)]
    for load in loads:
        load.__enter__()
    try:
        TIMINGS["load start -> an extra model pod Ready (HPA)"] = eventually(
            lambda: len(app.ready_pods(kube, "model")) >= 2,
            "the HPA to add a Ready model pod",
            240,
            interval=0.5,
        )
        model: Any = kube.get_json("deployment", "model", "-n", NAMESPACE)
        scaled_out = model["spec"]["replicas"]
        assert 2 <= scaled_out <= ceiling, model["spec"]
        # Not drift: the HPA's count, which the program leaves to it (ignoreChanges), fails
        # no check. (The refresh reports no change of it at all here: the report is clean.)
        drift = drift_check(workspace)
        assert drift.returncode == 0, drift.stdout + drift.stderr
        assert drift.stdout.startswith(f"No drift on stack {STACK}:"), drift.stdout
        rollout = time.monotonic()
        _, new = other_version(workspace)
        up = up_with(workspace, kube, "mlstack:model.version", new)
        TIMINGS["pulumi up (model rollout to v1, scaled out by the HPA)"] = up.seconds
        model = kube.get_json("deployment", "model", "-n", NAMESPACE)
        # The up neither took the count back to the floor nor met a conflict (it succeeded).
        assert scaled_out <= model["spec"]["replicas"] <= ceiling, model["spec"]
        rolled_pods_gone(kube)
    finally:
        for load in loads:
            load.stop()
    answers = [a for load in loads for a in load.answers]
    # Until the HPA has added pods, the load may be more than one model pod takes: the answer
    # to that is a 503 with Retry-After, never anything else. From the rollout on, all 200.
    assert answers and not [a for load in loads for a in load.wrong_answers]
    failed = [a for a in answers if not a.ok and a.at >= rollout]
    assert [a for a in answers if a.at >= rollout] and not failed, failed[:5]
    assert [a.version for a in loads[0].answers[-5:]] == [new] * 5
    stopped = time.monotonic()

    def at_the_floor() -> bool:
        found: Any = kube.get_json("deployment", "model", "-n", NAMESPACE)
        return bool(found["spec"]["replicas"] == 1 and len(app.ready_pods(kube, "model")) == 1)

    eventually(at_the_floor, "the model back at 1 replica", 240, interval=0.5)
    TIMINGS["load stop -> model back at the floor (HPA)"] = time.monotonic() - stopped
    # Back to a fixed count of 3, as the README turns autoscaling off.
    workspace.set_config(STACK, AUTOSCALING, None)
    workspace.set_config(STACK, "mlstack:model.replicas", 3)
    autoscaling_off(workspace, kube)
    assert kube.kubectl("get", "hpa", "model", "-n", NAMESPACE, check=False).returncode != 0
    model = kube.get_json("deployment", "model", "-n", NAMESPACE)
    assert model["spec"]["replicas"] == 3


def replicas_in_state(workspace: PulumiWorkspace, name: str) -> int:
    """The replicas of Deployment `name` as the stack's state holds them."""
    for resource in workspace.resources(STACK):
        outputs = resource.get("outputs") or {}
        if (
            resource["type"] == "kubernetes:apps/v1:Deployment"
            and outputs["metadata"]["name"] == name
        ):
            replicas: int = outputs["spec"]["replicas"]
            return replicas
    raise AssertionError(f"no {name} Deployment in the state")


def drift_check(workspace: PulumiWorkspace) -> subprocess.CompletedProcess[str]:
    """`make drift STACK=e2e`'s code (tools/drift.py) with the workspace's CLI, backend and
    cluster."""
    return workspace.tool("drift", "--stack", STACK, timeout=600)


def test_4y_no_change_after_up_then_drift_names_an_out_of_band_scale_and_up_restores_it(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    """After an up, the preview plans nothing and `make drift`'s check (tools/drift.py) finds
    nothing. A `kubectl scale` of the gateway is drift, named with its property; `pulumi refresh`
    takes it into the state, and the next `pulumi up` restores the configured count (the stack
    file wins the field back from kubectl's manager: the Deployment's pulumi.com/patchForce,
    components/microservice.py)."""
    ensure_stack(workspace, control_plane)
    preview = workspace.run("preview", "--stack", STACK, "--json", "--expect-no-changes").json()
    assert changes(preview) == []
    clean = drift_check(workspace)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.startswith(f"No drift on stack {STACK}"), clean.stdout

    gateway = control_plane.get_json("deployment", "gateway", "-n", NAMESPACE)
    replicas: int = gateway["spec"]["replicas"]  # type: ignore[index]
    control_plane.kubectl(
        "scale", "deployment", "gateway", "-n", NAMESPACE, f"--replicas={replicas + 1}"
    )
    drifted = drift_check(workspace)
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    named = "  kubernetes:apps/v1:Deployment mlstack-gateway: changed"
    assert named in drifted.stdout, drifted.stdout
    assert f"    spec.replicas: {replicas} => {replicas + 1}" in drifted.stdout, drifted.stdout

    # `up` alone diffs the program against the state, which has not seen the scale.
    assert replicas_in_state(workspace, "gateway") == replicas
    workspace.run("refresh", "--stack", STACK, "--yes", "--skip-preview")
    assert replicas_in_state(workspace, "gateway") == replicas + 1
    pulumi_up(workspace, control_plane)
    assert replicas_in_state(workspace, "gateway") == replicas
    again = drift_check(workspace)
    assert again.returncode == 0, again.stdout + again.stderr
    gateway = control_plane.get_json("deployment", "gateway", "-n", NAMESPACE)
    assert gateway["spec"]["replicas"] == replicas  # type: ignore[index]


def test_4y_b_drift_names_a_secret_edited_out_of_band_without_its_value_and_up_restores_it(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    """A key of the gateway's Secret changed with kubectl is drift, named by its key and shown as
    `[secret]` on both sides (the value is in no line of the report); `pulumi refresh` then
    `pulumi up` put the program's value back (README, "Drift": "Ending it")."""
    ensure_stack(workspace, control_plane)

    def api_key() -> str:
        secret = control_plane.get_json("secret", "gateway", "-n", NAMESPACE)
        return base64.b64decode(secret["data"]["api-key"]).decode()  # type: ignore[index]

    configured = app.STACK_KEY[0]  # the stack's apiKey (4g rotates it)
    assert api_key() == configured
    edited = "edited-out-of-band-0123456789"
    patch = json.dumps({"stringData": {"api-key": edited}})
    control_plane.kubectl("patch", "secret", "gateway", "-n", NAMESPACE, "-p", patch)
    drifted = drift_check(workspace)
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert "  kubernetes:core/v1:Secret mlstack-gateway: changed" in drifted.stdout, drifted.stdout
    assert "    data.api-key: [secret] => [secret]" in drifted.stdout, drifted.stdout
    assert edited not in drifted.stdout + drifted.stderr

    workspace.run("refresh", "--stack", STACK, "--yes", "--skip-preview")
    pulumi_up(workspace, control_plane)
    assert api_key() == configured
    again = drift_check(workspace)
    assert again.returncode == 0, again.stdout + again.stderr


def node_state(node: Node) -> dict[str, set[str]]:
    """What the node holds: containers, pod folders with mounts, kube-proxy's rules naming the
    app's namespace, processes of the app's containers."""
    mounts = {str(p) for p in mounts_under(node.kubelet_root / "pods")}
    rules = run("iptables-save").stdout + run("nft", "list", "ruleset").stdout
    return {
        "containers": set(node.ctr("containers", "ls", "-q").stdout.split()),
        "tasks": set(node.ctr("tasks", "ls", "-q").stdout.split()),
        "mounts": mounts,
        "rules": {line for line in rules.splitlines() if f"{NAMESPACE}/" in line},
    }


def test_5_destroy_and_stack_rm_leave_nothing(
    workspace: PulumiWorkspace, control_plane: ControlPlane, node: Node
) -> None:
    """The end of the stack's sequence: the scenarios after it deploy nothing on it (6 and 6b
    use stacks of their own, 8 watches the node)."""
    ensure_stack(workspace, control_plane)
    app_uids = {p["metadata"]["uid"] for p in app.pods(control_plane)}
    assert app_uids
    destroy = workspace.run("destroy", "--stack", STACK, "--yes", "--skip-preview")
    TIMINGS["pulumi destroy"] = destroy.seconds
    workspace.run("stack", "rm", STACK, "--yes")
    DEPLOYED.clear()

    gone = control_plane.kubectl("get", "namespace", NAMESPACE, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout
    leftovers = control_plane.kubectl(
        "get",
        "all,pvc,secrets,networkpolicies,poddisruptionbudgets,serviceaccounts,namespaces",
        "--all-namespaces",
        "-l",
        INSTANCE,
        "-o",
        "name",
    ).stdout.split()
    assert leftovers == []

    stacks = workspace.run("stack", "ls", "--json").json()
    assert stacks == []

    # On the node: no container, task (process), mount or rule of the app is left; what remains
    # is the cluster's own DNS pod. The kubelet and kube-proxy act on the deletions as they see
    # them, a moment after the API server has them: each gets up to kube-proxy's full resync
    # period (30 s) to catch up.
    def app_mounts(state: dict[str, set[str]]) -> list[str]:
        return [m for m in state["mounts"] if any(uid in m for uid in app_uids)]

    def caught_up() -> bool:
        state = node_state(node)
        return not state["rules"] and not app_mounts(state)

    poll(caught_up, 30, interval=0.5)
    left = node_state(node)
    assert left["rules"] == set(), sorted(left["rules"])[:5]
    assert not app_mounts(left), left["mounts"]
    dns: Any = control_plane.get_json("pods", "-n", "kube-system")
    dns_ids = {
        s["containerID"].split("://", 1)[1]
        for p in dns["items"]
        for s in p["status"].get("containerStatuses") or []
    }
    # Each pod has a sandbox container and its containers: only the DNS pod's remain running.
    # The app's are exited; the kubelet's garbage collection, every minute, removes the exited
    # containers of deleted pods, which test 8 shows on a pod deleted minutes before.
    assert len(left["tasks"]) == 2 * len(dns["items"]) and dns_ids <= left["tasks"], left
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    assert not [p for p in pids if app_process(p, app_uids)]
    # The stack's checkpoint and history are gone (the file backend keeps a `.bak` of the last
    # checkpoint, which `pulumi stack ls` and every command ignore).
    live = {f"{STACK}.json", f"{STACK}.json.gz"}
    state = sorted(
        str(p.relative_to(workspace.backend_dir))
        for p in (workspace.backend_dir / ".pulumi").rglob("*")
        if p.is_file() and (p.name in live or ("history" in p.parts and STACK in p.parts))
    )
    assert state == [], state


def test_6_bad_config_fails_with_the_same_one_line_error_as_under_mocks(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    bad = {**stack_config(control_plane), "mlstack:model": {"replicas": -1}}
    with pytest.raises(Exception) as under_mocks:
        run_program("e2e-bad-config", config={**bad, **secrets()})
    message = str(under_mocks.value).strip()
    assert "\n" not in message and "mlstack:model.replicas" in message and "-1" in message

    workspace.init_stack("e2e-bad-config", bad, secrets())
    try:
        preview = workspace.run("preview", "--stack", "e2e-bad-config", check=False)
        assert preview.returncode != 0
        lines = [line for line in preview.output.splitlines() if message in line]
        assert lines, f"{message!r} not in:\n{preview.output}"
        assert "Traceback" not in preview.output
        # The program reports its own error and nothing else: no "exited with non-zero code".
        assert "non-zero exit code" not in preview.output, preview.output
    finally:
        workspace.run("stack", "rm", "e2e-bad-config", "--yes", "--force", check=False)


def by_tag(ref: str) -> str:
    """The same image by a tag instead of its digest: what a pull request might write."""
    name = ref.split("@", 1)[0]
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:e2e"


def test_6b_the_policy_pack_passes_the_stack_and_stops_an_image_by_tag(
    workspace: PulumiWorkspace, control_plane: ControlPlane, tmp_path: Path
) -> None:
    """`pulumi preview --policy-pack` on the real engine: the stack as configured passes every
    mandatory rule; the same stack with the model's image given by tag (config a pull request
    can change; the program accepts it) fails the preview with the rule's name and message,
    image-by-digest holding it as a production stack (`--policy-pack-config`, as prod.json)."""
    config = stack_config(control_plane)
    settings = tmp_path / "pack-config.json"
    settings.write_text(json.dumps({"image-by-digest": {"production": True}}))
    workspace.init_stack("e2e-policy", config, secrets())
    try:
        pack = ("--policy-pack", str(POLICY_PACK), "--policy-pack-config", str(settings))
        clean = workspace.run("preview", "--stack", "e2e-policy", *pack)
        assert "mlstack@v" in clean.output, clean.output  # the pack ran
        assert "[mandatory]" not in clean.output, clean.output

        tagged = by_tag(config["mlstack:images"]["model"])
        workspace.set_config("e2e-policy", "mlstack:images.model", tagged)
        stopped = workspace.run("preview", "--stack", "e2e-policy", *pack, check=False)
        assert stopped.returncode != 0, stopped.output
        violation = [line for line in stopped.output.splitlines() if "[mandatory]" in line]
        assert any("image-by-digest" in line for line in violation), stopped.output
        assert f"image {tagged!r} is not pinned by digest" in stopped.output, stopped.output
    finally:
        workspace.run("stack", "rm", "e2e-policy", "--yes", "--force", check=False)


def test_8_the_kubelet_removes_the_exited_containers_of_a_deleted_pod(node: Node) -> None:
    """The containers of the model pod that 4b deleted, minutes ago: the kubelet's garbage
    collection (every minute) has removed them from the node, or does so within its next pass.
    (The ones test 5's destroy left exit the same way; the node's teardown removes what is
    left of them.) Skipped without 4b."""
    if not DELETED_POD_CONTAINERS:
        pytest.skip("test 4b did not delete a model pod")
    TIMINGS["the deleted pod's containers removed by the kubelet (from now)"] = eventually(
        lambda: not DELETED_POD_CONTAINERS & node_state(node)["containers"],
        "the kubelet to remove the deleted model pod's containers",
        150,
        interval=2,
    )
