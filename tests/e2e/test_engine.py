"""The real engine, the real kubernetes provider and a real API server, on the `e2e` stack.

The scenarios run in order against one stack (each depends on the previous one's result):
preview on an empty stack, up, the pull-request preview and its up, no drift then a refresh that
finds an out-of-band scale, and teardown. A bad config is checked on a stack of its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from e2e.controlplane import ControlPlane
from e2e.workspace import PulumiWorkspace
from harness.program import run_program
from tests.e2e.conftest import NAMESPACE, SECRETS, STACK, TIMINGS, stack_config

LB_INGRESS_IP = "192.0.2.10"  # what e2e/stages/service-load-balancer.yaml allocates
INSTANCE = f"app.kubernetes.io/instance={STACK}"


def urn_type_name(urn: str) -> tuple[str, str]:
    """`(type, name)` of `urn:pulumi:stack::project::parent$type::name`."""
    _, _, qualified, name = urn.split("::", 3)
    return qualified.rsplit("$", 1)[-1], name


def changes(preview: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in preview.get("steps") or [] if s.get("op") not in ("same", "read")]


def expected_resources(plane: ControlPlane) -> set[tuple[str, str]]:
    """What the program registers for this config under Pulumi's mocks (harness/): the
    real engine must plan exactly these creates, no more, no less."""
    config = {**stack_config(plane), **SECRETS}
    mocked = run_program(STACK, config=config, preview=True)
    return {(r.type, r.name) for r in mocked.resources}


def k8s_objects(plan: set[tuple[str, str]]) -> set[str]:
    return {t.rsplit(":", 1)[-1] for t, _ in plan if t.startswith("kubernetes:")}


# The kinds the program creates: captured after `up` as the plain manifests of the baseline.
MANIFEST_KINDS = (
    "namespaces",
    "serviceaccounts",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "services",
    "networkpolicies",
    "poddisruptionbudgets",
    "deployments",
    "statefulsets",
)
SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")


def capture_manifests(kube: ControlPlane, workspace: PulumiWorkspace) -> None:
    """The live objects of the stack as plain manifests (server-set fields removed): what a
    renderer would write, for the `kubectl apply` baseline."""
    items: list[dict[str, Any]] = []
    for kind in MANIFEST_KINDS:
        found: Any = kube.get_json(kind, "--all-namespaces", "-l", INSTANCE)
        for item in found["items"]:
            meta = item["metadata"]
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
            items.append(item)
    manifest = {"apiVersion": "v1", "kind": "List", "items": items}
    (workspace.root / "manifests.json").write_text(json.dumps(manifest, indent=1))


def test_1_preview_of_empty_stack_plans_exactly_the_expected_creates(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
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
    assert names["Service"] == {"gateway", "model", "database"}
    assert names["PersistentVolumeClaim"] == {"data-database-0"}


def test_2_up_creates_everything_with_await_logic_on(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    up = workspace.run("up", "--stack", STACK, "--yes", "--skip-preview")
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

    url = workspace.run("stack", "output", "gateway_url", "--stack", STACK).stdout.strip()
    assert LB_INGRESS_IP in url, url
    capture_manifests(control_plane, workspace)


def test_3_pull_request_preview_shows_one_in_place_update_then_up_applies_it(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
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

    up = workspace.run("up", "--stack", STACK, "--yes", "--skip-preview")
    TIMINGS["pulumi up (scale model 2 -> 3)"] = up.seconds
    model: Any = control_plane.get_json("deployment", "model", "-n", NAMESPACE)
    assert model["spec"]["replicas"] == 3
    assert model["status"].get("availableReplicas") == 3


def _model_replicas_in_state(workspace: PulumiWorkspace) -> int:
    for resource in workspace.resources(STACK):
        outputs = resource.get("outputs") or {}
        if (
            resource["type"] == "kubernetes:apps/v1:Deployment"
            and outputs["metadata"]["name"] == "model"
        ):
            replicas: int = outputs["spec"]["replicas"]
            return replicas
    raise AssertionError("no model Deployment in the state")


def test_4_no_changes_after_up_and_refresh_finds_an_out_of_band_scale(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    preview = workspace.run("preview", "--stack", STACK, "--json", "--expect-no-changes").json()
    assert changes(preview) == []

    control_plane.kubectl("scale", "deployment", "model", "-n", NAMESPACE, "--replicas=1")
    assert _model_replicas_in_state(workspace) == 3
    workspace.run("refresh", "--stack", STACK, "--yes", "--skip-preview")
    assert _model_replicas_in_state(workspace) == 1


def test_5_destroy_and_stack_rm_leave_nothing(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    destroy = workspace.run("destroy", "--stack", STACK, "--yes", "--skip-preview")
    TIMINGS["pulumi destroy"] = destroy.seconds
    workspace.run("stack", "rm", STACK, "--yes")

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
        run_program("e2e-bad-config", config={**bad, **SECRETS})
    message = str(under_mocks.value).strip()
    assert "\n" not in message and "mlstack:model.replicas" in message and "-1" in message

    workspace.init_stack("e2e-bad-config", bad, SECRETS)
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


def rendered_manifests(workspace: PulumiWorkspace, control_plane: ControlPlane) -> list[Path]:
    """The e2e stack's objects as `make render` writes them (tools/render.py, the same config),
    in apply order (Namespace first)."""
    from tools.render import manifests, write

    run = run_program(STACK, config={**stack_config(control_plane), **SECRETS})
    return write(manifests(run), workspace.root / "rendered")


def test_7_kubectl_apply_baseline_wall_time(
    workspace: PulumiWorkspace, control_plane: ControlPlane
) -> None:
    """Not a scenario: the same objects (rendered by tools/render.py, else captured live after
    test 2) through `kubectl apply` plus rollout waits, timed in the same run as `pulumi up`, on
    the cluster that test 5 emptied."""
    try:
        files = [str(p) for p in rendered_manifests(workspace, control_plane)]
        source = "rendered"
    except ImportError:
        captured = workspace.root / "manifests.json"
        if not captured.exists():
            pytest.skip("no renderer and no captured manifests (test 2 did not pass)")
        files, source = [str(captured)], "captured"
    kube = control_plane
    kube.kubectl("delete", "pv", f"{NAMESPACE}-data-database-0", "--wait=true")
    kube.add_volume(NAMESPACE, "data-database-0")
    start = time.monotonic()
    kube.kubectl("apply", *[arg for f in files for arg in ("-f", f)])
    for workload in ("deployment/gateway", "deployment/model", "statefulset/database"):
        kube.kubectl("rollout", "status", workload, "-n", NAMESPACE, "--timeout=600s", timeout=660)
    kube.kubectl(
        "wait",
        "service/gateway",
        "-n",
        NAMESPACE,
        "--for=jsonpath={.status.loadBalancer.ingress[0].ip}",
        "--timeout=600s",
        timeout=660,
    )
    TIMINGS[f"kubectl apply ({source} manifests) + rollout status"] = time.monotonic() - start
    kube.kubectl("delete", "namespace", NAMESPACE, "--wait=true", "--timeout=300s", timeout=360)
