"""The rules `make policy` leaves to the policy pack (tools/policy.py PACK_OWNED) stay proven: for
each Checkov check the gate skips, a workload of the program, broken the way that check catches,
fails the pack rule that owns it, on every stack. The broken renders tests/policy used to show
Checkov failing (a probe removed, a privileged container that may escalate) are here too, now
failing the pack.

The program's resources are read as the engine hands them to the pack (their inputs), from each
stack's mock run: no Checkov, no network.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Final

import pytest
from pulumi_policy import ResourceValidationPolicy

from harness.program import ProgramRun, Registered
from mlstack_policy.pack import policies
from tests.breaks import BREAKS, Props, delete, set_context
from tests.unit.pack import violations
from tools import policy

RULES: Final = {p.name: p for p in policies() if isinstance(p, ResourceValidationPolicy)}
# Every workload of the program: the database's image is its own build by digest too, held to
# image-by-digest like the others (no declared exception).
# The pack config of a production stack (policy/pack/config/prod.json).
PRODUCTION: Final = {"production": True}
WORKLOADS: Final = (("Deployment", "gateway"), ("Deployment", "model"), ("StatefulSet", "database"))


def rule_on(rule: str, resource: Registered, props: Props) -> list[str]:
    """`rule` on `props`, as in production: image-by-digest holds production stacks alone (other
    stacks may deploy prebuilt images by tag), and no other rule it runs reads the setting."""
    return violations(RULES[rule].validate, resource.type, props, PRODUCTION)


def broken(resource: Registered, *changes: Callable[[Props], None]) -> Props:
    props: Props = copy.deepcopy(resource.inputs)
    for change in changes:
        change(props)
    return props


def test_every_check_the_gate_skips_has_a_break_here() -> None:
    assert set(BREAKS) == set(policy.PACK_OWNED)


@pytest.mark.parametrize("check_id", BREAKS)
@pytest.mark.parametrize(("kind", "workload"), WORKLOADS)
def test_the_owning_rule_fails_what_the_skipped_check_failed(
    stack_run: ProgramRun, kind: str, workload: str, check_id: str
) -> None:
    resource = stack_run.one(kind, workload)
    rule = policy.PACK_OWNED[check_id]
    assert rule_on(rule, resource, broken(resource)) == []
    assert rule_on(rule, resource, broken(resource, BREAKS[check_id])) != []


def test_a_missing_readiness_probe_fails(stack_run: ProgramRun) -> None:
    gateway = stack_run.one("Deployment", "gateway")
    props = broken(gateway, delete("readinessProbe"))
    assert rule_on("container-probes", gateway, props) == [
        "Deployment gateway, container gateway: no readinessProbe"
    ]


def test_a_privileged_container_that_may_escalate_fails(stack_run: ProgramRun) -> None:
    model = stack_run.one("Deployment", "model")
    props = broken(model, set_context(privileged=True, allowPrivilegeEscalation=True))
    assert rule_on("pod-security-restricted", model, props) == [
        "Deployment model, container model: runs privileged",
        "Deployment model, container model: allowPrivilegeEscalation is not false",
    ]


def test_a_missing_liveness_probe_fails(stack_run: ProgramRun) -> None:
    model = stack_run.one("Deployment", "model")
    props = broken(model, delete("livenessProbe"))
    assert rule_on("container-probes", model, props) == [
        "Deployment model, container model: no livenessProbe"
    ]
