"""DNS egress: every pod may reach port 53 of the cluster's DNS pods, and no other pod."""

from __future__ import annotations

from typing import Any

import pytest

from harness.program import ProgramRun, run_program
from tests.unit.configs import config_error, dev_with

DNS_PORTS = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]


def dns_rule(run: ProgramRun) -> dict[str, Any]:
    spec = run.one("NetworkPolicy", "allow-dns").inputs["spec"]
    assert spec["podSelector"] == {}, "every pod of the namespace resolves names"
    assert spec["policyTypes"] == ["Egress"]
    (rule,) = spec["egress"]
    return dict(rule)


def test_dns_goes_only_to_the_kube_dns_pods_of_kube_system(stack_run: ProgramRun) -> None:
    rule = dns_rule(stack_run)
    # One peer with both selectors: those pods in that namespace (two peers would admit any
    # pod of kube-system, and kube-dns-labelled pods of any namespace).
    assert rule["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert rule["ports"] == DNS_PORTS


def test_a_cluster_whose_dns_is_labelled_otherwise_names_its_pods() -> None:
    run = run_program(
        "dev",
        dev_with(
            dns={"namespace": "dns-system", "podLabels": {"app.kubernetes.io/name": "coredns"}}
        ),
    )
    assert dns_rule(run)["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dns-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "coredns"}},
        }
    ]


def test_the_namespace_alone_keeps_the_default_labels() -> None:
    run = run_program("dev", dev_with(dns={"namespace": "kube-dns-system"}))
    (peer,) = dns_rule(run)["to"]
    assert peer["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}


@pytest.mark.parametrize(
    ("dns", "expected"),
    [
        (
            {"namespace": "Kube_System"},
            'mlstack:dns.namespace: "Kube_System" is not allowed: expected a namespace name',
        ),
        (
            {"podLabels": {}},
            "mlstack:dns.podLabels: {} is not allowed: expected the labels of the cluster's DNS "
            "pods",
        ),
        (
            {"podLabels": ["k8s-app=kube-dns"]},
            'mlstack:dns.podLabels: ["k8s-app=kube-dns"] is not allowed',
        ),
        (
            {"podLabels": {"k8s app": "kube-dns"}},
            'mlstack:dns.podLabels: "k8s app" is not allowed: not a label key: its name',
        ),
        (
            {"podLabels": {"Example.COM/app": "dns"}},
            'mlstack:dns.podLabels: "Example.COM/app" is not allowed: not a label key: its prefix',
        ),
        (
            {"podLabels": {"k8s-app": "kube dns"}},
            'mlstack:dns.podLabels.k8s-app: "kube dns" is not allowed: expected a label value',
        ),
        (
            {"podLabels": {"k8s-app": 53}},
            "mlstack:dns.podLabels.k8s-app: 53 is not allowed: expected a label value",
        ),
        (
            {"podLabel": {"k8s-app": "kube-dns"}},
            'mlstack:dns: unknown key "podLabel" (did you mean "podLabels"?)',
        ),
    ],
)
def test_a_bad_dns_override_names_key_value_and_rule(dns: object, expected: str) -> None:
    assert config_error(dev_with(dns=dns)).startswith(expected)
