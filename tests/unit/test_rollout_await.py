"""`pulumi up` calls a workload done only when its rollout is: the `pulumi.com/waitFor`
expressions each workload carries, evaluated as the provider evaluates them, against the status
the Kubernetes controllers write at each step of a rollout."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonpath_rfc9535
import pytest

from components import rollout
from components.stack_file import stacks
from harness.program import ProgramRun, run_program, stack_config

BRACES = re.compile(r"\{\s*(.*?)\s*\}")


def done(obj: dict[str, Any], expressions: tuple[str, ...]) -> bool:
    """The provider's reading of `pulumi.com/waitFor`: nothing holds before the controller has
    observed the object's generation; then every expression must select something."""
    metadata, status = obj.get("metadata", {}), obj.get("status", {})
    if status.get("observedGeneration", 0) < metadata.get("generation", 1):
        return False
    for expression in expressions:
        match = BRACES.fullmatch(expression.removeprefix("jsonpath="))
        assert match is not None, expression
        if not jsonpath_rfc9535.find(match.group(1), obj).values():
            return False
    return True


def workload(wanted: int, status: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "metadata": {"generation": 2},
        "spec": {"replicas": wanted},
        "status": {"observedGeneration": 2, **status},
    }


def test_every_workload_waits_for_its_rollout(stack_run: ProgramRun) -> None:
    expected = {"Deployment": rollout.DEPLOYMENT_DONE, "StatefulSet": rollout.STATEFUL_SET_DONE}
    workloads = [r for kind in expected for r in stack_run.of_kind(kind)]
    assert {r.metadata["name"] for r in stack_run.of_kind("Deployment")} == {"gateway", "model"}
    for resource in workloads:
        annotation = resource.metadata["annotations"][rollout.WAIT_FOR]
        assert tuple(json.loads(annotation)) == expected[resource.kind], resource.metadata["name"]


def test_the_annotation_is_the_same_whatever_the_replica_count() -> None:
    """A change of replicas shows in a preview as `spec.replicas` alone."""
    seen: dict[str, set[str]] = {}
    counts: dict[str, set[int]] = {}
    for stack in stacks():
        for resource in run_program(stack).of_kind("Deployment"):
            name = resource.metadata["name"]
            seen.setdefault(name, set()).add(resource.metadata["annotations"][rollout.WAIT_FOR])
            counts.setdefault(name, set()).add(resource.inputs["spec"]["replicas"])
    assert all(len(values) == 1 for values in seen.values()), seen
    assert max(len(c) for c in counts.values()) > 1, f"the stacks' replica counts: {counts}"
    assert stack_config("prod")["mlstack:model"]["replicas"] != 1


def test_the_expressions_take_the_provider_syntax() -> None:
    """The provider splits `{path}=value` on a lone `=` and reads the path up to the first `}`:
    the filters compare with `==` only and hold no brace."""
    for expression in rollout.STATEFUL_SET_DONE:
        assert expression.startswith("jsonpath={$[?") and expression.endswith("]}")
        body = expression.removeprefix("jsonpath=")
        assert "=" not in body.replace("==", ""), expression
        assert body.count("{") == body.count("}") == 1, expression
        jsonpath_rfc9535.compile(body[1:-1])


def counts(replicas: int, updated: int | None, available: int | None) -> dict[str, Any]:
    """A workload's status; a count of zero is left out, as the controllers leave it."""
    status = {"replicas": replicas, "updatedReplicas": updated, "availableReplicas": available}
    return {key: value for key, value in status.items() if value}


DEPLOYMENT_STEPS = [
    # (what the controllers have done, status, rollout done)
    ("created, no pod yet", {}, False),
    ("a new template: a new ReplicaSet, no pod of it counted yet", counts(3, None, 3), False),
    ("a rollback to a kept ReplicaSet, before it has pods", counts(3, 0, 3), False),
    ("one new pod surged, not yet available", counts(4, 1, 3), False),
    ("every new pod available, one old pod still counted", counts(4, 3, 4), False),
    ("every new pod available, one old pod counted but unready", counts(4, 3, 3), False),
    ("every pod new and available", counts(3, 3, 3), True),
]


@pytest.mark.parametrize(("step", "status", "expected"), DEPLOYMENT_STEPS)
def test_a_deployment_rollout_is_done_only_at_its_end(
    step: str, status: dict[str, Any], expected: bool
) -> None:
    assert done(workload(3, status), rollout.DEPLOYMENT_DONE) is expected, step


@pytest.mark.parametrize(
    ("before", "after"), [(2, 3), (3, 1)], ids=["scale up 2 to 3", "scale down 3 to 1"]
)
def test_a_scaled_deployment_is_done_once_the_pods_match_the_new_count(
    before: int, after: int
) -> None:
    old = counts(before, before, before)
    assert not done(workload(after, old), rollout.DEPLOYMENT_DONE)
    counted = counts(after, after, min(before, after))
    assert done(workload(after, counted), rollout.DEPLOYMENT_DONE) is (after < before)
    assert done(workload(after, counts(after, after, after)), rollout.DEPLOYMENT_DONE)


def test_status_of_an_earlier_generation_never_counts() -> None:
    stale = workload(3, counts(3, 3, 3))
    stale["status"]["observedGeneration"] = 1
    assert not done(stale, rollout.DEPLOYMENT_DONE)


UPDATING = {"currentRevision": "a", "updateRevision": "b"}
UPDATED = {"currentRevision": "b", "updateRevision": "b"}
STATEFUL_SET_STEPS = [
    ("a new template, the pod not yet replaced", counts(1, None, 1) | UPDATING, False),
    ("the pod replaced, not yet Ready", counts(1, 1, None) | UPDATING, False),
    ("Ready, the revision not yet made current", counts(1, 1, 1) | UPDATING, False),
    ("Ready on the current revision", counts(1, 1, 1) | UPDATED, True),
]


@pytest.mark.parametrize(("step", "status", "expected"), STATEFUL_SET_STEPS)
def test_a_stateful_set_rollout_is_done_only_at_its_end(
    step: str, status: dict[str, Any], expected: bool
) -> None:
    assert done(workload(1, status), rollout.STATEFUL_SET_DONE) is expected, step
