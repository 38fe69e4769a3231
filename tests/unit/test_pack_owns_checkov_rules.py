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
from collections.abc import Callable, Mapping
from typing import Any, Final

import pytest
from pulumi_policy import ResourceValidationPolicy

from harness.program import ProgramRun, Registered
from mlstack_policy.pack import policies
from tests.manifests import container, pod_spec
from tests.unit.pack import violations
from tools import policy

Props = dict[str, Any]


def context(props: Props) -> Props:
    found: Props = container(props)["securityContext"]
    return found


def delete(*path: str) -> Callable[[Props], None]:
    """Remove the container's field at `path`."""

    def change(props: Props) -> None:
        node = container(props)
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return change


def set_context(**fields: Any) -> Callable[[Props], None]:
    def change(props: Props) -> None:
        context(props).update(fields)

    return change


def set_pod(**fields: Any) -> Callable[[Props], None]:
    def change(props: Props) -> None:
        pod_spec(props).update(fields)

    return change


def runs_as_root(props: Props) -> None:
    for where in (context(props), pod_spec(props)["securityContext"]):
        where.update(runAsNonRoot=False, runAsUser=0)


def unconfined(props: Props) -> None:
    for where in (context(props), pod_spec(props)["securityContext"]):
        where["seccompProfile"] = {"type": "Unconfined"}


def by_tag(props: Props) -> None:
    container(props)["image"] = str(container(props)["image"]).split("@")[0] + ":v1"


# Each Checkov check the gate skips: a change of a good workload that the check fails (read from
# its source in .venv-checkov: checkov/kubernetes/checks/resource/k8s/).
BREAKS: Final[Mapping[str, Callable[[Props], None]]] = {
    "CKV_K8S_8": delete("livenessProbe"),
    "CKV_K8S_9": delete("readinessProbe"),
    "CKV_K8S_10": delete("resources", "requests", "cpu"),
    "CKV_K8S_11": delete("resources", "limits", "cpu"),
    "CKV_K8S_12": delete("resources", "requests", "memory"),
    "CKV_K8S_13": delete("resources", "limits", "memory"),
    "CKV_K8S_43": by_tag,
    "CKV_K8S_16": set_context(privileged=True),
    "CKV_K8S_17": set_pod(hostPID=True),
    "CKV_K8S_18": set_pod(hostIPC=True),
    "CKV_K8S_19": set_pod(hostNetwork=True),
    "CKV_K8S_20": set_context(allowPrivilegeEscalation=True),
    "CKV_K8S_22": set_context(readOnlyRootFilesystem=False),
    "CKV_K8S_23": runs_as_root,
    "CKV_K8S_25": set_context(capabilities={"drop": ["ALL"], "add": ["NET_ADMIN"]}),
    "CKV_K8S_28": set_context(capabilities={"drop": ["CHOWN"]}),
    "CKV_K8S_30": delete("securityContext"),
    "CKV_K8S_31": unconfined,
    "CKV_K8S_37": set_context(capabilities={"drop": ["NET_RAW"]}),
    "CKV_K8S_39": set_context(capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
}
RULES: Final = {p.name: p for p in policies() if isinstance(p, ResourceValidationPolicy)}
# Every workload of the program: the database's image is its own build by digest too, held to
# image-by-digest like the others (no declared exception).
WORKLOADS: Final = (("Deployment", "gateway"), ("Deployment", "model"), ("StatefulSet", "database"))


def rule_on(rule: str, resource: Registered, props: Props) -> list[str]:
    return violations(RULES[rule].validate, resource.type, props)


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
