"""A throwaway Kubernetes control plane for the real-engine e2e suite.

kwokctl (`--runtime binary`) runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler
and the KWOK controller as local processes from the binaries that `e2e/toolchain/build.sh` built:
127.0.0.1 only, ports chosen free, every file in one temporary folder. A Stage of our own gives
LoadBalancer Services an ingress address, and the API server runs with authorization and
admission on (so Pod Security admission enforces the namespace's `restricted` level). KWOK fake
nodes (`fake_nodes`, two by default) make pods "run" without a container; with `fake_nodes=0`
there are none, and a real node (below) runs every pod.

A real node (e2e/node/) can join: for it, the components are patched (kwokctl's
`componentsPatches`), harmless while only fake nodes exist:
- the KWOK controller manages only nodes annotated `kwok.x-k8s.io/node=fake` (kwokctl's binary
  runtime makes it manage every node, which would take the real kubelet's node over);
- the API server uses the service range of e2e/addresses.py, advertises the node address (the
  `kubernetes` Service's endpoint; the node forwards that address to 127.0.0.1, where the API
  server listens), has the node address and the `kubernetes` ClusterIP in its certificate, talks to
  kubelets with the cluster's admin client certificate (the kubelet authorizes it through the API
  server) and by their InternalIP (not by looking node names up in the machine's DNS), and has
  the aggregation layer configured for the node's metrics-server (request-header authentication
  from kwokctl's proxy client certificate, requests routed to the APIService's endpoint).

    python -m e2e.controlplane up DIR     # start; prints the kubeconfig path
    python -m e2e.controlplane down DIR   # stop everything started in DIR
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from e2e import addresses, process
from e2e.workdir import InWorkdir
from harness.poll import wait_until
from harness.ports import free_port

E2E_DIR: Final = Path(__file__).resolve().parent
TOOLCHAIN: Final = E2E_DIR / "toolchain"
STAGES: Final = E2E_DIR / "stages"
CLUSTER_NAME: Final = "mlstack-e2e"
# The `app.kubernetes.io/part-of` label of what the harness itself adds to the cluster (the
# stack's own objects are `mlstack`'s).
PART_OF: Final = "mlstack-e2e"
NODES: Final = 2
# The common name of kwokctl's admin certificate (sigs.k8s.io/kwok pkg/kwokctl/pki DefaultUser),
# which the API server also presents as its proxy client (--proxy-client-cert-file).
KWOKCTL_ADMIN: Final = "kwok-admin"
# The file in a control plane's folder naming the toolchain bin folder its `start` ran from: what
# its teardown runs (`teardown_bin`), in another process too.
BIN_RECORD: Final = "toolchain-bin"
# What a teardown runs of the toolchain: kwokctl (`delete cluster`) and kubectl (the node's drain).
TEARDOWN_TOOLS: Final = ("kwokctl", "kubectl")


def read_versions(path: Path = TOOLCHAIN / "versions.env") -> dict[str, str]:
    """The pinned versions (`KEY=value` lines of versions.env)."""
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            versions[key.strip()] = value.strip()
    return versions


def toolchain_bin(*tools: str, build: bool = True) -> Path:
    """The toolchain's bin folder, with `tools` (every tool when none is named) in it: whatever
    is missing is built (nothing, when the cache is warm), or with `build` False is an error
    (subprocess.CalledProcessError; build.sh's MLSTACK_E2E_NO_BUILD)."""
    env = None if build else {**os.environ, "MLSTACK_E2E_NO_BUILD": "1"}
    # build.sh's progress goes to stderr, left to the terminal: a build takes minutes.
    out = subprocess.run(
        ["bash", str(TOOLCHAIN / "build.sh"), *tools],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def teardown_bin(workdir: Path) -> Path:
    """The bin folder to stop the control plane in `workdir` with, and the node on it: the one
    its `start` recorded there while it still holds kwokctl and kubectl, else the toolchain's as
    it is (`toolchain_bin` of kwok and kubectl, building nothing). A teardown never builds: with
    a cold or changed toolchain cache, a build would take an hour before anything stops, and
    fail where Go is not on PATH (under sudo). Where neither holds them, the recorded folder all
    the same: what needs them (kwokctl's delete, the node's drain) fails as a step, and the
    rest (the recorded processes, the node's kubelet, containerd, rules and guard) still goes."""
    recorded = workdir / "bin"
    with contextlib.suppress(OSError):
        recorded = Path((workdir / BIN_RECORD).read_text().strip())
        if all((recorded / tool).exists() for tool in TEARDOWN_TOOLS):
            return recorded
    try:
        return toolchain_bin("kwok", "kubectl", build=False)
    except subprocess.CalledProcessError:
        print(
            f"e2e: no kwokctl or kubectl in {recorded} or the toolchain: stopping what goes "
            "without them",
            file=sys.stderr,
        )
        return recorded


@dataclass
class ControlPlane:
    """One kwokctl cluster living entirely in `workdir`."""

    bin_dir: Path
    workdir: Path
    name: str = CLUSTER_NAME
    # KWOK fake nodes to add; 0 when a real node (e2e/node/) is to run every pod.
    fake_nodes: int = NODES
    pids: set[int] = field(default_factory=set)

    kubeconfig = InWorkdir("kubeconfig.yaml")
    bin_record = InWorkdir(BIN_RECORD)

    @property
    def context(self) -> str:
        return f"kwok-{self.name}"

    @property
    def cluster_dir(self) -> Path:
        return self.workdir / "kwok" / "clusters" / self.name

    @property
    def pki_dir(self) -> Path:
        """kwokctl's CA (`ca.crt`, `ca.key`) and admin client/serving certificate (`admin.*`)."""
        return self.cluster_dir / "pki"

    def api_server_port(self) -> int:
        """The API server's port on 127.0.0.1 (from kwokctl's kubeconfig)."""
        server = self.kubectl(
            "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"
        ).stdout.strip()
        return int(server.rsplit(":", 1)[1])

    @property
    def stages_dir(self) -> Path:
        return self.bin_dir.parent / "stages"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KWOK_WORKDIR"] = str(self.workdir / "kwok")
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def kwokctl(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return process.run(
            str(self.bin_dir / "kwokctl"), "--name", self.name, *args,
            timeout=timeout, env=self.env(),
        )  # fmt: skip

    def kubectl_argv(self, *args: str) -> list[str]:
        """The command line of `kubectl args` against this cluster (its kubeconfig and context)."""
        return [
            str(self.bin_dir / "kubectl"),
            "--kubeconfig",
            str(self.kubeconfig),
            "--context",
            self.context,
            *args,
        ]

    def kubectl(
        self, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return process.run(*self.kubectl_argv(*args), check=check, stdin=stdin, timeout=timeout)

    def load_balancer_address(self, namespace: str, service: str) -> str:
        """The Service's LoadBalancer ingress IP ("" while it has none)."""
        return self.kubectl(
            "get", "service", service, "-n", namespace,
            "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ).stdout.strip()  # fmt: skip

    def get_json(self, *args: str) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return data

    def _config(self, versions: dict[str, str]) -> Path:
        """kwokctl's configuration: 127.0.0.1 only, the component patches a real node needs (see
        the module's docstring), plus KWOK's default node and pod stages and our LoadBalancer
        stage (naming any Stage replaces the defaults, so all are listed)."""
        pki = self.pki_dir
        config = {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokctlConfiguration",
            "options": {
                "bindAddress": "127.0.0.1",
                "runtime": "binary",
                "kubeVersion": versions["KUBE_VERSION"],
                "kubeApiserverCertSANs": [
                    addresses.NODE_ADDRESS,
                    addresses.KUBERNETES_SERVICE_IP,
                ],
            },
            "componentsPatches": [
                {
                    "name": "kube-apiserver",
                    "extraArgs": [
                        {"key": "service-cluster-ip-range", "value": addresses.SERVICE_CIDR},
                        {"key": "advertise-address", "value": addresses.NODE_ADDRESS},
                        {"key": "kubelet-client-certificate", "value": str(pki / "admin.crt")},
                        {"key": "kubelet-client-key", "value": str(pki / "admin.key")},
                        {"key": "kubelet-preferred-address-types", "value": "InternalIP"},
                        # The aggregation layer, for the real node's metrics-server (the
                        # `v1beta1.metrics.k8s.io` APIService): kwokctl already proxies with its
                        # admin certificate; metrics-server trusts the user it names in these
                        # headers only from that certificate. Aggregated requests go to the
                        # APIService's endpoint (the node address), not to a ClusterIP: the API
                        # server runs outside the node's Service routing.
                        {"key": "requestheader-client-ca-file", "value": str(pki / "ca.crt")},
                        {"key": "requestheader-allowed-names", "value": KWOKCTL_ADMIN},
                        {"key": "requestheader-username-headers", "value": "X-Remote-User"},
                        {"key": "requestheader-group-headers", "value": "X-Remote-Group"},
                        {"key": "requestheader-extra-headers-prefix", "value": "X-Remote-Extra-"},
                        {"key": "enable-aggregator-routing", "value": "true"},
                    ],
                },
                {
                    "name": "kube-controller-manager",
                    "extraArgs": [
                        # HorizontalPodAutoscalers looked at every few seconds rather than every
                        # 15: the suite watches the model scale out and back in.
                        {"key": "horizontal-pod-autoscaler-sync-period", "value": "5s"},
                    ],
                },
                {
                    "name": "kwok-controller",
                    "extraArgs": [
                        {"key": "manage-all-nodes", "value": "false", "override": True},
                        {
                            "key": "manage-nodes-with-annotation-selector",
                            "value": "kwok.x-k8s.io/node=fake",
                        },
                    ],
                },
            ],
        }
        docs = [json.dumps(config, indent=1)]
        stage_files = sorted(self.stages_dir.glob("*.yaml")) + sorted(STAGES.glob("*.yaml"))
        if not any(f.name == "pod-ready.yaml" for f in stage_files):
            raise RuntimeError(f"KWOK's default stages are missing from {self.stages_dir}")
        docs += [f.read_text().strip() for f in stage_files]
        path = self.workdir / "kwokctl.yaml"
        path.write_text("\n---\n".join(docs) + "\n")
        return path

    def start(self) -> None:
        versions = read_versions()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bin_record.write_text(f"{self.bin_dir}\n")
        config = self._config(versions)
        b = self.bin_dir
        try:
            self.kwokctl(
                "create",
                "cluster",
                "--config",
                str(config),
                "--runtime",
                "binary",
                "--kube-apiserver-port",
                str(free_port()),
                "--kube-authorization=true",
                "--kube-admission=true",
                "--kube-apiserver-binary",
                str(b / "kube-apiserver"),
                "--kube-controller-manager-binary",
                str(b / "kube-controller-manager"),
                "--kube-scheduler-binary",
                str(b / "kube-scheduler"),
                "--etcd-binary",
                str(b / "etcd"),
                "--kwok-controller-binary",
                str(b / "kwok"),
                "--kubeconfig",
                str(self.kubeconfig),
                "--wait",
                "2m",
                "--quiet-pull",
            )
        finally:
            self._record_pids()
        if self.fake_nodes:
            self.kwokctl("scale", "node", "--replicas", str(self.fake_nodes))
            self._record_pids()
            self.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=120s")
        self._wait_for_default_service_account()
        self._check_pod_security()

    def _check_pod_security(self) -> None:
        """Pod Security admission must be on: a privileged pod in a `restricted` namespace is
        refused (server-side dry run, nothing is created)."""
        probe = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "pod-security-probe", "namespace": "default"},
            "spec": {
                "containers": [
                    {
                        "name": "probe",
                        "image": "registry.example/probe:1",
                        "securityContext": {"privileged": True},
                    }
                ]
            },
        }
        self.kubectl(
            "label", "namespace", "default", "pod-security.kubernetes.io/enforce=restricted"
        )
        try:
            result = self.kubectl(
                "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(probe), check=False
            )
        finally:
            self.kubectl("label", "namespace", "default", "pod-security.kubernetes.io/enforce-")
        if result.returncode == 0 or "PodSecurity" not in result.stderr:
            raise RuntimeError(
                "Pod Security admission is not enforcing on the e2e API server:\n"
                f"{result.stdout}{result.stderr}"
            )

    def _wait_for_default_service_account(self) -> None:
        def found() -> bool:
            return self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0

        wait_until(found, "the default ServiceAccount", 60, interval=0.5)

    def _record_pids(self) -> None:
        for pidfile in self.cluster_dir.glob("pids/*.pid"):
            pid = process.read_pid(pidfile)
            if pid is not None:
                self.pids.add(pid)

    def stop(self) -> None:
        """Stop every process of the cluster, whatever state it is in. A recorded pid is
        signalled only while it runs one of the cluster's binaries, which kwokctl copies into
        the cluster's folder: never another program the kernel has given that pid since (the
        component exited, or the machine restarted). kwokctl kills by its pid files alone, so
        the pid file of such a pid is removed before `kwokctl delete cluster` reads it."""
        marker = str(self.cluster_dir / "bin")
        for pidfile in self.cluster_dir.glob("pids/*.pid"):
            pid = process.read_pid(pidfile)
            if pid is not None and process.owned(pid, marker):
                self.pids.add(pid)
            else:
                pidfile.unlink(missing_ok=True)
        if self.cluster_dir.exists():
            try:
                self.kwokctl("delete", "cluster", timeout=120)
            # OSError: no kwokctl (a toolchain cache removed since); the pids still go below.
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
                print(f"e2e: kwokctl delete cluster: {err}", file=sys.stderr)
        process.stop_all(sorted(p for p in self.pids if process.owned(p, marker)), grace=15)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print(__doc__, file=sys.stderr)
        return 2
    workdir = Path(argv[1]).resolve()
    bin_dir = toolchain_bin() if argv[0] == "up" else teardown_bin(workdir)
    plane = ControlPlane(bin_dir=bin_dir, workdir=workdir)
    if argv[0] == "up":
        plane.start()
        print(plane.kubeconfig)
    else:
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
