"""Breaks of a good workload, one for each Checkov check the gate leaves to the policy pack
(tools/policy.py PACK_OWNED): tests/unit/test_pack_owns_checkov_rules.py shows the pack rule that
owns the check failing each, tests/policy/test_pack_owned.py the check itself. A break changes
the workload's Kubernetes object in place, whether the program registered it or tools.render wrote
it (tests/manifests.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from tests.manifests import container, pod_spec

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
