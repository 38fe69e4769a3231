"""A stand-in `kubectl` for the database tools' tests (tools/database_switchover.py and
tools/database_backup.py), installed as a script beside a cluster.json it answers from and
updates: a Patroni cluster's StatefulSet, its pods' role labels and the database Service's
endpoints, one state after another, its ConfigMaps, and what a program run in a pod prints.
It logs every call to kubectl-calls.jsonl. Standard library only: it runs as a script.

cluster.json holds:
- `namespace`, the only one it answers in; `selector`, the pods' labels; `role_label`;
- `replicas`: the StatefulSet's (None: there is none); a scale sets it and moves to the phase
  `stopping` (to 0) or `starting`; `containers`: the names of its pods' containers, the only
  ones an exec reaches;
- `phases`: each phase's states (`roles`: pod → role label; `endpoints`: pod → ready;
  `restarts`: pod → its postgres container's restarts, 0 when not named), `phase`
  and `at`, the state seen (the phase's last once `at` passes it); while `advancing`, each look
  at the endpoints moves `at` on;
- `target_ref`: whether endpoints name their pod;
- `exec`: by program, what a run of it prints and exits with, by its arguments joined by spaces
  or `*` for any; an answer with `advances` starts the states moving when it exits 0, one with
  `then` is that answer from the next run on, one with `pods` is, in a pod it names, that pod's;
- `configmaps`: by name, `labels` and `data`: read by name, deleted by name or selector, made
  from literals;
- `signals`: by the start of a command (its words after the namespace, joined by spaces), a
  signal (`signal`, its name) sent once to this process's whole group, as a terminal sends
  Ctrl-C or a hang-up, `before` the command changes anything or after it; then this kubectl
  waits a moment, as a slow call would, and goes on unless the signal ends it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

HERE = Path(__file__).parent
CLUSTER = HERE / "cluster.json"


def ip(pod: str) -> str:
    return f"10.0.0.{10 + int(pod.rsplit('-', 1)[1])}"


def selects(selector: str, labels: dict[str, str]) -> bool:
    pairs = (part.split("=", 1) for part in selector.split(","))
    return all(labels.get(key) == value for key, value in pairs)


def answer(cluster: dict[str, Any], command: list[str]) -> NoReturn:
    """Print what the program `exec` runs in a pod prints, save the cluster and exit with its
    code; refuse, as kubectl does, a container the pods do not have."""
    container = command[command.index("--container") + 1]
    if container not in cluster["containers"]:
        sys.exit(f'error: unable to upgrade connection: container not found ("{container}")')
    argv = command[command.index("--") + 1 :]
    answers = cluster["exec"].get(argv[0], {})
    arguments = " ".join(argv[1:])
    key = arguments if arguments in answers else "*"
    found = answers.get(key)
    if found is None:
        sys.exit("fake kubectl: unexpected exec " + " ".join(argv))
    found = found.get("pods", {}).get(command[1], found)
    print(found["stdout"], end="")
    print(found["stderr"], end="", file=sys.stderr)
    if found["exit"] == 0 and found.get("advances"):
        cluster["at"] += 1
        cluster["advancing"] = True
    if "then" in found:
        answers[key] = found["then"]
    CLUSTER.write_text(json.dumps(cluster))
    sys.exit(found["exit"])


def change_configmaps(cluster: dict[str, Any], command: list[str]) -> None:
    """Delete ConfigMaps by name or selector, or create one from literals."""
    if command[:3] == ["delete", "configmap", "--selector"]:
        cluster["configmaps"] = {
            name: found
            for name, found in cluster["configmaps"].items()
            if not selects(command[3], found["labels"])
        }
    elif command[:2] == ["delete", "configmap"]:
        cluster["configmaps"].pop(command[2], None)
    elif command[:2] == ["create", "configmap"]:
        if command[2] in cluster["configmaps"]:
            sys.exit(f'Error from server (AlreadyExists): configmaps "{command[2]}" already exists')
        literals = [a.removeprefix("--from-literal=").split("=", 1) for a in command[3:]]
        cluster["configmaps"][command[2]] = {"labels": {}, "data": dict(literals)}


def respond(cluster: dict[str, Any], command: list[str]) -> None:
    states = cluster["phases"][cluster["phase"]]
    now = states[min(cluster["at"], len(states) - 1)]
    if command[:3] == ["get", "statefulset", "database"]:
        if cluster["replicas"] is not None:
            selector = {"matchLabels": cluster["selector"]}
            containers = [{"name": name} for name in cluster["containers"]]
            template = {"spec": {"containers": containers}}
            spec = {"replicas": cluster["replicas"], "selector": selector, "template": template}
            print(json.dumps({"kind": "StatefulSet", "spec": spec}))
    elif command[:2] == ["get", "pods"]:
        wanted = ",".join(f"{k}={v}" for k, v in sorted(cluster["selector"].items()))
        found = now["roles"] if command[2:4] == ["--selector", wanted] else {}
        pods = [
            {
                "metadata": {"name": pod, "labels": {cluster["role_label"]: role} if role else {}},
                "status": {
                    "podIP": ip(pod),
                    "containerStatuses": [
                        {"name": "postgres", "restartCount": now.get("restarts", {}).get(pod, 0)}
                    ],
                },
            }
            for pod, role in found.items()
        ]
        print(json.dumps({"kind": "List", "items": pods}))
    elif command[:4] == [
        "get",
        "endpointslices",
        "--selector",
        "kubernetes.io/service-name=database",
    ]:
        endpoints = [
            {
                "addresses": [ip(pod)],
                "conditions": {"ready": ready},
                **({"targetRef": {"kind": "Pod", "name": pod}} if cluster["target_ref"] else {}),
            }
            for pod, ready in now["endpoints"].items()
        ]
        print(json.dumps({"kind": "List", "items": [{"endpoints": endpoints}]}))
        if cluster["advancing"]:
            cluster["at"] += 1
    elif command[:2] == ["get", "configmap"]:
        found = cluster["configmaps"].get(command[2])
        if found is not None:
            metadata = {"name": command[2], "labels": found["labels"]}
            print(json.dumps({"kind": "ConfigMap", "metadata": metadata, "data": found["data"]}))
    elif command[:1] == ["exec"]:
        answer(cluster, command)
    elif command[:3] == ["scale", "statefulset", "database"]:
        cluster["replicas"] = int(command[3].removeprefix("--replicas="))
        cluster["phase"] = "starting" if cluster["replicas"] else "stopping"
        cluster["at"], cluster["advancing"] = 0, True
        if cluster["replicas"]:
            # What the instances find as they start.
            cluster["request_at_start"] = cluster["configmaps"].get("database-restore")
    elif command[:2] in (["delete", "configmap"], ["create", "configmap"]):
        change_configmaps(cluster, command)
    else:
        sys.exit("fake kubectl: unexpected " + " ".join(command))


def signalled(cluster: dict[str, Any], command: list[str], *, before: bool) -> None:
    """The tool's process group signalled, once, when `signals` names the start of `command`
    for this moment: as a terminal sends a Ctrl-C to its foreground group, the tool's, which a
    kubectl the tool runs with the signals held off is not in (tools.stack.run)."""
    called = " ".join(command)
    for start, found in list(cluster.get("signals", {}).items()):
        if called.startswith(start) and bool(found.get("before")) == before:
            del cluster["signals"][start]
            CLUSTER.write_text(json.dumps(cluster))
            os.killpg(os.getpgid(os.getppid()), signal.Signals[found["signal"]])
            time.sleep(0.5)


def main(args: list[str]) -> None:
    call: dict[str, Any] = {"args": args}
    if "--kubeconfig" in args:
        call["kubeconfig"] = Path(args[args.index("--kubeconfig") + 1]).read_text()
    with (HERE / "kubectl-calls.jsonl").open("a") as log:
        log.write(json.dumps(call) + "\n")
    cluster = json.loads(CLUSTER.read_text())
    namespace = args.index("--namespace")
    if args[namespace + 1] != cluster["namespace"]:
        sys.exit("fake kubectl: another namespace: " + args[namespace + 1])
    command = args[namespace + 2 :]
    signalled(cluster, command, before=True)
    try:
        respond(cluster, command)
        CLUSTER.write_text(json.dumps(cluster))
    finally:
        # After the command, whether it exits 0 (an exec's program) or not.
        signalled(cluster, command, before=False)


if __name__ == "__main__":
    main(sys.argv[1:])
