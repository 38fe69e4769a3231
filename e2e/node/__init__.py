"""A real node for the e2e cluster: containerd, kubelet, kube-proxy and CoreDNS as local processes.

It joins a running control plane (e2e/controlplane.py) so that pods really run: containers
started by containerd and runc under the restricted security context, probes answered, Services
routed by kube-proxy, names resolved by CoreDNS, LoadBalancer addresses routed to pods. Every
file lives under one folder (`layout.py`); every address comes from e2e/addresses.py. Run it
with `python -m e2e.node up|check|down DIR` (`__main__.py`).

`Node` puts the parts together, each a module of this package that says what it does and why:
`network` (the node address, the address plan, the API server's forwarder), `guard` (the
nftables egress guard, installed before containerd starts), `certificates`, `kubelet` (and its
cgroups), `containerd` (and the pods' CNI network), `local_images`, `kube_proxy`, `addons`
(CoreDNS, kube-router, metrics-server), `volumes`, `checks`; `state` records what runs and what
the machine was like, `rules`, `host` and `teardown` put the machine back. The configuration
files are templates (e2e/templates/, e2e/render.py). Last comes `node.s3`: SeaweedFS, a process
whose S3 gateway serves HTTPS on the node address with a certificate kwokctl's CA signs, one bucket
and one key pair, for the database's backups (e2e/s3.py).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from e2e import addresses as net
from e2e import metrics_server, process, s3
from e2e.controlplane import ControlPlane
from e2e.node import (
    addons,
    certificates,
    checks,
    containerd,
    guard,
    host,
    kube_proxy,
    kubelet,
    local_images,
    network,
    pods,
    rules,
    teardown,
    volumes,
)
from e2e.node.host import log
from e2e.node.layout import Layout
from e2e.node.packages import ensure_packages
from e2e.node.state import NodeState
from e2e.teardown import run_steps

NODE_NAME: Final = "mlstack-e2e-node"


class Node:
    """The one real node of an e2e control plane, everything under `plane.workdir / "node"`."""

    def __init__(
        self,
        plane: ControlPlane,
        registries: Sequence[str] = (),
        name: str = NODE_NAME,
        network_policy: bool = True,
    ) -> None:
        self.plane = plane
        self.network_policy = network_policy
        self.bin_dir = plane.bin_dir
        self.layout = Layout(plane.workdir / "node")
        self.workdir = self.layout.workdir
        self.state = NodeState(self.layout)
        self.name = name
        self.registries = tuple(registries)
        self.timings: dict[str, float] = {}
        self.s3 = s3.S3Server(
            self.bin_dir / s3.NAME, self.layout.s3, plane.pki_dir, log=self.layout.logs / "weed.log"
        )

    @property
    def kubelet_root(self) -> Path:
        return self.layout.kubelet_root

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.plane.kubectl(*args, **kw)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return containerd.ctr(self.layout.containerd_socket, *args, check=check)

    # --- up -------------------------------------------------------------------------------
    def up(self) -> None:
        """Join the control plane; on any failure, undo everything and re-raise. A machine
        that fails the preflight checks has nothing of this node's to undo: it may be running
        another node, whose `state.json` this one's `down` would read."""
        start = time.monotonic()
        self._preflight()
        self.timings["preflight_s"] = time.monotonic() - start
        layout, state, plane = self.layout, self.state, self.plane
        steps: list[tuple[str, Callable[[], None]]] = [
            ("network", self._network),
            ("api_server_route", self._forward_api_server),
            ("certificates", self._certificates),
            ("cgroups", kubelet.make_cgroups),
            ("containerd", lambda: containerd.start(layout, state, self.registries)),
            ("images", lambda: local_images.import_all(layout.images, self.bin_dir, self.ctr)),
            ("node_ready", lambda: kubelet.start(layout, state, plane, self.name)),
            ("kube_proxy", lambda: kube_proxy.start(layout, state, self.bin_dir, self.name)),
            ("coredns", lambda: addons.start_coredns(state, plane, self.name)),
            *(
                [
                    (
                        "kube_router",
                        lambda: addons.start_kube_router(layout, state, self.bin_dir, self.name),
                    )
                ]
                if self.network_policy
                else []
            ),
            ("metrics_server", lambda: addons.start_metrics_server(layout, state, plane)),
            ("s3", self.s3.up),
        ]
        try:
            for name, step in steps:
                began = time.monotonic()
                step()
                self.timings[f"{name}_s"] = time.monotonic() - began
        except BaseException:
            log(f"start failed: removing what was made (logs kept in {layout.logs})")
            self.down(keep_logs=True)
            raise
        # What its parts set the kernel to: a key that differs at `down` is another program's.
        state.record("sysctls_left", host.sysctls())
        self.timings["node_up_s"] = time.monotonic() - start
        log(f"node {self.name} Ready ({self.timings['node_up_s']:.1f} s in all)")

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the e2e node needs root (network, mounts, cgroups)")
        if network.link_exists(net.NODE_BRIDGE):
            raise RuntimeError(
                f"{net.NODE_BRIDGE} exists: another e2e node runs on this machine "
                "(python -m e2e.node down DIR stops it)"
            )
        if self.layout.state_file.exists():
            # What it recorded of the machine before its `up` is what a `down` restores.
            raise RuntimeError(
                f"{self.layout.state_file} exists: the node of this folder has not been removed "
                "(python -m e2e.node down DIR removes it)"
            )
        ensure_packages()
        if not network.claim_node_bridge():
            raise RuntimeError(
                f"{net.NODE_BRIDGE} exists: another e2e node started on this machine just now "
                "(python -m e2e.node down DIR stops it)"
            )
        try:
            self._check_machine()
        except BaseException:
            network.release_node_bridge()
            raise

    def _check_machine(self) -> None:
        """The checks after the bridge is claimed, and the machine recorded as it is."""
        if rules.KUBE_PROXY_CHAIN in rules.our_chains():
            # Two kube-proxies would each rewrite the rules of the other's Services.
            raise RuntimeError(
                f"iptables has kube-proxy's chains ({rules.KUBE_PROXY_CHAIN}): a Kubernetes node "
                "runs on this machine, or one was left behind (when none runs, `kube-proxy "
                "--cleanup` removes them)"
            )
        tools = ["kubelet", "kube-proxy", "coredns", "metrics-server", "e2e-pause", "e2e-probe"]
        tools.append(s3.NAME)
        for tool in tools + (["kube-router"] if self.network_policy else []):
            if not (self.bin_dir / tool).exists():
                raise RuntimeError(
                    f"{tool} is missing from {self.bin_dir} (e2e/toolchain/build.sh)"
                )
        network.check_address_plan()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self.state.save(
            {
                "pids": {},
                "node": self.name,
                "sysctls": host.sysctls(),
                "absent_dirs": host.absent_host_dirs(),
                "nft_tables": rules.nft_tables(),
                "chains": sorted(rules.our_chains()),
                "ipsets": rules.our_ipsets(),
            }
        )

    def _network(self) -> None:
        outside = host.outside_interfaces()
        if not outside:
            raise RuntimeError("no default route: cannot tell the outside interface")
        self.state.record("outside", outside)
        guard.install(outside)
        network.set_up_node_bridge()

    def _forward_api_server(self) -> None:
        port = self.plane.api_server_port()
        self.state.record("api_server_port", port)
        network.forward_api_server(self.state, port)

    def _certificates(self) -> None:
        port = self.state.read()["api_server_port"]
        certificates.make(self.layout, self.plane.pki_dir, port, self.name)

    def wait_for_metrics(self) -> None:
        """Until the Metrics API, which `up` starts and does not wait for, serves the node's
        usage: what a HorizontalPodAutoscaler reads."""
        addons.wait_for_metrics_server(self.state, self.plane)

    # --- volumes --------------------------------------------------------------------------
    def add_volume(self, namespace: str, claim: str, size: str = "10Gi") -> Path:
        """A local PersistentVolume on the node, pre-bound to `namespace/claim` (what a
        provisioner would create); returns its folder."""
        return volumes.add_volume(
            self.plane, self.layout.volumes, self.name, namespace=namespace, claim=claim, size=size
        )

    # --- down -----------------------------------------------------------------------------
    def down(self, keep_logs: bool = False) -> list[str]:
        """Remove everything `up` made, whatever state it is in; return what could not be
        removed and each step that failed (empty when the machine is clean). `keep_logs` leaves
        the processes' logs."""
        if not self.layout.state_file.exists():
            return self.leftovers()
        recorded = self.state.read()
        state = self.state
        steps: tuple[tuple[str, Callable[[], object]], ...] = (
            ("drain", self._drain),
            ("stop metrics-server", lambda: state.stop(metrics_server.NAME)),
            ("stop s3", self.s3.down),
            ("stop kube-router", lambda: state.stop(addons.KUBE_ROUTER)),
            ("stop kube-proxy", lambda: kube_proxy.stop(state)),
            ("stop kubelet", lambda: state.stop(kubelet.NAME, grace=20)),
            ("remove containers", self._remove_containers),
            ("stop containerd", lambda: state.stop(containerd.NAME)),
            ("stop shims", self._stop_shims),
            ("stop api-server-forward", lambda: state.stop(network.API_SERVER_FORWARD)),
            ("unmount", lambda: process.unmount_under(self.workdir)),
            ("remove chains", lambda: rules.remove_chains(set(recorded.get("chains", [])))),
            ("remove ipsets", lambda: rules.remove_ipsets(set(recorded.get("ipsets", [])))),
            ("remove nft", lambda: rules.remove_nft_tables(set(recorded.get("nft_tables", [])))),
            ("remove links", network.remove_links),
            (
                "restore sysctls",
                lambda: host.restore_sysctls(
                    recorded.get("sysctls", {}), recorded.get("sysctls_left")
                ),
            ),
            ("remove cgroups", kubelet.remove_cgroups),
            ("remove host files", lambda: teardown.remove_host_files(self.layout, recorded)),
            # Last: the guard is what keeps traffic on the machine while any of the above routes it.
            ("remove guard", self._remove_guard),
        )
        # A failed step is left behind too: the folder, with state.json and what it recorded of
        # the machine (its kernel settings, its rules), stays for the next `down` to retry.
        left = run_steps(steps, lambda message: log(f"down: {message}")) + self.leftovers()
        if not left:
            teardown.remove_workdir(self.layout, keep_logs)
        else:
            log("down left: " + "; ".join(left))
        return left

    def _drain(self) -> None:
        """Delete the node's pods through the API while kubelet runs."""
        if self.state.alive(kubelet.NAME) and teardown.api_up(self.plane):
            teardown.drain(self.plane, self.name, self.layout.containerd_socket)

    def _remove_guard(self) -> None:
        """The egress guard, once nothing is left that routes the pods' or the Services' traffic:
        no process of the node (a pod's shim included) and no link of it (the bridges, and with
        them the routes of the pod and LoadBalancer ranges). Without the node bridge, a packet
        to a LoadBalancer address takes the default route, out of the machine: only the guard
        stops it. While one is left the guard stays, reported as left with the rest, and the
        node's folder with it, for the next `down`."""
        routing = [f"link {link}" for link in network.links_left()]
        routing += [f"process {name}" for name in self.state.running()]
        routing += [f"process {pid}" for pid in process.find(str(self.layout.containerd_socket))]
        if routing:
            raise RuntimeError(f"kept while these route traffic: {', '.join(routing)}")
        guard.remove()

    def _stop_shims(self) -> None:
        """containerd's shims, found by the socket they were given (`-address`): not every
        process that names the node's folder, which may be an editor or a `tail -f` of a log."""
        process.stop_all(process.find(str(self.layout.containerd_socket)), 5)

    def _remove_containers(self) -> None:
        """Whatever kubelet left running, while containerd runs."""
        socket = self.layout.containerd_socket
        if socket.exists() and self.state.alive(containerd.NAME):
            containerd.remove_containers(socket)

    def leftovers(self) -> list[str]:
        """What of this node is still on the machine (processes, mounts, links, rules, cgroups)."""
        recorded = self.state.read()
        left = [f"process {name} ({pid})" for name, pid in self.state.running().items()]
        left += [f"process {pid}" for pid in process.find(str(self.workdir))]
        left += [f"mount {p}" for p in process.mounts_under(self.workdir)]
        left += [f"link {link}" for link in network.links_left()]
        if f"inet {guard.TABLE}" in rules.nft_tables():
            left.append(f"nft table inet {guard.TABLE}")
        chains = rules.chains_to_remove(set(recorded.get("chains", [])))
        left += [f"chain {c}" for c in sorted(chains)]
        new_ipsets = set(rules.our_ipsets()) - set(recorded.get("ipsets", []))
        left += [f"ipset {i}" for i in sorted(new_ipsets)]
        left += [f"cgroup {group}" for group in kubelet.cgroups_left()]
        return left

    # --- checks ---------------------------------------------------------------------------
    def probe_pod(
        self, name: str, namespace: str, labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """A restricted pod of the probe image on this node (e2e/node/pods.py)."""
        return pods.probe_pod(self.name, name, namespace, labels)

    def exec_probe(
        self, namespace: str, pod: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `e2e-probe ARGS` in a probe pod (through the API server and the kubelet)."""
        return checks.exec_probe(self.plane, namespace, pod, *args, check=check)

    def check_egress_refused(self, namespace: str, pod: str) -> str:
        """A pod's connection to an outside address is refused by the egress guard
        (e2e/node/checks.py); returns the probe's output."""
        return checks.check_egress_refused(self.plane, namespace, pod)

    def check(self, namespace: str = "mlstack-e2e-node-check") -> dict[str, float]:
        """The node's proof, end to end (e2e/node/checks.py); returns wall times."""
        return checks.check(self.plane, self.name, self.network_policy, namespace)
