"""The node's proof, end to end (`python -m e2e.node check DIR`), and the probes the suite's
scenarios use: restricted probe pods Ready, a Service's DNS name resolved and answering another
pod, the API server reached from a pod, a LoadBalancer address answering the machine, an outside
connection refused by the egress guard, a NetworkPolicy enforced."""

from __future__ import annotations

import json
import subprocess
import time

from e2e import addresses as net
from e2e.controlplane import ControlPlane
from e2e.node.guard import rejected as guard_rejected
from e2e.node.host import default_gateway
from e2e.node.pods import probe_pod, restricted_namespace
from harness.http import request
from harness.poll import eventually


def exec_probe(
    plane: ControlPlane, namespace: str, pod: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `e2e-probe ARGS` in a probe pod (through the API server and the kubelet)."""
    return plane.kubectl(
        "exec", "-n", namespace, pod, "--", "/e2e-probe", *args, check=check, timeout=60
    )


def get(plane: ControlPlane, namespace: str, pod: str, url: str) -> str:
    """The body `url` answers a probe pod with, or "" when it does not answer 200."""
    proc = exec_probe(plane, namespace, pod, "get", url, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def check_egress_refused(plane: ControlPlane, namespace: str, pod: str) -> str:
    """Prove that a pod's connection to an outside address is refused, by the egress guard:
    the probe pod dials the machine's default gateway; its connection must be refused and
    the guard's counters must have moved. Returns the probe's output."""
    target = default_gateway() or "192.0.2.1"
    before = guard_rejected()
    proc = exec_probe(plane, namespace, pod, "dial", f"{target}:443", check=False)
    after = guard_rejected()
    if proc.returncode != 3 or after <= before:
        raise AssertionError(
            f"a pod's connection to {target}:443 was not refused by the egress guard "
            f"(exit {proc.returncode}, guard counters {before} -> {after}): {proc.stdout}"
        )
    return proc.stdout.strip()


def check(
    plane: ControlPlane, node_name: str, network_policy: bool, namespace: str
) -> dict[str, float]:
    """The node's proof, end to end: restricted pods Ready, a ClusterIP Service reached by
    its DNS name from another pod, the API server reached from a pod, a LoadBalancer address
    reached from the machine, an outside connection refused. Returns wall times; removes
    what it created."""
    timings: dict[str, float] = {}
    ns = restricted_namespace(namespace)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        },
    }
    plane.kubectl("apply", "-f", "-", stdin=json.dumps(ns))
    try:
        plane.kubectl("apply", "-f", "-", stdin=json.dumps(service))
        start = time.monotonic()
        names = ["web", "client"] + (["other"] if network_policy else [])
        for name in names:
            pod = probe_pod(node_name, name, namespace, {"app": name})
            plane.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
        plane.kubectl(
            "wait", "-n", namespace, "--for=condition=Ready",
            *[f"pod/{n}" for n in names], "--timeout=120s", timeout=150,
        )  # fmt: skip
        timings["pods_ready_s"] = time.monotonic() - start
        fqdn = f"web.{namespace}.svc.{net.CLUSTER_DOMAIN}"
        cluster_ip = plane.kubectl(
            "get", "-n", namespace, "service", "web", "-o", "jsonpath={.spec.clusterIP}"
        ).stdout.strip()
        resolved = exec_probe(plane, namespace, "client", "lookup", fqdn).stdout.split()
        if resolved != [cluster_ip]:
            raise AssertionError(f"{fqdn} resolved to {resolved}, not {cluster_ip}")
        api = f"kubernetes.default.svc.{net.CLUSTER_DOMAIN}:443"
        exec_probe(plane, namespace, "client", "dial", api)  # the API server, from a pod
        # kube-proxy applies new endpoints within about a second of the pods being Ready.
        eventually(
            lambda: get(plane, namespace, "client", "http://web/") == "web",
            "http://web/ to answer the client pod",
            15,
            interval=0.2,
        )
        lb = wait_load_balancer(plane, namespace, "web")
        reply = request("GET", f"http://{lb}/", timeout=5)
        if reply.status != 200 or reply.body.strip() != b"web":
            raise AssertionError(
                f"the LoadBalancer address {lb} answered {reply.status}: {reply.body!r}"
            )
        check_egress_refused(plane, namespace, "client")
        if network_policy:
            timings["network_policy_s"] = check_network_policy(plane, namespace)
    finally:
        plane.kubectl("delete", "namespace", namespace, "--wait=true", check=False, timeout=120)
    return timings


def check_network_policy(plane: ControlPlane, namespace: str) -> float:
    """With pods `web`, `client` and `other` in `namespace` (and a Service `web`): a
    NetworkPolicy that admits only `client` to `web` is enforced — `other` is refused,
    directly and through the Service, `client` still gets through. Returns the seconds from
    applying the policy to its enforcement."""
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "web-from-client", "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                    "ports": [{"port": 8080}],
                }
            ],
        },
    }
    web_ip = plane.kubectl(
        "get", "-n", namespace, "pod", "web", "-o", "jsonpath={.status.podIP}"
    ).stdout.strip()
    eventually(
        lambda: get(plane, namespace, "other", "http://web/"),
        "the other pod to reach web",
        15,
        interval=0.2,
    )
    plane.kubectl("apply", "-f", "-", stdin=json.dumps(policy))
    enforced = eventually(
        lambda: not get(plane, namespace, "other", f"http://{web_ip}:8080/"),
        "the NetworkPolicy to refuse the other pod",
        15,
        interval=0.2,
    )
    for url in ("http://web/", f"http://{web_ip}:8080/"):
        if get(plane, namespace, "other", url):
            raise AssertionError(f"the NetworkPolicy let the other pod reach {url}")
        if get(plane, namespace, "client", url) != "web":
            raise AssertionError(f"the NetworkPolicy refused the client pod {url}")
    return enforced


def wait_load_balancer(plane: ControlPlane, namespace: str, service: str) -> str:
    """The Service's LoadBalancer ingress address, once it has one (30 s at most)."""
    found: list[str] = []

    def assigned() -> bool:
        ip = plane.load_balancer_address(namespace, service)
        found[:] = [ip]
        return bool(ip)

    eventually(
        assigned, f"a LoadBalancer ingress address for {namespace}/{service}", 30, interval=0.2
    )
    return found[0]
