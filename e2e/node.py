"""A real node for the e2e cluster: containerd, kubelet, kube-proxy and CoreDNS as local processes.

It joins a running control plane (e2e/controlplane.py) so that pods really run: containers
started by containerd and runc under the restricted security context, probes answered, Services
routed by kube-proxy, names resolved by CoreDNS, LoadBalancer addresses routed to pods. Every
file lives under one folder; every address comes from e2e/addresses.py.

    python -m e2e.node up DIR      # join the control plane that `e2e.controlplane up DIR` started
    python -m e2e.node check DIR   # restricted pods Ready, Service + DNS, outside traffic refused
    python -m e2e.node down DIR    # remove every process, mount, rule, bridge and file it made
    python -m e2e.node packages    # the Debian packages of e2e/node-packages.txt still missing

`up DIR 127.0.0.1:PORT...` also lets containerd pull from those registries over plain HTTP.

How it is put together (the choices that are not defaults, and why):
- Network: the node address is a /32 on a bridge with no ports (the machine has no `dummy`
  module); the LoadBalancer range is routed on that bridge, so kube-proxy's rules catch it. Pods
  sit on the CNI bridge plugin's bridge (host-local addresses, no masquerade: nothing may leave).
  The API server listens on 127.0.0.1 only; a socat forwarder makes it reachable from pods at the
  node address (the `kubernetes` Service's endpoint, see e2e/controlplane.py).
- Egress guard: before containerd starts, an nftables table of our own rejects anything from the
  pod range or the pod bridge that would leave by another interface, and anything to the pod,
  Service or LoadBalancer ranges (before or after kube-proxy's address translation) that would
  leave by the machine's outside interface(s). It runs before iptables' filter chains, so no
  ACCEPT of Docker, CNI or kube-proxy can overtake it.
- containerd: its own config, root, state and socket; CRI with cgroupfs and
  `restrict_oom_score_adj` (the machine cannot lower oom_score_adj); the sandbox image is a
  static pause program built here; `127.0.0.1:<port>` registries are pulled over plain HTTP and
  any other registry resolves to a closed local port, so no pull ever leaves the machine.
- kubelet: cgroupfs under its own cgroup root, cgroup v1 allowed, swap allowed, no host DNS
  servers in pods, webhook authentication and authorization, a client certificate for
  `system:node:<name>` signed by kwokctl's CA; it does not set the kernel tunables it would
  otherwise change (they are restored anyway: see `SYSCTLS`).
- kube-proxy: iptables mode, NodePorts on the node address only, conntrack limits untouched.
- metrics-server: a process on the node address behind the `v1beta1.metrics.k8s.io` APIService,
  reading the kubelet, whose serving certificate kwokctl's CA signs (e2e/metrics_server.py).
- CoreDNS: serves the cluster zone only (no upstream exists offline), as a restricted pod in
  kube-system labelled `k8s-app: kube-dns` behind the usual `kube-system/kube-dns` Service, as
  clusters run it: the app's NetworkPolicy admits DNS to exactly those pods (a process on the
  node address would match no pod).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from components.network_policy import DnsPods
from e2e import addresses as net
from e2e import metrics_server, process
from e2e.controlplane import E2E_DIR, ControlPlane, toolchain_bin
from e2e.image_archive import ImageFile, write_image

PACKAGES_FILE: Final = E2E_DIR / "node-packages.txt"
NODE_NAME: Final = "mlstack-e2e-node"
GUARD_TABLE: Final = "mlse2e_guard"
CGROUP_ROOT: Final = "mlstack-e2e"
PAUSE_IMAGE: Final = "mlstack.local/e2e/pause:1"
PROBE_IMAGE: Final = "mlstack.local/e2e/probe:1"
COREDNS_IMAGE: Final = "mlstack.local/e2e/coredns:1"
COREDNS: Final = "coredns"
CNI_BIN: Final = "/usr/lib/cni"
KUBELET_PORT: Final = 10250

# Kernel settings the node's parts change (the CNI bridge plugin turns forwarding on; kubelet
# sets its kernel tunables): their values are recorded before and restored by `down`.
SYSCTLS: Final = (
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "net/ipv4/conf/all/route_localnet",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Machine folders that kubelet, containerd or the CNI plugins create when missing (netns mounts,
# container log links, the CNI result cache): `down` removes the ones that were absent, if empty.
HOST_DIRS: Final = (
    "/var/lib/kubelet/device-plugins",  # kubelet's device plugin socket, whatever its root dir
    "/var/lib/kubelet",
    "/var/run/netns",
    "/var/log/containers",
    "/var/lib/cni/results",
    "/var/lib/cni",
    "/run/containerd/s",
    "/run/containerd",
)
IPTABLES_TABLES: Final = ("filter", "nat", "mangle", "raw")
CHAIN_PREFIXES: Final = ("KUBE-", "CNI-")
# Tables iptables-nft makes on first use; removed by `down` if they appeared and hold no rule.
IPTABLES_NFT_TABLES: Final = ("filter", "nat", "mangle", "raw", "security")


def log(message: str) -> None:
    print(f"e2e-node: {message}", file=sys.stderr, flush=True)


def run(
    *argv: str, check: bool = True, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return proc


def debian_packages() -> list[str]:
    """The Debian packages the node needs (e2e/node-packages.txt)."""
    names = []
    for raw in PACKAGES_FILE.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def missing_packages() -> list[str]:
    missing = []
    for name in debian_packages():
        status = run("dpkg-query", "-W", "-f=${Status}", name, check=False).stdout
        if status.strip() != "install ok installed":
            missing.append(name)
    return missing


def ensure_packages() -> None:
    """Install the node's Debian packages that are missing (apt-get, as root)."""
    missing = missing_packages()
    if not missing:
        return
    log(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-yq", "--no-install-recommends", *missing],
    ):
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)


def process_running(comm: str) -> bool:
    """Whether a process whose command name is `comm` runs on the machine."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == comm:
                    return True
    return False


def sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key


def outside_interfaces() -> list[str]:
    """The interfaces of the machine's default routes (IPv4 and IPv6)."""
    names: set[str] = set()
    for family in ("-4", "-6"):
        out = run("ip", "-j", family, "route", "show", "default", check=False).stdout
        for route in json.loads(out or "[]"):
            if route.get("dev"):
                names.add(str(route["dev"]))
    return sorted(names)


def mounts_under(*roots: Path) -> list[Path]:
    """Mount points at or under any of `roots`, deepest first."""
    found: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(line.split()[4].encode().decode("unicode_escape"))
        if any(point == r or r in point.parents for r in roots):
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def dns_query(server: str, name: str, timeout: float = 2, port: int = 53) -> list[str]:
    """The A records of `name` from `server` (one UDP question; [] when there is none)."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    query = struct.pack(">HHHHHH", 0x4D4C, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query, (server, port))
        reply = s.recv(4096)
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", reply[:12])
    if flags & 0x000F:
        return []
    pos = 12
    for _ in range(qd):
        while reply[pos]:
            pos += reply[pos] + 1
        pos += 5
    found = []
    for _ in range(an):
        pos += 2 if reply[pos] & 0xC0 == 0xC0 else len(qname)
        rtype, _, _, length = struct.unpack(">HHIH", reply[pos : pos + 10])
        pos += 10
        if rtype == 1 and length == 4:
            found.append(socket.inet_ntoa(reply[pos : pos + 4]))
        pos += length
    return found


# The pod and container settings the `restricted` Pod Security level asks of the suite's own
# pods (the probe and CoreDNS, whose images run as 65532).
RESTRICTED_POD: Final = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER: Final = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def restricted_namespace(name: str) -> dict[str, Any]:
    """A Namespace whose pods Pod Security admission holds to `restricted`."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
        },
    }


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
        self.workdir = plane.workdir / "node"
        self.name = name
        self.registries = tuple(registries)
        self.timings: dict[str, float] = {}

    # --- paths and recorded state ---------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.workdir / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.workdir / "pod-logs"

    @property
    def volumes(self) -> Path:
        return self.workdir / "volumes"

    def _state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            data = {}
        data.setdefault("pids", {})
        return data

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_file)

    def _record(self, key: str, value: object) -> None:
        state = self._state()
        state[key] = value
        self._save(state)

    # --- processes ------------------------------------------------------------------------
    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
        proc = process.spawn(argv, self.logs / f"{name}.log", env)
        state = self._state()
        state["pids"][name] = proc.pid
        self._save(state)
        return proc.pid

    def _alive(self, name: str) -> bool:
        pid = self._state()["pids"].get(name)
        return pid is not None and process.alive(int(pid))

    def _stop(self, name: str, grace: float = 10) -> None:
        state = self._state()
        pid = state["pids"].pop(name, None)
        if pid is not None:
            process.stop_all([int(pid)], grace)
        self._save(state)

    def _wait(self, what: str, ready: Any, timeout: float, daemon: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if daemon is not None and not self._alive(daemon):
                tail = (self.logs / f"{daemon}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{daemon} exited before {what}:\n{tail}")
            time.sleep(0.1)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.plane.kubectl(*args, **kw)

    # --- up -------------------------------------------------------------------------------
    def up(self) -> None:
        """Join the control plane; on any failure, undo everything and re-raise."""
        start = time.monotonic()
        try:
            self._preflight()
            self._network()
            self._forward_api_server()
            self._certificates()
            self._cgroups()
            self._start_containerd()
            self._import_images()
            kubelet_started = time.monotonic()
            self._start_kubelet()
            self.timings["node_ready_s"] = time.monotonic() - kubelet_started
            self._start_kube_proxy()
            self._start_coredns()
            if self.network_policy:
                self._start_kube_router()
            self._start_metrics_server()
        except BaseException:
            log(f"start failed: removing what was made (logs kept in {self.logs})")
            self.down(keep_logs=True)
            raise
        self.timings["node_up_s"] = time.monotonic() - start
        log(f"node {self.name} Ready ({self.timings['node_up_s']:.1f} s in all)")

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the e2e node needs root (network, mounts, cgroups)")
        if Path(f"/sys/class/net/{net.NODE_BRIDGE}").exists():
            raise RuntimeError(
                f"{net.NODE_BRIDGE} exists: another e2e node runs on this machine "
                "(python -m e2e.node down DIR stops it)"
            )
        ensure_packages()
        tools = ["kubelet", "kube-proxy", "coredns", "metrics-server", "e2e-pause", "e2e-probe"]
        for tool in tools + (["kube-router"] if self.network_policy else []):
            if not (self.bin_dir / tool).exists():
                raise RuntimeError(
                    f"{tool} is missing from {self.bin_dir} (e2e/toolchain/build.sh)"
                )
        plan = [
            ipaddress.ip_network(c)
            for c in (
                f"{net.NODE_ADDRESS}/32",
                net.POD_CIDR,
                net.SERVICE_CIDR,
                net.LOAD_BALANCER_CIDR,
            )
        ]
        for route in json.loads(run("ip", "-j", "-4", "route", "show", "table", "all").stdout):
            dst = route.get("dst", "")
            if dst in ("default", "") or route.get("type") in ("local", "broadcast"):
                continue
            used = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
            if used.is_loopback or used.is_multicast:
                continue
            for mine in plan:
                if mine.overlaps(used):
                    raise RuntimeError(f"{mine} of e2e/addresses.py overlaps the route {dst}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self._save(
            {
                "pids": {},
                "node": self.name,
                "sysctls": {k: sysctl_path(k).read_text().strip() for k in SYSCTLS},
                "absent_dirs": [d for d in HOST_DIRS if not Path(d).exists()],
                "nft_tables": self._nft_tables(),
                "chains": sorted(self._our_chains()),
                "ipsets": self._ipsets(),
            }
        )

    def _network(self) -> None:
        outside = outside_interfaces()
        if not outside:
            raise RuntimeError("no default route: cannot tell the outside interface")
        self._record("outside", outside)
        self._install_guard(outside)
        run("ip", "link", "add", net.NODE_BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{net.NODE_ADDRESS}/32", "dev", net.NODE_BRIDGE)
        run("ip", "link", "set", net.NODE_BRIDGE, "up")
        run("ip", "route", "add", net.LOAD_BALANCER_CIDR, "dev", net.NODE_BRIDGE)
        # Routing between pods, Services and the node; bridged pod-to-pod replies must pass
        # conntrack for Service NAT to be undone.
        sysctl_path("net/ipv4/ip_forward").write_text("1")
        sysctl_path("net/bridge/bridge-nf-call-iptables").write_text("1")

    def _install_guard(self, outside: Sequence[str]) -> None:
        """The egress guard (see the module's docstring), with counters for `egress_rejected`.

        Forwarded packets (the pods') are rejected in the forward hook, so a pod's connection is
        refused at once. The machine's own packets are dropped in postrouting: in the output
        hook the outgoing interface is still the one chosen before kube-proxy's address
        translation, so a Service address would look like it leaves when it does not."""
        ifaces = ", ".join(f'"{i}"' for i in outside)
        ranges = f"{net.POD_CIDR}, {net.SERVICE_CIDR}, {net.LOAD_BALANCER_CIDR}"
        pods = f'"{net.POD_BRIDGE}"'
        # By the destination before and after translation: a Service address that kube-proxy
        # translated to an endpoint outside the node (a KWOK fake pod's or fake node's address,
        # which may be the machine's real neighbours) must not leave either.
        leaving = [
            f"oifname {{ {ifaces} }} ip daddr {{ {ranges} }}",
            f"oifname {{ {ifaces} }} ct original ip daddr {{ {ranges} }}",
            f"oifname {{ {ifaces} }} ip saddr {net.POD_CIDR}",
        ]
        forward = [
            f"iifname {pods} oifname != {pods}",
            f"ip saddr {net.POD_CIDR} oifname != {pods}",
            *leaving,
        ]
        rejects = (
            "counter meta l4proto tcp reject with tcp reset",
            "counter reject with icmpx port-unreachable",
        )
        ruleset = "\n".join(
            [
                f"table inet {GUARD_TABLE} {{",
                "  chain forward {",
                "    type filter hook forward priority filter - 10; policy accept;",
                *[f"    {match} {r}" for match in forward for r in rejects],
                "  }",
                "  chain postrouting {",
                "    type filter hook postrouting priority srcnat - 10; policy accept;",
                *[f"    {match} counter drop" for match in leaving],
                "  }",
                "}",
            ]
        )
        run("nft", "-f", "-", stdin=ruleset + "\n")

    def egress_rejected(self) -> int:
        """Packets the egress guard has rejected or dropped so far."""
        out = run("nft", "-j", "list", "table", "inet", GUARD_TABLE).stdout
        total = 0
        for item in json.loads(out)["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    total += int(expr["counter"]["packets"])
        return total

    def _forward_api_server(self) -> None:
        port = self.plane.api_server_port()
        self._record("api_server_port", port)
        self._spawn(
            "api-server-forward",
            [
                "socat",
                f"TCP-LISTEN:{port},bind={net.NODE_ADDRESS},fork,reuseaddr",
                f"TCP:127.0.0.1:{port}",
            ],
        )

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex((net.NODE_ADDRESS, port)) == 0

        self._wait("the API server at the node address", listening, 10, "api-server-forward")

    def _certificates(self) -> None:
        """Client certificates signed by kwokctl's CA, and a kubeconfig for each."""
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        port = self._state()["api_server_port"]
        identities = {
            "kubelet": (f"system:node:{self.name}", "system:nodes"),
            "kube-proxy": ("system:kube-proxy", ""),
            # CoreDNS and kube-router watch Services, EndpointSlices, Namespaces, Pods and
            # NetworkPolicies across the cluster: the throwaway cluster's admin.
            "admin": ("mlstack-e2e-node-admin", "system:masters"),
        }
        ca = self.plane.pki_dir
        ext = pki / "client.ext"
        ext.write_text("keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n")
        for user, (cn, org) in identities.items():
            subject = f"/O={org}/CN={cn}" if org else f"/CN={cn}"
            run(
                "openssl", "req", "-new", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(pki / f"{user}.key"), "-subj", subject,
                "-out", str(pki / f"{user}.csr"),
            )  # fmt: skip
            run(
                "openssl", "x509", "-req", "-in", str(pki / f"{user}.csr"),
                "-CA", str(ca / "ca.crt"), "-CAkey", str(ca / "ca.key"), "-set_serial",
                str(int.from_bytes(os.urandom(8), "big")), "-days", "7",
                "-extfile", str(ext), "-out", str(pki / f"{user}.crt"),
            )  # fmt: skip
            kubeconfig = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "e2e",
                        "cluster": {
                            "server": f"https://127.0.0.1:{port}",
                            "certificate-authority": str(ca / "ca.crt"),
                        },
                    }
                ],
                "users": [
                    {
                        "name": user,
                        "user": {
                            "client-certificate": str(pki / f"{user}.crt"),
                            "client-key": str(pki / f"{user}.key"),
                        },
                    }
                ],
                "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
                "current-context": "e2e",
            }
            (pki / f"{user}.kubeconfig").write_text(json.dumps(kubeconfig, indent=1))
        # Serving certificates the cluster's CA vouches for: the kubelet's at the node address
        # (metrics-server verifies it) and metrics-server's under its Service's name (the
        # aggregator verifies it).
        metrics_server.sign_serving_certificate(
            run, pki, ca, "kubelet-serving", f"IP:{net.NODE_ADDRESS},DNS:{self.name}"
        )
        metrics_server.sign_serving_certificate(
            run, pki, ca, "metrics-server", f"DNS:{metrics_server.SERVICE_DNS}"
        )

    @staticmethod
    def _cgroup_hierarchies() -> list[Path]:
        found = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2"):
                found.append(Path(fields[4]))
        return found

    def _cgroups(self) -> None:
        """kubelet's cgroup root, in every hierarchy (cpuset needs its cpus and mems set)."""
        for hierarchy in self._cgroup_hierarchies():
            group = hierarchy / CGROUP_ROOT
            group.mkdir(exist_ok=True)
            for key in ("cpuset.cpus", "cpuset.mems"):
                if (group / key).exists() and not (group / key).read_text().strip():
                    (group / key).write_text((hierarchy / key).read_text())

    def _start_containerd(self) -> None:
        base = self.workdir / "containerd"
        certs = base / "certs.d"
        for registry in self.registries:
            d = certs / registry
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts.toml").write_text(
                f'server = "http://{registry}"\n\n'
                f'[host."http://{registry}"]\n  capabilities = ["pull", "resolve"]\n'
            )
        # Every other registry: a closed local port, so a pull fails at once and stays here.
        (certs / "_default").mkdir(parents=True, exist_ok=True)
        (certs / "_default" / "hosts.toml").write_text(
            'server = "http://127.0.0.1:9"\n\n'
            '[host."http://127.0.0.1:9"]\n  capabilities = ["pull", "resolve"]\n'
        )
        cni = self.workdir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        self._write_cni(cni)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
oom_score = 0

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{base / "containerd.sock.ttrpc"}"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  max_container_log_line_size = 16384

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{base / "runc"}"

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{cni / "net.d"}"
  max_conf_num = 1

[{cri}.registry]
  config_path = "{certs}"
"""
        (base / "config.toml").write_text(config)
        self._spawn("containerd", ["containerd", "--config", str(base / "config.toml")])
        self._wait(
            "containerd",
            lambda: self.ctr("version", check=False).returncode == 0,
            30,
            "containerd",
        )

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(
            "ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", *args, check=check
        )

    def _write_cni(self, cni: Path) -> None:
        conflist = {
            "cniVersion": "1.0.0",
            "name": net.CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": net.POD_BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": net.POD_CIDR, "gateway": net.POD_GATEWAY}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(cni / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
                # Docker's engine sets the FORWARD policy to DROP: this plugin lets pod traffic
                # through (the egress guard still rejects what would leave the machine).
                {"type": "firewall", "backend": "iptables"},
            ],
        }
        (cni / "net.d" / f"10-{net.CNI_NETWORK}.conflist").write_text(
            json.dumps(conflist, indent=1)
        )

    def _import_images(self) -> None:
        images = self.workdir / "images"
        for ref, binary, entrypoint, cmd, user in (
            (PAUSE_IMAGE, "e2e-pause", ["/pause"], [], "65535:65535"),
            (PROBE_IMAGE, "e2e-probe", ["/e2e-probe"], ["serve", ":8080"], "65532:65532"),
            (COREDNS_IMAGE, "coredns", ["/coredns"], [], "65532:65532"),
        ):
            data = (self.bin_dir / binary).read_bytes()
            archive = images / f"{binary}.tar"
            write_image(
                archive,
                ref,
                [ImageFile(entrypoint[0], data)],
                entrypoint=entrypoint,
                cmd=cmd,
                user=user,
            )
            self.ctr("images", "import", str(archive))

    def _start_kubelet(self) -> None:
        root = self.kubelet_root
        for d in (root, self.pod_logs, self.workdir / "volume-plugins", self.volumes):
            d.mkdir(parents=True, exist_ok=True)
        pki = self.workdir / "pki"
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": net.NODE_ADDRESS,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.plane.pki_dir / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "failSwapOn": False,
            "failCgroupV1": False,
            "oomScoreAdj": 0,
            "protectKernelDefaults": False,
            "clusterDNS": [net.DNS_SERVICE_IP],
            "clusterDomain": net.CLUSTER_DOMAIN,
            "resolvConf": "",
            "podLogsDir": str(self.pod_logs),
            "volumePluginDir": str(self.workdir / "volume-plugins"),
            "serializeImagePulls": False,
            "shutdownGracePeriod": "0s",
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "nodeStatusUpdateFrequency": "2s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "staticPodPath": "",
            "registerNode": True,
            "maxPods": 110,
        }
        path = self.workdir / "kubelet.yaml"
        path.write_text(json.dumps(config, indent=1))
        self._spawn(
            "kubelet",
            [
                self._bin("kubelet"),
                f"--config={path}",
                f"--kubeconfig={pki / 'kubelet.kubeconfig'}",
                f"--root-dir={root}",
                f"--cert-dir={root / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={net.NODE_ADDRESS}",
                "--v=1",
            ],
        )
        self._wait("the node to be Ready", self._node_ready, 120, "kubelet")

    def _node_ready(self) -> bool:
        proc = self.kubectl(
            "get", "node", self.name, "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            check=False,
        )  # fmt: skip
        return proc.stdout.strip() == "True"

    def _start_kube_proxy(self) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self.workdir / "pki" / "kube-proxy.kubeconfig")},
            "hostnameOverride": self.name,
            "bindAddress": net.NODE_ADDRESS,
            "healthzBindAddress": f"{net.NODE_ADDRESS}:10256",
            "metricsBindAddress": f"{net.NODE_ADDRESS}:10249",
            "clusterCIDR": net.POD_CIDR,
            "nodePortAddresses": [f"{net.NODE_ADDRESS}/32"],
            "oomScoreAdj": 0,
            "iptables": {"localhostNodePorts": False},
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        path = self.workdir / "kube-proxy.yaml"
        path.write_text(json.dumps(config, indent=1))
        self._spawn("kube-proxy", [self._bin("kube-proxy"), f"--config={path}", "--v=1"])

        def healthy() -> bool:
            try:
                with socket.create_connection((net.NODE_ADDRESS, 10256), timeout=1) as s:
                    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                    return b" 200 " in s.recv(200)
            except OSError:
                return False

        self._wait("kube-proxy", healthy, 60, "kube-proxy")

    def _start_coredns(self) -> None:
        """CoreDNS as a pod in kube-system behind the `kube-dns` Service, as a cluster runs it:
        the app's NetworkPolicy admits DNS to the pods of kube-system labelled `k8s-app:
        kube-dns` only (components/network_policy.py `DnsPods`), so this pod carries both.
        Non-root with no capability: the pod's own network namespace lets it bind port 53
        (`net.ipv4.ip_unprivileged_port_start`, a safe sysctl)."""
        # The namespace and labels the app's DNS egress admits by default.
        dns = DnsPods()
        labels = dict(dns.labels)
        corefile = (
            f"{net.CLUSTER_DOMAIN}:53 {{\n"
            "  errors\n"
            "  ready :8181\n"
            f"  kubernetes {net.CLUSTER_DOMAIN} {{\n"
            "    pods insecure\n"
            "  }\n"
            "  cache 5\n"
            "}\n"
        )
        role_rules = [
            {
                "apiGroups": [""],
                "resources": ["endpoints", "services", "pods", "namespaces"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["list", "watch"],
            },
        ]
        meta = {"name": COREDNS, "namespace": dns.namespace, "labels": labels}
        objects: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": f"mlstack-e2e:{COREDNS}"},
                "rules": role_rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": f"mlstack-e2e:{COREDNS}"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": f"mlstack-e2e:{COREDNS}",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": COREDNS, "namespace": dns.namespace}
                ],
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": meta,
                "data": {"Corefile": corefile},
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": meta,
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": self.name},
                    "serviceAccountName": COREDNS,
                    "dnsPolicy": "Default",
                    "priorityClassName": "system-cluster-critical",
                    "terminationGracePeriodSeconds": 2,
                    "securityContext": {
                        **RESTRICTED_POD,
                        "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "53"}],
                    },
                    "containers": [
                        {
                            "name": COREDNS,
                            "image": COREDNS_IMAGE,
                            "imagePullPolicy": "Never",
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "ports": [
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            ],
                            "readinessProbe": {
                                "httpGet": {"path": "/ready", "port": 8181},
                                "periodSeconds": 1,
                            },
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                            "resources": {
                                "requests": {"cpu": "10m", "memory": "32Mi"},
                                "limits": {"memory": "128Mi"},
                            },
                            "securityContext": RESTRICTED_CONTAINER,
                        }
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": COREDNS}}],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "kube-dns", "namespace": dns.namespace, "labels": labels},
                "spec": {
                    "clusterIP": net.DNS_SERVICE_IP,
                    "selector": labels,
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    ],
                },
            },
        ]
        for obj in objects:
            self.kubectl("apply", "-f", "-", stdin=json.dumps(obj))
        name = f"kubernetes.default.svc.{net.CLUSTER_DOMAIN}"

        def answers() -> bool:
            try:
                return dns_query(net.DNS_SERVICE_IP, name, 0.5) == [net.KUBERNETES_SERVICE_IP]
            except OSError:
                return False

        self._wait("CoreDNS behind the kube-dns Service", answers, 90, "kubelet")

    def _start_kube_router(self) -> None:
        """kube-router's NetworkPolicy controller only (no routing, no service proxy, no CNI)."""
        argv = [
            self._bin("kube-router"),
            "--run-firewall=true",
            "--run-router=false",
            "--run-service-proxy=false",
            "--run-loadbalancer=false",
            "--enable-cni=false",
            "--enable-ipv6=false",
            f"--kubeconfig={self.workdir / 'pki' / 'admin.kubeconfig'}",
            f"--hostname-override={self.name}",
            f"--service-cluster-ip-range={net.SERVICE_CIDR}",
            "--health-port=0",
            "--metrics-port=0",
            "--v=1",
        ]
        self._spawn("kube-router", argv)
        log_file = self.logs / "kube-router.log"

        def synced() -> bool:
            return "sync iptables took" in log_file.read_text(errors="replace")

        self._wait("kube-router's first NetworkPolicy sync", synced, 60, "kube-router")

    def _start_metrics_server(self) -> None:
        """metrics-server beside the kubelet, behind the aggregation layer."""
        pki = self.workdir / "pki"
        ca = self.plane.pki_dir
        self._spawn(metrics_server.NAME, metrics_server.argv(self._bin("metrics-server"), pki, ca))
        self.kubectl("apply", "-f", "-", stdin=metrics_server.registration(ca))
        # The first scrape comes one resolution after the start.
        self._wait(
            "the Metrics API to serve the node's usage",
            lambda: metrics_server.node_metrics_served(self.kubectl),
            90,
            metrics_server.NAME,
        )

    # --- volumes --------------------------------------------------------------------------
    def add_volume(self, namespace: str, claim: str, size: str = "10Gi") -> Path:
        """A local PersistentVolume on the node, pre-bound to `namespace/claim` (what a
        provisioner would create); returns its folder."""
        path = self.volumes / f"{namespace}-{claim}"
        path.mkdir(parents=True, exist_ok=True)
        # The pod's user is not known here (fsGroup is applied to local volumes by kubelet).
        path.chmod(0o777)
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{namespace}-{claim}", "labels": {"mlstack-e2e/node": "true"}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "volumeMode": "Filesystem",
                "local": {"path": str(path)},
                "claimRef": {"namespace": namespace, "name": claim},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [self.name],
                                    }
                                ]
                            }
                        ]
                    }
                },
            },
        }
        self.kubectl("apply", "-f", "-", stdin=json.dumps(pv))
        return path

    # --- down -----------------------------------------------------------------------------
    def down(self, keep_logs: bool = False) -> list[str]:
        """Remove everything `up` made, whatever state it is in; return what could not be
        removed (empty when the machine is clean). `keep_logs` leaves the processes' logs."""
        if not self.state_file.exists():
            return self.leftovers()
        state = self._state()
        steps = (
            self._drain,
            lambda: self._stop(metrics_server.NAME),
            lambda: self._stop("kube-router"),
            self._stop_kube_proxy,
            lambda: self._stop("kubelet", grace=20),
            self._remove_containers,
            lambda: self._stop("containerd"),
            self._stop_shims,
            lambda: self._stop("api-server-forward"),
            self._unmount,
            lambda: self._remove_chains(state),
            lambda: self._remove_ipsets(state),
            lambda: self._remove_nft(state),
            self._remove_links,
            lambda: self._restore_sysctls(state),
            self._remove_cgroups,
            lambda: self._remove_host_files(state),
        )
        for step in steps:
            try:
                step()
            except Exception as err:  # every step runs, whatever failed before it
                log(f"down: {getattr(step, '__name__', 'step')}: {err}")
        left = self.leftovers()
        if not left:
            for entry in self.workdir.iterdir():
                if not (keep_logs and entry == self.logs):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()
            if not keep_logs:
                self.workdir.rmdir()
        else:
            log("down left: " + "; ".join(left))
        return left

    def _api_up(self) -> bool:
        return self.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode == 0

    def _drain(self) -> None:
        """Delete the node's pods through the API while kubelet runs: kubelet stops them, and
        the CNI plugins tear their networks down (veths, addresses, per-pod rules)."""
        if not (self._alive("kubelet") and self._api_up()):
            return
        self.kubectl("cordon", self.name, check=False)
        self.kubectl(
            "delete", "pods", "--all-namespaces", "--field-selector", f"spec.nodeName={self.name}",
            "--grace-period=2", "--wait=true", "--timeout=60s", check=False, timeout=90,
        )  # fmt: skip
        self.kubectl("delete", "node", self.name, "--wait=false", check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._sandboxes_running():
            time.sleep(0.5)

    def _sandboxes_running(self) -> bool:
        if not self.containerd_socket.exists():
            return False
        return bool(self.ctr("tasks", "ls", "-q", check=False).stdout.strip())

    def _stop_kube_proxy(self) -> None:
        self._stop("kube-proxy")
        if (self.bin_dir / "kube-proxy").exists():
            # Removes every rule and chain kube-proxy made, in both iptables and nftables.
            run(self._bin("kube-proxy"), "--cleanup", "--v=0", check=False, timeout=60)

    def _remove_containers(self) -> None:
        """Whatever kubelet left running: kill its tasks, drop its network namespaces."""
        if not self.containerd_socket.exists() or not self._alive("containerd"):
            return
        netns: set[str] = set()
        for cid in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            info = self.ctr("containers", "info", cid, check=False).stdout
            with contextlib.suppress(ValueError, KeyError, TypeError):
                spec = json.loads(info)["Spec"]
                for ns in spec["linux"]["namespaces"]:
                    if ns.get("type") == "network" and ns.get("path"):
                        netns.add(ns["path"])
        for tid in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", tid, check=False)
        time.sleep(0.5)
        for tid in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "rm", "-f", tid, check=False)
        for cid in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "rm", cid, check=False)
        for path in sorted(netns):
            run("umount", path, check=False)
            with contextlib.suppress(OSError):
                Path(path).unlink()

    def _our_processes(self) -> list[int]:
        """Processes whose command line names this node's folder (containerd's shims)."""
        needle = str(self.workdir).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if needle in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
        return pids

    def _stop_shims(self) -> None:
        process.stop_all(self._our_processes(), grace=5)

    def _unmount(self) -> None:
        for point in mounts_under(self.workdir):
            if run("umount", str(point), check=False).returncode != 0:
                run("umount", "-l", str(point), check=False)

    def _our_chains(self) -> set[str]:
        found = set()
        for tool in ("iptables", "ip6tables"):
            for table in IPTABLES_TABLES:
                out = run(f"{tool}-save", "-t", table, check=False).stdout
                for line in out.splitlines():
                    if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES):
                        found.add(f"{tool} {table} {line[1:].split()[0]}")
        return found

    def _remove_chains(self, state: dict[str, Any]) -> None:
        """The KUBE-* and CNI-* chains that appeared since `up` (kubelet's canaries and
        firewall, the CNI firewall and portmap plugins'), and every rule that jumps to them."""
        before = set(state.get("chains", []))
        doomed = sorted(self._our_chains() - before)
        for tool, table in {tuple(c.split()[:2]) for c in doomed}:
            names = {c.split()[2] for c in doomed if c.startswith(f"{tool} {table} ")}
            rules = run(f"{tool}-save", "-t", table, check=False).stdout.splitlines()
            for rule in rules:
                if not rule.startswith("-A "):
                    continue
                parts = rule.split()
                target = parts[parts.index("-j") + 1] if "-j" in parts else ""
                if parts[1] not in names and target in names:
                    run(tool, "-t", table, "-D", *shlex.split(rule[3:]), check=False)
            for name in names:
                run(tool, "-t", table, "-F", name, check=False)
            for name in names:
                run(tool, "-t", table, "-X", name, check=False)

    @staticmethod
    def _ipsets() -> list[str]:
        return run("ipset", "list", "-n", check=False).stdout.split()

    def _remove_ipsets(self, state: dict[str, Any]) -> None:
        """The ipsets that appeared since `up` (kube-router's), once no rule refers to them."""
        for name in set(self._ipsets()) - set(state.get("ipsets", [])):
            run("ipset", "destroy", name, check=False)

    @staticmethod
    def _nft_tables() -> list[str]:
        out = run("nft", "list", "tables", check=False).stdout
        return [
            " ".join(line.split()[1:]) for line in out.splitlines() if line.startswith("table ")
        ]

    def _remove_nft(self, state: dict[str, Any]) -> None:
        run("nft", "delete", "table", "inet", GUARD_TABLE, check=False)
        before = set(state.get("nft_tables", []))
        for table in self._nft_tables():
            if table in before:
                continue
            family, name = table.split()
            if name in IPTABLES_NFT_TABLES:
                listing = json.loads(run("nft", "-j", "list", "table", family, name).stdout)
                if any("rule" in item for item in listing["nftables"]):
                    continue
            if name in IPTABLES_NFT_TABLES or name.startswith(("kube", "cni")):
                run("nft", "delete", "table", family, name, check=False)

    def _remove_links(self) -> None:
        for link in (net.POD_BRIDGE, net.NODE_BRIDGE):
            if Path(f"/sys/class/net/{link}").exists():
                run("ip", "link", "delete", link, check=False)

    def _restore_sysctls(self, state: dict[str, Any]) -> None:
        # A Docker engine started meanwhile relies on forwarding, which it turned on too.
        docker = process_running("dockerd")
        for key, value in state.get("sysctls", {}).items():
            path = sysctl_path(key)
            if docker and key == "net/ipv4/ip_forward":
                continue
            if path.exists() and path.read_text().strip() != value:
                path.write_text(value)

    def _remove_cgroups(self) -> None:
        for hierarchy in self._cgroup_hierarchies():
            root = hierarchy / CGROUP_ROOT
            if not root.exists():
                continue
            groups = sorted(
                (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
            )
            for group in [*groups, root]:
                with contextlib.suppress(OSError):
                    group.rmdir()

    def _remove_host_files(self, state: dict[str, Any]) -> None:
        logs = Path("/var/log/containers")
        if logs.is_dir():
            for link in logs.iterdir():
                with contextlib.suppress(OSError):
                    if link.is_symlink() and str(self.pod_logs) in os.readlink(link):
                        link.unlink()
        if "/var/lib/kubelet" in state.get("absent_dirs", []):
            with contextlib.suppress(OSError):
                Path("/var/lib/kubelet/device-plugins/kubelet.sock").unlink()
        results = Path("/var/lib/cni/results")
        if results.is_dir():
            # libcni's result cache: our network's, and the loopback ones of our sandboxes.
            sandboxes = (
                self.workdir / "containerd" / "root" / "io.containerd.grpc.v1.cri" / "sandboxes"
            )
            ids = [d.name for d in sandboxes.iterdir()] if sandboxes.is_dir() else []
            for f in results.iterdir():
                if f.name.startswith(f"{net.CNI_NETWORK}-") or any(i in f.name for i in ids):
                    f.unlink()
        for d in state.get("absent_dirs", []):
            with contextlib.suppress(OSError):
                Path(d).rmdir()

    def leftovers(self) -> list[str]:
        """What of this node is still on the machine (processes, mounts, links, rules, cgroups)."""
        left = []
        state = self._state()
        for name, pid in state["pids"].items():
            if process.alive(int(pid)):
                left.append(f"process {name} ({pid})")
        left += [f"process {pid}" for pid in self._our_processes()]
        left += [f"mount {p}" for p in mounts_under(self.workdir)]
        left += [
            f"link {link}"
            for link in (net.POD_BRIDGE, net.NODE_BRIDGE)
            if Path(f"/sys/class/net/{link}").exists()
        ]
        if f"inet {GUARD_TABLE}" in self._nft_tables():
            left.append(f"nft table inet {GUARD_TABLE}")
        left += [f"chain {c}" for c in sorted(self._our_chains() - set(state.get("chains", [])))]
        left += [f"ipset {i}" for i in sorted(set(self._ipsets()) - set(state.get("ipsets", [])))]
        left += [
            f"cgroup {h / CGROUP_ROOT}"
            for h in self._cgroup_hierarchies()
            if (h / CGROUP_ROOT).exists()
        ]
        return left

    # --- checks ---------------------------------------------------------------------------
    def probe_pod(
        self, name: str, namespace: str, labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """A pod of the probe image on this node under the `restricted` Pod Security level:
        non-root, read-only root, no capabilities, RuntimeDefault seccomp; an HTTP server on 8080
        with a readiness probe."""
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": name}},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": self.name},
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 2,
                "securityContext": RESTRICTED_POD,
                "containers": [
                    {
                        "name": "probe",
                        "image": PROBE_IMAGE,
                        "imagePullPolicy": "Never",
                        "args": ["serve", ":8080"],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {
                            "httpGet": {"path": "/", "port": 8080},
                            "periodSeconds": 1,
                        },
                        "resources": {
                            "requests": {"cpu": "10m", "memory": "16Mi"},
                            "limits": {"memory": "64Mi"},
                        },
                        "securityContext": RESTRICTED_CONTAINER,
                    }
                ],
            },
        }

    def exec_probe(
        self, namespace: str, pod: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `e2e-probe ARGS` in a probe pod (through the API server and the kubelet)."""
        return self.kubectl(
            "exec", "-n", namespace, pod, "--", "/e2e-probe", *args, check=check, timeout=60
        )

    def check_egress_refused(self, namespace: str, pod: str) -> str:
        """Prove that a pod's connection to an outside address is refused, by the egress guard:
        the probe pod dials the machine's default gateway; its connection must be refused and
        the guard's counters must have moved. Returns the probe's output."""
        gateway = ""
        for route in json.loads(run("ip", "-j", "-4", "route", "show", "default").stdout):
            gateway = route.get("gateway", "")
        target = gateway or "192.0.2.1"
        before = self.egress_rejected()
        proc = self.exec_probe(namespace, pod, "dial", f"{target}:443", check=False)
        after = self.egress_rejected()
        if proc.returncode != 3 or after <= before:
            raise AssertionError(
                f"a pod's connection to {target}:443 was not refused by the egress guard "
                f"(exit {proc.returncode}, guard counters {before} -> {after}): {proc.stdout}"
            )
        return proc.stdout.strip()

    def check(self, namespace: str = "mlstack-e2e-node-check") -> dict[str, float]:
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
        self.kubectl("apply", "-f", "-", stdin=json.dumps(ns))
        try:
            self.kubectl("apply", "-f", "-", stdin=json.dumps(service))
            start = time.monotonic()
            names = ["web", "client"] + (["other"] if self.network_policy else [])
            for name in names:
                pod = self.probe_pod(name, namespace, {"app": name})
                self.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
            self.kubectl(
                "wait", "-n", namespace, "--for=condition=Ready",
                *[f"pod/{n}" for n in names], "--timeout=120s", timeout=150,
            )  # fmt: skip
            timings["pods_ready_s"] = time.monotonic() - start
            fqdn = f"web.{namespace}.svc.{net.CLUSTER_DOMAIN}"
            cluster_ip = self.kubectl(
                "get", "-n", namespace, "service", "web", "-o", "jsonpath={.spec.clusterIP}"
            ).stdout.strip()
            resolved = self.exec_probe(namespace, "client", "lookup", fqdn).stdout.split()
            if resolved != [cluster_ip]:
                raise AssertionError(f"{fqdn} resolved to {resolved}, not {cluster_ip}")
            api = f"kubernetes.default.svc.{net.CLUSTER_DOMAIN}:443"
            self.exec_probe(namespace, "client", "dial", api)  # the API server, from a pod
            # kube-proxy applies new endpoints within about a second of the pods being Ready.
            self._until(
                "http://web/ to answer the client pod",
                lambda: self._get(namespace, "client", "http://web/") == "web",
            )
            lb = self._wait_load_balancer(namespace, "web")
            with contextlib.closing(socket.create_connection((lb, 80), timeout=5)) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                reply = s.recv(4096)
            if not reply.startswith(b"HTTP/1.0 200") or not reply.rstrip().endswith(b"web"):
                raise AssertionError(f"the LoadBalancer address {lb} answered {reply!r}")
            self.check_egress_refused(namespace, "client")
            if self.network_policy:
                timings["network_policy_s"] = self.check_network_policy(namespace)
        finally:
            self.kubectl("delete", "namespace", namespace, "--wait=true", check=False, timeout=120)
        return timings

    def _get(self, namespace: str, pod: str, url: str) -> str:
        """The body `url` answers a probe pod with, or "" when it does not answer 200."""
        proc = self.exec_probe(namespace, pod, "get", url, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    @staticmethod
    def _until(what: str, ready: Any, timeout: float = 15) -> float:
        start = time.monotonic()
        while not ready():
            if time.monotonic() - start > timeout:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.2)
        return time.monotonic() - start

    def check_network_policy(self, namespace: str) -> float:
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
        web_ip = self.kubectl(
            "get", "-n", namespace, "pod", "web", "-o", "jsonpath={.status.podIP}"
        ).stdout.strip()
        self._until(
            "the other pod to reach web", lambda: self._get(namespace, "other", "http://web/")
        )
        self.kubectl("apply", "-f", "-", stdin=json.dumps(policy))
        enforced = self._until(
            "the NetworkPolicy to refuse the other pod",
            lambda: not self._get(namespace, "other", f"http://{web_ip}:8080/"),
        )
        for url in ("http://web/", f"http://{web_ip}:8080/"):
            if self._get(namespace, "other", url):
                raise AssertionError(f"the NetworkPolicy let the other pod reach {url}")
            if self._get(namespace, "client", url) != "web":
                raise AssertionError(f"the NetworkPolicy refused the client pod {url}")
        return enforced

    def _wait_load_balancer(self, namespace: str, service: str) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ip = self.kubectl(
                "get", "-n", namespace, "service", service,
                "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ).stdout.strip()  # fmt: skip
            if ip:
                return ip
            time.sleep(0.2)
        raise AssertionError(f"{namespace}/{service} got no LoadBalancer ingress address")


@contextlib.contextmanager
def running_node(plane: ControlPlane, registries: Sequence[str] = ()) -> Iterator[Node]:
    """A node joined to `plane` for the duration of the block, removed afterwards."""
    node = Node(plane, registries)
    node.up()
    try:
        yield node
    finally:
        node.down()


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["packages"]:
        print(" ".join(missing_packages()))
        return 0
    if len(argv) < 2 or argv[0] not in ("up", "down", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    plane = ControlPlane(bin_dir=toolchain_bin(), workdir=Path(argv[1]).resolve())
    node = Node(plane, registries=argv[2:])
    if argv[0] == "up":
        node.up()
        print(json.dumps(node.timings))
    elif argv[0] == "check":
        print(json.dumps(node.check()))
    else:
        left = node.down()
        if left:
            print("\n".join(left), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
