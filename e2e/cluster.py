"""A real local cluster with the app deployed, left running: what `make e2e-cluster` brings up.

The same bring-up as the e2e suite's (`bring_up`, one ExitStack holding its teardown): the app's
images built and served by digest from a registry on 127.0.0.1 (e2e/images.py), the throwaway
control plane without fake nodes (e2e/controlplane.py), the real node with its egress guard and
NetworkPolicy enforcement (e2e/node/), the database claims bound to local volumes on it, and the
stack initialised in a workspace (e2e/workspace.py); here it is then deployed by the real
`pulumi up`, with the model autoscaled. Root only; nothing leaves the machine.

    python -m e2e.cluster up DIR [--database-replicas N]   # ends with three `export` lines:
                                                         # KUBECONFIG, gateway URL, API key
    python -m e2e.cluster down DIR   # stop everything and remove every rule, mount and process
    python -m e2e.cluster check [--database-replicas N]    # the settings of `up` only
    python -m e2e.cluster tool DIR MODULE [ARG...]   # tools/MODULE on the stack `e2e` of DIR's
                                                     # cluster, as make runs it on a stack

N is the database's instance count, 1 (the default) to components.database.MAX_REPLICAS.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from components import database, microservice, stack_file
from components.config import (
    BACKUP_CIPHER_SECRET,
    BACKUP_S3_ACCESS_KEY,
    BACKUP_S3_SECRET_KEY,
    GENERATED_SECRETS,
    qualified_name,
)
from e2e.controlplane import ControlPlane, teardown_bin, toolchain_bin
from e2e.images import ImageRefs, Images
from e2e.node import Node
from e2e.s3 import S3Server
from e2e.teardown import run_steps
from e2e.workspace import PulumiWorkspace
from tools import stack_secrets

STACK: Final = "e2e"
# The program's default namespace for the stack: `<project>-<stack>`.
NAMESPACE: Final = qualified_name(stack_file.project_name(), STACK)
CLAIM: Final = database.claim_name(0)
# Every claim the stack's database instances can have: a local volume waits for each.
CLAIMS: Final = tuple(database.claim_name(i) for i in range(database.MAX_REPLICAS))
GATEWAY_SERVICE: Final = "gateway"


def database_replicas(text: str) -> int:
    """The database's instance count as `make e2e-cluster DATABASE_REPLICAS=` gives it."""
    if text.isdecimal() and 1 <= int(text) <= database.MAX_REPLICAS:
        return int(text)
    raise ValueError(
        f"DATABASE_REPLICAS={text!r}: the database's instance count is a whole number from 1 "
        f"to {database.MAX_REPLICAS}"
    )


def backup(s3: S3Server) -> dict[str, Any]:
    """`database.backup` into the node's S3 server: its bucket, over HTTPS verified against the
    cluster's CA, addressed by path as S3-compatible servers are."""
    return {
        "s3": {
            "endpoint": s3.endpoint,
            "bucket": s3.bucket,
            "region": s3.region,
            "uriStyle": "path",
            "caCertificate": s3.ca_certificate.read_text(),
        }
    }


def backup_secrets(s3: S3Server) -> dict[str, str]:
    values = {
        BACKUP_CIPHER_SECRET: "e2e/backup@cipher:pass%41+=?",
        BACKUP_S3_ACCESS_KEY: s3.access_key,
        BACKUP_S3_SECRET_KEY: s3.secret_key,
    }
    return stack_file.in_project(values)


# `make e2e-cluster`'s model: scaled by its HorizontalPodAutoscaler on the node's metrics-server,
# from one replica to three, for anyone to watch (`kubectl get hpa -w`) under load.
CLUSTER_MODEL: Final = {"replicas": 1, "autoscaling": {"maxReplicas": 3}}
# The suite's: a fixed count its scenarios change by config.
SUITE_MODEL: Final = {"replicas": 2}


def stack_config(
    plane: ControlPlane,
    refs: ImageRefs,
    database_replicas: int = 1,
    s3: S3Server | None = None,
    model: dict[str, Any] = SUITE_MODEL,
) -> dict[str, Any]:
    """The stack's config: the existing (throwaway) cluster, the images built here by digest,
    the `model` section, `database_replicas` database instances, backed up to `s3` when it is
    given."""
    database_config: dict[str, Any] = {"replicas": database_replicas, "storageSize": "1Gi"}
    if s3 is not None:
        database_config["backup"] = backup(s3)
    values: dict[str, Any] = {
        "cluster": {
            "provider": "existing",
            "kubeconfig": str(plane.kubeconfig),
            "context": plane.context,
        },
        "images": {
            "build": False,
            "gateway": refs.gateway,
            "model": refs.model,
            "database": refs.database,
        },
        # One node, whose kube-proxy stops sending to a pod within a second of its leaving
        # the endpoints: no cloud load balancer's deregistration to wait out.
        "gateway": {"replicas": 2, "serviceType": "LoadBalancer", "drainSeconds": 5},
        "model": dict(model),
        "database": database_config,
    }
    return stack_file.in_project(values)


def unfinished_rollouts(plane: ControlPlane) -> list[str]:
    """The stack's workloads whose rollout has not ended, each with its status: what
    `kubectl rollout status` waits for (the controller has observed the latest generation, every
    pod is updated and available, no older pod is left; for a StatefulSet, the update revision
    is the current one)."""
    found: Any = plane.get_json("deployments,statefulsets", "-n", NAMESPACE)
    return unfinished(found["items"])


def unfinished(items: list[dict[str, Any]]) -> list[str]:
    """Which of `items` (the namespace's objects, as `kubectl get -o json` lists them) are a
    Deployment or StatefulSet whose rollout has not ended, as `unfinished_rollouts` reads it."""
    found = []
    for item in items:
        if item["kind"] not in ("Deployment", "StatefulSet"):
            continue
        wanted = item["spec"]["replicas"]
        status = item.get("status") or {}
        counts = [
            status.get(key, 0) for key in ("updatedReplicas", "replicas", "availableReplicas")
        ]
        ended = (
            status.get("observedGeneration", 0) >= item["metadata"]["generation"]
            and counts == [wanted] * 3
            and (
                item["kind"] != "StatefulSet"
                or status.get("currentRevision") == status.get("updateRevision")
            )
        )
        if not ended:
            found.append(f"{item['kind']}/{item['metadata']['name']}: {json.dumps(status)}")
    return found


def gateway_url(plane: ControlPlane) -> str:
    """`http://<LoadBalancer address>:80`, read from the gateway Service's status."""
    ip = plane.load_balancer_address(NAMESPACE, GATEWAY_SERVICE)
    if not ip:
        raise RuntimeError(f"{NAMESPACE}/{GATEWAY_SERVICE} has no LoadBalancer address")
    return f"http://{ip}:{microservice.SERVICE_PORT}"


def push_teardown(
    stack: contextlib.ExitStack, name: str, step: Callable[[], object], left: list[str]
) -> None:
    """Push `step` onto `stack`: when the stack closes, it runs through `run_steps`, a failure
    reported on stderr and in `left`, and the steps pushed before it still run. An interrupted
    step (a Ctrl-C) is in `left` too, before the interruption goes on: the cluster's folders,
    which hold what finds its processes and rules again, are then kept (`LocalCluster`)."""
    stack.callback(run_steps, [(name, step)], _teardown_log, left)


def _teardown_log(message: str) -> None:
    print(f"e2e teardown: {message}", file=sys.stderr)


def control_plane(workdir: Path, bin_dir: Path) -> ControlPlane:
    """The control plane of a bring-up in `workdir`: no fake node, the real node runs every pod."""
    return ControlPlane(bin_dir=bin_dir, workdir=workdir / "cluster", fake_nodes=0)


def workspace(workdir: Path, plane: ControlPlane) -> PulumiWorkspace:
    """The Pulumi workspace of a bring-up in `workdir`, its CLI and cluster those of `plane`."""
    return PulumiWorkspace(
        bin_dir=plane.bin_dir, root=workdir / "pulumi", kubeconfig=plane.kubeconfig
    )


@dataclass
class Environment:
    """What `bring_up` made: the images (their registry still serving) and the references it
    deploys, and the running control plane, node and workspace."""

    images: Images
    refs: ImageRefs
    plane: ControlPlane
    node: Node
    workspace: PulumiWorkspace


def bring_up(
    stack: contextlib.ExitStack,
    workdir: Path,
    bin_dir: Path,
    app_secrets: dict[str, str],
    left: list[str],
    *,
    model: dict[str, Any] = SUITE_MODEL,
    database_replicas: int = 1,
) -> Environment:
    """Everything the stack needs, under `workdir` (`images/`, `cluster/` with `node/`,
    `pulumi/`), as `make e2e-cluster` and the e2e suite both run it: the app's images built and
    served by digest, the control plane, the real node with a local volume for each database
    claim, and a workspace holding the stack `STACK`, not yet deployed, with `model`,
    `database_replicas` instances, backups to the node's S3 server and `app_secrets`.

    Each part's teardown is pushed onto `stack` before the part starts, so that closing the stack
    removes whatever was made, in reverse order: the node, the control plane, the images'
    registry and engine. What the node could not remove, and each part whose teardown failed, is
    added to `left`."""
    images = Images(workdir / "images")
    push_teardown(stack, "images", images.down, left)
    plane = control_plane(workdir, bin_dir)
    push_teardown(stack, "control plane", plane.stop, left)
    # The images are built (or found built) and pushed while the control plane starts: neither
    # needs the other, and each spends much of its time waiting.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        building = pool.submit(images.up)
        plane.start()
        refs = building.result()
    # Only the registry is needed from now on: the engine's memory goes to the node's pods.
    images.engine.stop()
    node = Node(plane, registries=[images.registry.address])
    push_teardown(stack, "node", lambda: left.extend(node.down()), left)
    node.up()
    # The claims the database's StatefulSet mounts: a provisioner would create their volumes.
    for claim in CLAIMS:
        node.add_volume(NAMESPACE, claim)
    ws = workspace(workdir, plane)
    ws.create()
    ws.run("login", f"file://{ws.backend_dir}")
    ws.init_stack(
        STACK,
        stack_config(plane, refs, database_replicas, node.s3, model),
        {**app_secrets, **backup_secrets(node.s3)},
    )
    return Environment(images, refs, plane, node, ws)


def fresh_volumes(plane: ControlPlane, node: Node, *, released_only: bool = False) -> None:
    """Each database claim's local volume made anew, empty: what a provisioner gives a new claim
    (the old volume is Released once its claim is deleted, and binds to no new one). For a stack
    destroyed and deployed again, whatever its instance count; with `released_only`, for the
    volumes of the claims a lower `database.replicas` deleted, before a higher one makes them
    again."""
    released = set()
    if released_only:
        found = json.loads(plane.kubectl("get", "pv", "--output", "json").stdout)
        released = {
            item["metadata"]["name"]
            for item in found["items"]
            if item.get("status", {}).get("phase") == "Released"
        }
    for claim in CLAIMS:
        volume = f"{NAMESPACE}-{claim}"
        if released_only and volume not in released:
            continue
        plane.kubectl("delete", "pv", volume, "--wait=true", "--ignore-not-found")
        shutil.rmtree(node.add_volume(NAMESPACE, claim))
        node.add_volume(NAMESPACE, claim)


def push_teardown_of(stack: contextlib.ExitStack, workdir: Path, left: list[str]) -> None:
    """Push the teardown `bring_up` pushes, for a bring-up in `workdir` that an earlier process
    made (every part is found again from its folder), with the binaries its `up` ran (never a
    build: `teardown_bin`)."""
    images = Images(workdir / "images")
    push_teardown(stack, "images", images.down, left)
    plane = control_plane(workdir, teardown_bin(workdir / "cluster"))
    push_teardown(stack, "control plane", plane.stop, left)
    node = Node(plane)
    push_teardown(stack, "node", lambda: left.extend(node.down()), left)


def random_secrets() -> dict[str, str]:
    """The stack's secrets for `make e2e-cluster`: drawn afresh, as `make stack` draws them (but
    the backups' cipher, which backup_secrets gives)."""
    drawn = stack_file.in_project(
        {
            name: stack_secrets.generate()
            for name in GENERATED_SECRETS
            if name != BACKUP_CIPHER_SECRET
        }
    )
    # The passwords end with what a URL or a password file gives a meaning to, as the base64
    # passwords the README's commands make may have.
    return {key: value + "/@:%+=?" if "Password" in key else value for key, value in drawn.items()}


# The folders `up` makes in its folder, and `down` removes.
FOLDERS: Final = ("pulumi", "cluster", "images")


def held(workdir: Path) -> str | None:
    """Why `up` may not start in `workdir`, or None: it holds an earlier `up`'s folders, of a
    cluster still running or of a `down` that left something behind. A second `up` would tear
    that cluster down on its first failure and remove its stack's state."""
    found = [name for name in FOLDERS if (workdir / name).exists()]
    if not found:
        return None
    return (
        f"{workdir} holds a cluster already ({', '.join(f'{name}/' for name in found)}): "
        f"make e2e-clean (python -m e2e.cluster down {workdir}) removes it first"
    )


class LocalCluster:
    """Everything under one folder: `images/`, `cluster/` (with `node/`), `pulumi/`."""

    def __init__(self, workdir: Path, database_replicas: int = 1) -> None:
        self.workdir = workdir
        self.database_replicas = database_replicas

    def plane(self) -> ControlPlane:
        """The control plane `up` started (for the tools and benchmarks that use it)."""
        return control_plane(self.workdir, toolchain_bin())

    def workspace(self, plane: ControlPlane) -> PulumiWorkspace:
        """The stack's Pulumi workspace that `up` made, with `plane`'s CLI and cluster."""
        return workspace(self.workdir, plane)

    def up(self) -> list[str]:
        """Bring everything up and deploy the stack; returns the three `export` lines. On any
        failure everything is removed again. Refused, with nothing touched, where `held`."""
        if (refusal := held(self.workdir)) is not None:
            raise RuntimeError(refusal)
        self.workdir.mkdir(parents=True, exist_ok=True)
        app_secrets = random_secrets()
        left: list[str] = []
        with contextlib.ExitStack() as stack:
            push_teardown(stack, "folders", lambda: self._remove_folders(left), left)
            try:
                env = bring_up(
                    stack,
                    self.workdir,
                    toolchain_bin(),
                    app_secrets,
                    left,
                    model=CLUSTER_MODEL,
                    database_replicas=self.database_replicas,
                )
                env.workspace.run("up", "--stack", STACK, "--yes", "--skip-preview")
                url = gateway_url(env.plane)
                # The model's autoscaler reads it: there, for `kubectl get hpa -w`.
                env.node.wait_for_metrics()
            except BaseException:
                print("e2e cluster: start failed, removing what was made", file=sys.stderr)
                raise
            stack.pop_all()  # up: everything keeps running
        return [
            f"export KUBECONFIG={env.plane.kubeconfig}",
            f"export MLSTACK_GATEWAY_URL={url}",
            f"export MLSTACK_API_KEY={app_secrets[f'{stack_file.project_name()}:apiKey']}",
        ]

    def down(self) -> list[str]:
        """Stop and remove everything `up` made (node, control plane, engine and registry);
        returns what could not be removed. The folders go only once every part's teardown has
        run to its end and left nothing: an interruption (raised again), or a toolchain that
        cannot be found, keeps them, and with them the node's record of the machine and
        kwokctl's pid files, for the next `down`."""
        left: list[str] = []
        with contextlib.ExitStack() as stack:
            push_teardown_of(stack, self.workdir, left)
        self._remove_folders(left)
        return left

    def _remove_folders(self, left: list[str]) -> None:
        """The folders `up` made, when the teardown left nothing behind and was not interrupted,
        and the cluster's folder itself once it holds nothing else (it may be one the user keeps
        other files in)."""
        if left:
            return
        for name in FOLDERS:
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty, or already gone
            self.workdir.rmdir()


def no_cluster(workdir: Path) -> str | None:
    """Why `workdir` holds no cluster `up` left there, or None when it holds one."""
    missing = [f"{name}/" for name in FOLDERS if not (workdir / name).is_dir()]
    if not missing:
        return None
    return (
        f"{workdir} holds no cluster (no {', '.join(missing)}): `make e2e-cluster` starts one "
        "there (E2E_CLUSTER_DIR)"
    )


# What a tool run on the cluster may take: a restore's wait for its instances included.
TOOL_SECONDS: Final = 3600


def run_tool(workdir: Path, module: str, arguments: Sequence[str]) -> int:
    """tools.`module` run with `arguments` on the cluster `up` left in `workdir`, as a make
    target runs it on a stack: its output passed on, its exit status returned."""
    if (absent := no_cluster(workdir)) is not None:
        print(f"e2e cluster: {absent}", file=sys.stderr)
        return 2
    cluster = LocalCluster(workdir)
    done = cluster.workspace(cluster.plane()).tool(module, *arguments, timeout=TOOL_SECONDS)
    print(done.stdout, end="", flush=True)
    print(done.stderr, end="", file=sys.stderr, flush=True)
    return done.returncode


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="bring everything up and deploy the stack")
    up.add_argument("dir", type=Path)
    down = commands.add_parser("down", help="stop and remove everything `up` made")
    down.add_argument("dir", type=Path)
    check = commands.add_parser("check", help="check the settings of `up`; start nothing")
    tool = commands.add_parser(
        "tool",
        help="run tools.MODULE (`make switchover`'s database_switchover, `backup` and "
        "`restore`'s database_backup, `drift`'s drift) with the cluster's Pulumi CLI, backend "
        "and kubeconfig, on its stack `e2e`",
    )
    tool.add_argument("dir", type=Path)
    tool.add_argument("module")
    tool.add_argument("arguments", nargs=argparse.REMAINDER)
    for command in (up, check):
        command.add_argument(
            "--database-replicas", default="1", metavar="N", help="the database's instances"
        )
    args = parser.parse_args(argv)
    if args.command == "tool":
        return run_tool(args.dir.resolve(), args.module, args.arguments)
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """`up`, `down` or `check`, as main parsed them."""
    replicas = 1
    if args.command in ("up", "check"):
        # Checked before anything starts: one line, no usage.
        try:
            replicas = database_replicas(args.database_replicas)
        except ValueError as error:
            print(f"e2e cluster: {error}", file=sys.stderr)
            return 2
    if args.command == "check":
        return 0
    workdir = args.dir.resolve()
    if args.command == "up" and (refusal := held(workdir)) is not None:
        print(f"e2e cluster: {refusal}", file=sys.stderr)
        return 2
    cluster = LocalCluster(workdir, replicas)
    if args.command == "up":
        lines = cluster.up()
        print("\n".join(lines), flush=True)
        return 0
    left = cluster.down()
    if left:
        print("e2e cluster: left behind:\n" + "\n".join(left), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
