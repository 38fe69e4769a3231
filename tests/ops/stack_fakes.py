"""The stand-ins the tests of tools/stack.py and of the database tools
(tools/database_switchover.py, tools/database_backup.py) run against: a `pulumi` that answers the
stack's config and outputs (those of each kind of cluster among them), and
tests/ops/fake_kubectl.py answering for a Patroni cluster (the StatefulSet, each pod's role label
and the Service's endpoints, one state after another once patronictl accepted the switchover, and
what patronictl prints). Both log every call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from components import database, stack_file
from components.labels import selector
from harness.make import make_env, run_make
from harness.program import ROOT
from tests.stand_ins import PULUMI_CALLS, logged_calls, pulumi_stand_in, stand_in

NAMESPACE = "mlstack-prod"
SELECTOR = selector(database.NAME, "prod")
FAKE_KUBECTL = Path(__file__).with_name("fake_kubectl.py")

# The stack's config and outputs (stack.json, which `Fakes.stack` writes): all the tools read.
STACK_ANSWERS = """\
stack = json.loads((here / "stack.json").read_text())
if args[1:3] == ["config", "--json"]:
    print(json.dumps(stack["config"]))
elif args[1:4] == ["stack", "output", "--json"]:
    print(json.dumps(stack["outputs"]))
else:
    sys.exit("fake pulumi: unexpected " + " ".join(args))
"""

ACCEPTED = (
    'Current cluster topology\n...\n2026-01-01 00:00:00.00000 Successfully switched over to "x"'
)


def roles(*labels: str) -> dict[str, str]:
    """`roles("primary", "replica")`: database-0 primary, database-1 replica."""
    return {f"database-{index}": label for index, label in enumerate(labels)}


def state(labels: dict[str, str], **endpoints: bool) -> dict[str, Any]:
    """The pods' role labels and the Service's endpoints (`database_1=True`: ready)."""
    return {"roles": labels, "endpoints": {k.replace("_", "-"): v for k, v in endpoints.items()}}


BEFORE = state(roles("primary", "replica", "replica"), database_0=True)
ON_2 = state(roles("replica", "replica", "primary"), database_2=True)

# A credential no error may show: the token in the EKS kubeconfig below.
EKS_TOKEN = "k8s-aws-v1.c2VjcmV0LXRva2Vu"
# The `kubeconfig` output of each kind of cluster the program makes, and the stack file that has
# that kind (its `mlstack:cluster` is the stack's config): k3s's YAML; the YAML of
# components/cluster/gke.py; pulumi-eks's `kubeconfigJson`, one line of JSON.
MADE_CLUSTERS: dict[str, tuple[str, str]] = {
    "local": ("dev", """\
apiVersion: v1
kind: Config
clusters:
- name: default
  cluster: {server: "https://127.0.0.1:6443", certificate-authority-data: Q0E=}
users:
- name: default
  user: {client-certificate-data: Q0VSVA==, client-key-data: S0VZ}
contexts:
- name: default
  context: {cluster: default, user: default}
current-context: default
"""),
    "gke": ("prod", """\
apiVersion: v1
kind: Config
clusters:
- name: mlstack-prod
  cluster: {server: "https://203.0.113.7", certificate-authority-data: Q0E=}
contexts:
- name: mlstack-prod
  context: {cluster: mlstack-prod, user: mlstack-prod}
current-context: mlstack-prod
users:
- name: mlstack-prod
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: gke-gcloud-auth-plugin
      provideClusterInfo: true
"""),
    "eks": ("staging", json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kubernetes", "cluster": {
            "server": "https://0123456789ABCDEF.gr7.eu-west-1.eks.amazonaws.com",
            "certificate-authority-data": "Q0E="}}],
        "contexts": [{"name": "aws", "context": {"cluster": "kubernetes", "user": "aws"}}],
        "current-context": "aws",
        "users": [{"name": "aws", "user": {"token": EKS_TOKEN}}],
    }, separators=(",", ":"))),
}  # fmt: skip


def made_cluster_config(kind: str) -> dict[str, Any]:
    """`pulumi config --json`'s cluster of a stack on a cluster of `kind` the program made: the
    one of the stack file that has that kind (MADE_CLUSTERS)."""
    cluster = stack_file.read_config(MADE_CLUSTERS[kind][0])["mlstack:cluster"]
    return {"mlstack:cluster": {"objectValue": cluster}}


class Fakes:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.kubeconfig = folder / "kubeconfig.yaml"
        self.kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
        pulumi_stand_in(folder, STACK_ANSWERS)
        stand_in(folder, "kubectl", f"#!{sys.executable}\n" + FAKE_KUBECTL.read_text())
        self.stack(
            config={"mlstack:cluster": {"objectValue": {
                "provider": "existing", "context": "e2e", "kubeconfig": str(self.kubeconfig)}}},
            outputs={"namespace": NAMESPACE, "kubeconfig": str(self.kubeconfig)},
        )  # fmt: skip
        self.cluster([BEFORE, ON_2])

    def stack(self, config: dict[str, Any], outputs: dict[str, Any]) -> None:
        (self.folder / "stack.json").write_text(json.dumps({"config": config, "outputs": outputs}))

    def configure(self, key: str, value: dict[str, Any]) -> None:
        """The stack's `mlstack:<key>` set to the object `value`, the rest as it was."""
        stack = json.loads((self.folder / "stack.json").read_text())
        stack["config"][f"mlstack:{key}"] = {"objectValue": value}
        self.stack(stack["config"], stack["outputs"])

    def made_cluster(self, kind: str) -> str:
        """The stack on a cluster of `kind` the program made (MADE_CLUSTERS): that kind's
        config, and its kubeconfig as the output, which this returns."""
        kubeconfig = MADE_CLUSTERS[kind][1]
        self.stack(made_cluster_config(kind), {"namespace": NAMESPACE, "kubeconfig": kubeconfig})
        return kubeconfig

    def cluster(
        self,
        states: list[dict[str, Any]],
        *,
        replicas: int | None = 3,
        patronictl: tuple[int, str, str] = (0, ACCEPTED, ""),
        target_ref: bool = True,
    ) -> None:
        """`states[0]` until patronictl accepts, then each next one per look, the last kept."""
        exit_code, stdout, stderr = patronictl
        switched = {"exit": exit_code, "stdout": f"{stdout}\n", "stderr": f"{stderr}\n"}
        self.write_cluster(
            phases={"running": states},
            replicas=replicas,
            target_ref=target_ref,
            exec={"patronictl": {"*": {**switched, "advances": True}}},
        )

    def write_cluster(self, **fields: Any) -> None:
        """cluster.json for fake_kubectl.py: `fields` over a running cluster of three that stays
        in its first state."""
        cluster = {
            "namespace": NAMESPACE, "selector": SELECTOR, "role_label": database.ROLE_LABEL,
            "replicas": 3, "phase": "running", "at": 0, "advancing": False, "target_ref": True,
            "containers": ["postgres", "backups"], "exec": {}, "configmaps": {}, **fields,
        }  # fmt: skip
        (self.folder / "cluster.json").write_text(json.dumps(cluster))

    def calls(self) -> list[dict[str, Any]]:
        return logged_calls(self.folder / "kubectl-calls.jsonl")

    def assert_every_call_on_the_stack(self) -> None:
        """The stack's kubeconfig file and context, in the stack's namespace, on every call."""
        flags = ["--kubeconfig", str(self.kubeconfig), "--context", "e2e", "--namespace", NAMESPACE]
        for call in self.calls():
            assert call["args"][:6] == flags

    def make(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        """`make *arguments STACK=dev` from the repository, on the fake Pulumi CLI."""
        # No backend of the caller's reaches this run.
        env = make_env("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE")
        return run_make(*arguments, "STACK=dev", f"PULUMI={self.folder / 'pulumi'}", env=env)

    def pulumi_calls(self) -> list[dict[str, Any]]:
        return logged_calls(self.folder / PULUMI_CALLS)

    def assert_dev_read_only_from_the_local_backend(self) -> None:
        """The Pulumi CLI asked for dev's config and outputs alone (no `stack select --create`,
        no config set), from the local file backend, with dev's empty passphrase."""
        calls = self.pulumi_calls()
        assert [call["args"][1:] for call in calls] == [
            ["config", "--json", "--stack", "dev"],
            ["stack", "output", "--json", "--show-secrets", "--stack", "dev"],
        ]
        for call in calls:
            assert call["PULUMI_BACKEND_URL"] == f"file://{ROOT}/.pulumi-local"
            assert call["PULUMI_CONFIG_PASSPHRASE"] == ""

    def commands(self) -> list[list[str]]:
        """Each kubectl call's command, after the cluster and namespace flags."""
        found = []
        for call in self.calls():
            args = call["args"]
            found.append(args[args.index("--namespace") + 2 :])
        return found

    def execs(self) -> list[list[str]]:
        return [command for command in self.commands() if command[0] == "exec"]

    def looks_after_exec(self) -> int:
        """How many times the tool looked at the endpoints once patronictl had run."""
        commands = self.commands()
        execs = [i for i, command in enumerate(commands) if command[0] == "exec"]
        if not execs:
            return 0
        return sum(1 for command in commands[execs[0] :] if command[1:2] == ["endpointslices"])
