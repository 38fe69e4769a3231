"""What the GitHub workflows need to know about mlstack's stacks.

    stacks.py affected                  changed paths on stdin, one a line -> key=value lines for
                                        $GITHUB_OUTPUT: `unattended`, the JSON list of CI stacks a
                                        pull request affects whose preview runs as soon as it is
                                        pushed (staging), and `reviewed`, those whose preview waits
                                        for a person to approve the run (prod)
    stacks.py info [--stack NAME]       key=value lines for $GITHUB_OUTPUT: the Pulumi CLI version,
                                        the stack's cluster provider, the clouds and registries
                                        the job must log in to (the state backend's included)
    stacks.py review-config --stack pr-N [--dir DIR] [--json]
                                        writes Pulumi.pr-N.yaml: a review stack on the shared
                                        test cluster (provider `existing`), from REVIEW_* variables
                                        (REVIEW_KUBE_CONTEXT, REVIEW_REGISTRY, REVIEW_GATEWAY_IMAGE,
                                        REVIEW_MODEL_IMAGE, REVIEW_DATABASE_IMAGE,
                                        REVIEW_GATEWAY_SERVICE_TYPE); with --json, prints that
                                        config as `pulumi config set-all --json` reads it instead
    stacks.py review-stacks             `pulumi stack ls --json` on stdin -> the review stacks
                                        (REVIEW_STACK), one a line
    stacks.py exists --stack NAME       `pulumi stack ls --json` on stdin -> `exists=true|false`
                                        for $GITHUB_OUTPUT
    stacks.py deployed                  `pulumi stack history --json` on stdin ->
                                        `deployed=true|false`: whether the stack has an update
                                        `pulumi config refresh` can restore its config from

`affected`, `review-config`, `review-stacks`, `exists` and `deployed` need only the standard library
(`affected` and `review-config` run before the project's virtual environment exists); `info`
reads the stack file with the program's own reader (components/stack_file.py,
components/config.py) from that environment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[2]
# The stacks CI previews on pull requests and deploys from main, in promotion order.
CI_STACKS: Final = ("staging", "prod")
# The stacks whose credentials (state, secrets, cloud roles) live only in protected GitHub
# environments: a pull request's code previews them only after a person approved the run
# (README, "Previews on pull requests"). Every other CI stack is previewed unattended with the
# repository's credentials, which must unlock none of these.
REVIEWED_STACKS: Final = ("prod",)
# A change to any of these affects every stack; `Pulumi.<stack>.yaml` affects its own stack.
SHARED_FILES: Final = ("Pulumi.yaml", "__main__.py", "requirements.txt", "requirements-cloud.txt")
SHARED_DIRS: Final = ("components/", "services/", "policy/pack/")
REVIEW_STACK: Final = re.compile(r"^pr-[1-9][0-9]*$")
_ECR: Final = re.compile(r"^[0-9]{12}\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com$")
_GOOGLE_REGISTRY: Final = re.compile(r"^([a-z0-9-]+-docker\.pkg\.dev|([a-z]+\.)?gcr\.io)$")
# Pulumi.yaml's top-level `name: <project>`, read without PyYAML (review-config runs before the
# virtual environment exists): the namespace of the program's config keys.
_PROJECT_NAME: Final = re.compile(r"^name:[ \t]*([\"']?)([A-Za-z0-9_.-]+)\1[ \t]*(#.*)?$", re.M)


def affected(paths: list[str], stacks: tuple[str, ...] = CI_STACKS) -> list[str]:
    """The stacks whose preview a change to `paths` can alter, in promotion order."""
    changed = {path.strip() for path in paths if path.strip()}
    if any(path in SHARED_FILES or path.startswith(SHARED_DIRS) for path in changed):
        return list(stacks)
    return [stack for stack in stacks if f"Pulumi.{stack}.yaml" in changed]


def pulumi_version(requirements: Path = ROOT / "requirements.txt") -> str:
    """The Pulumi SDK release requirements.txt pins: CI installs the CLI of the same release."""
    for line in requirements.read_text().splitlines():
        match = re.match(r"^pulumi==([0-9][^\s;#]*)", line.strip())
        if match:
            return match.group(1)
    raise SystemExit(f"{requirements}: no `pulumi==<version>` pin")


def project_name(project_file: Path = ROOT / "Pulumi.yaml") -> str:
    """The project's name (components/stack_file.py reads it the same way, with PyYAML)."""
    match = _PROJECT_NAME.search(project_file.read_text())
    if not match:
        raise SystemExit(f"{project_file}: no top-level `name: <project>`")
    return match.group(2)


def registry_host(registry: str) -> str:
    """`ghcr.io` for `ghcr.io/acme/mlstack`."""
    return registry.split("/", 1)[0]


def info(stack: str | None, backend_url: str, fallback_region: str) -> dict[str, str]:
    """What a job running Pulumi on `stack` must set up; without a stack, for the backend only."""
    provider, region = "", ""
    images: dict[str, Any] = {}
    if stack:
        # The program's own reader of stack files, from the project's virtual environment.
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from components import stack_file
        from components.config import ConfigError, EksCluster, parse_cluster

        if not stack_file.path_of(stack, ROOT).is_file():
            raise SystemExit(f"no stack file Pulumi.{stack}.yaml for stack {stack}")
        values = stack_file.project_values(
            stack_file.read_config(stack, ROOT), stack_file.project_name(ROOT)
        )
        try:
            cluster = parse_cluster(values.get("cluster"))
        except ConfigError as error:
            raise SystemExit(f"stack {stack}: {error}") from None
        provider = cluster.provider
        region = cluster.region if isinstance(cluster, EksCluster) else ""
        given = values.get("images")
        images = dict(given) if isinstance(given, dict) else {}
    registry = str(images.get("registry") or "") if images.get("build", True) else ""
    host = registry_host(registry) if registry else ""
    ecr = _ECR.match(host)
    google_registry = bool(_GOOGLE_REGISTRY.match(host))

    region = region or (ecr.group(1) if ecr else fallback_region or "us-east-1")
    return {
        "pulumi-version": pulumi_version(),
        "provider": provider,
        "aws": _flag(provider == "eks" or bool(ecr) or backend_url.startswith("s3://")),
        "aws-region": region,
        "gcp": _flag(provider == "gke" or google_registry or backend_url.startswith("gs://")),
        "ecr-registry": host if ecr else "",
        "gar-registry": host if google_registry else "",
        "registry-host": host,
    }


def _flag(value: bool) -> str:
    return "true" if value else "false"


def stack_names(listing: list[dict[str, Any]]) -> list[str]:
    """The stacks of `pulumi stack ls --json` by their own names: a backend may qualify them
    (`org/stack`, `org/project/stack`)."""
    return [str(entry["name"]).rsplit("/", 1)[-1] for entry in listing]


def _listing(text: str, command: str = "pulumi stack ls --json") -> list[dict[str, Any]]:
    """The list `command` printed; no list (the CLI failed) stops the step."""
    try:
        listing = json.loads(text)
    except ValueError:
        listing = None
    if not isinstance(listing, list):
        raise SystemExit(f"expected the output of `{command}` on stdin")
    return listing


def review_stacks(listing: list[dict[str, Any]]) -> list[str]:
    """The review stacks (`pr-<number>`) of `pulumi stack ls --json`."""
    return [name for name in stack_names(listing) if REVIEW_STACK.match(name)]


def review_config(env: dict[str, str]) -> dict[str, Any]:
    """A review stack's config: the shared test cluster, one replica of each service."""
    cluster: dict[str, Any] = {"provider": "existing"}
    if env.get("REVIEW_KUBE_CONTEXT"):
        cluster["context"] = env["REVIEW_KUBE_CONTEXT"]
    registry = env.get("REVIEW_REGISTRY", "")
    given = {
        service: env.get(f"REVIEW_{service.upper()}_IMAGE", "")
        for service in ("gateway", "model", "database")
    }
    images: dict[str, Any]
    if registry:
        images = {"build": True, "registry": registry}
    elif all(given.values()):
        images = {"build": False, **given}
    else:
        raise SystemExit(
            "a review stack needs images: set the repository variable REVIEW_REGISTRY (the "
            "images are built and pushed there), or REVIEW_GATEWAY_IMAGE, REVIEW_MODEL_IMAGE "
            "and REVIEW_DATABASE_IMAGE (images.build: false)"
        )
    values = {
        "cluster": cluster,
        # A test cluster with no load balancer controller: REVIEW_GATEWAY_SERVICE_TYPE=ClusterIP.
        "gateway": {
            "replicas": 1,
            "serviceType": env.get("REVIEW_GATEWAY_SERVICE_TYPE") or "LoadBalancer",
        },
        "model": {"replicas": 1, "serviceType": "ClusterIP"},
        "database": {"replicas": 1, "storageSize": "1Gi"},
        "images": images,
    }
    project = project_name()
    return {f"{project}:{key}": value for key, value in values.items()}


def set_all_json(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`config` (key -> value) as `pulumi config set-all --json` reads it, the form `pulumi config
    --json` prints: none secret, and each map or list whole (it replaces the key's old value)."""
    entries: dict[str, dict[str, Any]] = {}
    for key, value in config.items():
        if isinstance(value, (dict, list)):
            entries[key] = {"value": json.dumps(value), "objectValue": value, "secret": False}
        else:
            entries[key] = {"value": str(value), "secret": False}
    return entries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("affected")
    info_parser = commands.add_parser("info")
    info_parser.add_argument("--stack", default="")
    review = commands.add_parser("review-config")
    review.add_argument("--stack", required=True)
    review.add_argument("--dir", type=Path, default=ROOT)
    review.add_argument("--json", action="store_true")
    commands.add_parser("review-stacks")
    exists = commands.add_parser("exists")
    exists.add_argument("--stack", required=True)
    commands.add_parser("deployed")
    args = parser.parse_args(argv)

    if args.command == "affected":
        stacks = affected(sys.stdin.read().splitlines())
        unattended = [stack for stack in stacks if stack not in REVIEWED_STACKS]
        reviewed = [stack for stack in stacks if stack in REVIEWED_STACKS]
        print(f"unattended={json.dumps(unattended)}\nreviewed={json.dumps(reviewed)}")
    elif args.command == "info":
        values = info(
            args.stack or None,
            os.environ.get("PULUMI_BACKEND_URL", ""),
            os.environ.get("AWS_REGION_FALLBACK", ""),
        )
        print("\n".join(f"{key}={value}" for key, value in values.items()))
    elif args.command == "review-stacks":
        for name in review_stacks(_listing(sys.stdin.read())):
            print(name)
    elif args.command == "exists":
        print(f"exists={_flag(args.stack in stack_names(_listing(sys.stdin.read())))}")
    elif args.command == "deployed":
        updates = _listing(sys.stdin.read(), "pulumi stack history --json")
        print(f"deployed={_flag(bool(updates))}")
    else:
        if not REVIEW_STACK.match(args.stack):
            raise SystemExit(f"{args.stack!r} is not a review stack name (pr-<number>)")
        config = review_config(dict(os.environ))
        if args.json:
            print(json.dumps(set_all_json(config)))
            return
        document = {"config": config}
        path = args.dir / f"Pulumi.{args.stack}.yaml"
        # JSON is YAML: no PyYAML needed before the virtual environment exists.
        header = f"# Review stack {args.stack}: written by .github/scripts/stacks.py.\n"
        path.write_text(header + json.dumps(document, indent=2) + "\n")
        print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
