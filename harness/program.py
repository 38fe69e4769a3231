"""Run `__main__.py` under Pulumi's standard mocks and record what it registers.

Each run happens in a fresh `contextvars.Context`, so several stacks can be evaluated in one
process. The mocks answer like a cluster that has allocated a LoadBalancer address (unless told
otherwise) and like Docker and the clouds would, without touching any of them. A program that
exits instead of completing (a configuration mistake) raises `ProgramExitError` with what it logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
import os
import runpy
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import pulumi
from pulumi.runtime import mocks
from pulumi.runtime.proto import resource_pb2

from components import stack_file
from components.config import DEFAULT_AWS_REGION_VARIABLES, SECRET_KEYS
from components.stack_file import read_config

# The project's root, one for the program and its tooling.
ROOT: Final = stack_file.ROOT
MAIN: Final = ROOT / "__main__.py"
# The project's name (Pulumi.yaml): the project the mocks run the program as, and so the namespace
# of its config keys, unless a run is given another.
PROJECT: Final = stack_file.project_name()
# The stack secrets every stack has (GENERATED_SECRETS), by key without the namespace.
TEST_SECRET_VALUES: Final = {
    "databasePassword": "test-database-password",
    "databaseOwnerPassword": "test-owner-password",
    "databaseReplicationPassword": "test-replication-password",
    "databaseRewindPassword": "test-rewind-password",
    "apiKey": "test-gateway-api-key",
    "secretsDigestKey": "test-secrets-digest-key-of-32-characters",
    "databaseBackupCipherPassword": "test-backup-cipher-password",
}


def secrets_of(project: str) -> dict[str, str]:
    """TEST_SECRET_VALUES as `project`'s config keys."""
    return stack_file.in_project(TEST_SECRET_VALUES, project)


TEST_SECRETS: Final = secrets_of(PROJECT)
LB_ADDRESS: Final = "203.0.113.10"
# The AWS account and the EKS cluster's OIDC issuer the mocks answer with.
AWS_ACCOUNT: Final = "123456789012"
OIDC_ISSUER: Final = "oidc.eks.eu-west-1.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF"
# The API server's address and port, as the `kubernetes` EndpointSlice gives them, and the
# address and port of the `kubernetes` Service itself.
API_SERVER: Final = ("198.51.100.7", 6443)
API_SERVICE: Final = ("10.96.0.1", 443)
# Where the mocks send what the program logs through `pulumi.log` (it propagates as usual).
ENGINE_LOG: Final = logging.getLogger("harness.engine")


def stack_secrets_of(project: str) -> frozenset[str]:
    """SECRET_KEYS as `project`'s config keys."""
    return frozenset(stack_file.in_project(dict.fromkeys(SECRET_KEYS), project))


# The stack secrets the program reads, as config keys: `pulumi config set --secret` stores each one
# encrypted, and the engine hands it to the program as a secret.
STACK_SECRETS: Final = stack_secrets_of(PROJECT)
# How the SDK marks a secret value inside the inputs it sends (pulumi.runtime.rpc).
SECRET_SIGNATURE: Final = ("4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270")


def is_secret(value: Any) -> bool:
    """Whether `value` is a secret as Pulumi encodes one. The marker key alone is not enough: the
    same key, with other values, marks assets, archives and resource references."""
    key, signature = SECRET_SIGNATURE
    return isinstance(value, Mapping) and value.get(key) == signature


def unwrap_secrets(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """`value` with secret markers removed, and the dotted paths that were secret."""
    if isinstance(value, dict):
        if is_secret(value):
            plain, _ = unwrap_secrets(value.get("value"), path)
            return plain, [path]
        plain_dict: dict[str, Any] = {}
        paths: list[str] = []
        for name, item in value.items():
            plain_dict[name], found = unwrap_secrets(item, f"{path}.{name}" if path else name)
            paths.extend(found)
        return plain_dict, paths
    if isinstance(value, list):
        plain_list: list[Any] = []
        paths = []
        for index, item in enumerate(value):
            plain, found = unwrap_secrets(item, f"{path}[{index}]")
            plain_list.append(plain)
            paths.extend(found)
        return plain_list, paths
    return value, []


@dataclass
class Registered:
    """One resource the program registered: its inputs and the options it was given."""

    type: str
    name: str
    inputs: dict[str, Any]
    provider: str | None
    # Dotted paths of the inputs the program marked secret (`stringData`, ...).
    secret_paths: list[str] = field(default_factory=list)
    protect: bool = False
    parent: str | None = None
    # Read from the cluster (`Resource.get`), not created: no manifest of the program's.
    read: bool = False
    delete_before_replace: bool = False
    # Taken out of the state on delete, the object itself left as it is (`retain_on_delete`).
    retain_on_delete: bool = False
    # The property paths the program told the engine to leave alone after creation.
    ignore_changes: list[str] = field(default_factory=list)
    # The names of the resources it is created and updated after (`depends_on`).
    depends_on: list[str] = field(default_factory=list)
    # Every resource it waits for, its `depends_on` and the resources its inputs come from, as
    # `<type>::<name>` (components expanded into their resources): the engine creates it after
    # them and deletes it before them.
    waits_for: list[str] = field(default_factory=list)
    # The providers it was given by package (a remote component's, such as pulumi-eks's, which
    # hands them to the resources it makes), as references `<urn>::<id>`.
    providers: dict[str, str] = field(default_factory=dict)
    # How long the engine waits for each operation the program gave a time for (`create`, ...).
    custom_timeouts: dict[str, str] = field(default_factory=dict)
    # Its URN, as the engine builds it (`engine_urn`), and the URNs a `pulumi up` takes for its
    # former ones, whose state it moves to this one: its aliases', and those its parent's
    # aliases give it.
    urn: str = ""
    former_urns: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """`Deployment` for `kubernetes:apps/v1:Deployment`."""
        return self.type.rsplit(":", 1)[-1]

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.inputs.get("metadata") or {})


@dataclass
class ProgramRun:
    stack: str
    resources: list[Registered] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)

    def of_kind(self, kind: str) -> list[Registered]:
        """The Kubernetes objects of `kind` the program makes (not those it only reads)."""
        return [
            r
            for r in self.resources
            if r.type.startswith("kubernetes:") and r.kind == kind and not r.read
        ]

    def one(self, kind: str, name: str) -> Registered:
        found = [r for r in self.of_kind(kind) if r.metadata.get("name") == name]
        assert len(found) == 1, f"expected one {kind} named {name}, found {len(found)}"
        return found[0]

    def by_type(self, type_: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_]


class ProgramExitError(Exception):
    """The program ended itself (`SystemExit`) instead of running to completion.

    `code` is the exit status the language host sees, `errors` the messages the program logged
    at error level (what the Pulumi CLI shows), `resources` what it registered before exiting.
    """

    def __init__(self, code: int, errors: list[str], resources: list[Registered]) -> None:
        super().__init__("\n".join(errors) or f"the program exited with status {code}")
        self.code = code
        self.errors = errors
        self.resources = resources


class EngineLog(logging.Handler):
    """Keeps the messages the program logs through `pulumi.log` at error level."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.errors.append(record.getMessage())


def auto_name(name: str) -> str:
    """The name a provider's auto-naming gives resource `name`: `<name>-<7 hex digits>` (here
    a digest of the name, so that two runs agree)."""
    return f"{name}-{hashlib.sha256(name.encode()).hexdigest()[:7]}"


class RecordingMocks(pulumi.runtime.Mocks):
    """Returns each resource's inputs as its state, plus what a real provider would compute."""

    def __init__(self, *, load_balancer_ready: bool = True) -> None:
        self.load_balancer_ready = load_balancer_ready
        self.registered: list[Registered] = []

    def new_resource(self, args: mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        inputs, secret_paths = unwrap_secrets(dict(args.inputs))
        self.registered.append(
            Registered(
                args.typ,
                args.name,
                inputs,
                args.provider,
                secret_paths,
                read=bool(args.resource_id),
            )
        )
        state = {**inputs, **self._computed(args.typ, args.name, inputs)}
        return f"{args.name}-id", state

    def call(self, args: mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None

    def _computed(  # noqa: PLR0911 - one answer per resource type
        self, typ: str, name: str, inputs: dict[str, Any]
    ) -> dict[str, Any]:
        if typ == "kubernetes:core/v1:Service" and name.endswith("-api-service"):
            address, port = API_SERVICE
            return {
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": address,
                    "clusterIPs": [address],
                    "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
                }
            }
        if typ == "kubernetes:core/v1:Service":
            spec = inputs.get("spec") or {}
            if spec.get("type") == "LoadBalancer" and self.load_balancer_ready:
                return {"status": {"loadBalancer": {"ingress": [{"ip": LB_ADDRESS}]}}}
            if spec.get("type") == "NodePort":
                ports = [{**port, "nodePort": 30080} for port in spec.get("ports", [])]
                return {"spec": {**spec, "ports": ports}, "status": {"loadBalancer": {}}}
            return {"status": {"loadBalancer": {}}}
        if typ == "docker:index/image:Image":
            # The build's, as a registry's digest is its content's: the tag has no part in it.
            built = {key: value for key, value in inputs.items() if key != "imageName"}
            digest = hashlib.sha256(json.dumps(built, sort_keys=True).encode()).hexdigest()
            return {"repoDigest": f"{inputs['imageName'].rsplit(':', 1)[0]}@sha256:{digest}"}
        if typ == "pulumi-python:dynamic:Resource":
            return {"kubeconfig": "apiVersion: v1\nkind: Config\n"}
        if typ == "kubernetes:discovery.k8s.io/v1:EndpointSlice":
            address, port = API_SERVER
            return {
                "addressType": "IPv4",
                "endpoints": [{"addresses": [address]}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            }
        if typ.startswith(("gcp:", "aws:", "eks:")):
            return self._cloud_computed(typ, name, inputs)
        return {}

    def _cloud_computed(  # noqa: PLR0911 - one answer per resource type
        self, typ: str, name: str, inputs: dict[str, Any]
    ) -> dict[str, Any]:
        """What GCP and AWS compute for the resources the cloud clusters and their backups'
        buckets register."""
        if typ == "gcp:container/cluster:Cluster":
            return {
                "name": name,
                "endpoint": "198.51.100.1",
                "masterAuth": {"clusterCaCertificate": "Q0EK"},
            }
        if typ == "gcp:serviceaccount/account:Account":
            project = inputs.get("project", "project")
            email = f"{inputs['accountId']}@{project}.iam.gserviceaccount.com"
            return {"email": email, "name": f"projects/{project}/serviceAccounts/{email}"}
        if typ == "gcp:storage/bucket:Bucket":
            return {"name": inputs.get("name") or auto_name(name)}
        if typ == "eks:index:Cluster":
            return {
                "kubeconfigJson": json.dumps({"apiVersion": "v1", "kind": "Config"}),
                "oidcProviderArn": f"arn:aws:iam::{AWS_ACCOUNT}:oidc-provider/{OIDC_ISSUER}",
                "oidcIssuer": OIDC_ISSUER,
            }
        if typ == "aws:kms/key:Key":
            return {"arn": f"arn:aws:kms:eu-west-1:{AWS_ACCOUNT}:key/{name}"}
        if typ == "aws:s3/bucket:Bucket":
            bucket = inputs.get("bucket") or auto_name(name)
            return {"bucket": bucket, "arn": f"arn:aws:s3:::{bucket}"}
        if typ == "aws:iam/role:Role":
            role = inputs.get("name") or auto_name(name)
            return {"name": role, "arn": f"arn:aws:iam::{AWS_ACCOUNT}:role/{role}"}
        if typ == "aws:ec2/launchTemplate:LaunchTemplate":
            return {"latestVersion": 1}
        return {}


# The type of the stack's own resource, which the engine leaves out of its children's URNs.
ROOT_STACK_TYPE: Final = "pulumi:pulumi:Stack"


def engine_urn(parent: str, type_: str, name: str, stack: str, project: str) -> str:
    """The URN the engine gives resource `name` of `type_` under `parent` (a URN, or "" for
    none): its type qualified by every ancestor's but the stack's, `<outer>$<inner>$<type>`.
    The standard mock monitor qualifies it by the parent's own type alone, and by the stack's."""
    qualified = type_
    if parent:
        parent_type = parent.split("::")[2]
        if parent_type != ROOT_STACK_TYPE:
            qualified = f"{parent_type}${type_}"
    return f"urn:pulumi:{stack}::{project}::{qualified}::{name}"


class MonitorWithoutReferences(mocks.MockMonitor):
    """The standard mock monitor, but resources passed to other resources (a remote component's
    inputs, say) travel as their IDs and URNs rather than as references: rebuilding referenced
    resources spawns tasks on the event loop of a run that is ending, which hangs or breaks the
    next run in the same process. It also keeps, by resource, the URNs of the resources each
    one waits for and the providers it was given by package, and gives each resource the URN the
    engine would (`engine_urn`), keeping its former URNs (`Registered.former_urns`)."""

    def __init__(self, recorder: RecordingMocks) -> None:
        super().__init__(recorder)
        self.dependencies: dict[tuple[str, str], list[str]] = {}
        self.providers: dict[tuple[str, str], dict[str, str]] = {}
        self.urns: dict[tuple[str, str], str] = {}
        self.former_urns: dict[str, set[str]] = {}

    def make_urn(self, parent: str, type_: str, name: str) -> str:
        return engine_urn(parent, type_, name, pulumi.get_stack(), pulumi.get_project())

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - the gRPC method's name
        key = (request.type, request.name)
        self.dependencies[key] = list(request.dependencies)
        self.providers[key] = dict(request.providers)
        urn = self.make_urn(request.parent, request.type, request.name)
        self.urns[key] = urn
        self.former_urns[urn] = self._former_urns(request) - {urn}
        return super().RegisterResource(request)  # type: ignore[no-untyped-call]

    def _former_urns(self, request: Any) -> set[str]:
        """The URNs the engine takes as `request`'s resource's former ones: each alias, under
        each URN its parent has had when the alias keeps the parent, and the resource's own
        name and type under its parent's former URNs."""
        stack, project = pulumi.get_stack(), pulumi.get_project()
        parents = {request.parent, *self.former_urns.get(request.parent, ())}
        found = {self.make_urn(p, request.type, request.name) for p in parents}
        found.update(request.aliasURNs)
        for alias in request.aliases:
            if alias.WhichOneof("alias") == "urn":
                found.add(alias.urn)
                continue
            spec = alias.spec
            # No parent, the one it names, else the resource's own (an empty parentUrn too).
            under = {""} if spec.noParent else {spec.parentUrn} if spec.parentUrn else parents
            found.update(
                engine_urn(
                    parent,
                    spec.type or request.type,
                    spec.name or request.name,
                    spec.stack or stack,
                    spec.project or project,
                )
                for parent in under
            )
        return found

    def SupportsFeature(self, request: Any) -> Any:  # noqa: N802 - the gRPC method's name
        if request.id == "resourceReferences":
            return type("SupportsFeatureResponse", (object,), {"hasSupport": False})
        return super().SupportsFeature(request)  # type: ignore[no-untyped-call]

    def GetDeploymentInfo(self, request: Any) -> Any:  # noqa: N802 - the gRPC method's name
        info = super().GetDeploymentInfo(request)  # type: ignore[no-untyped-call]
        features = [
            feature
            for feature in info.supportedFeatures
            if feature != resource_pb2.RESOURCE_MONITOR_FEATURE_RESOURCE_REFERENCES
        ]
        return resource_pb2.DeploymentInfo(supportedFeatures=features)


def stack_config(stack: str) -> dict[str, Any]:
    """The `config:` of `Pulumi.<stack>.yaml`, values as the stack file gives them, but for its
    secrets: `make stack` (and so `make up`) writes a stack's secrets into its file encrypted,
    which only the CLI can read, and a run under the mocks takes TEST_SECRETS in their place."""
    return {
        key: value
        for key, value in read_config(stack, ROOT).items()
        if not (isinstance(value, dict) and "secure" in value)
    }


def _engine_value(value: Any) -> str:
    """How the engine hands a config value to a program: objects as JSON, scalars as strings."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


# The environment variables the program reads: the default AWS provider's region, which an EKS
# stack's must match (components/config.py). A run under the mocks stands for no machine's AWS
# settings, so it sees those its caller gives alone, not this machine's.
PROGRAM_ENVIRONMENT: Final = DEFAULT_AWS_REGION_VARIABLES


@contextlib.contextmanager
def _program_environment(given: Mapping[str, str]) -> Iterator[None]:
    """PROGRAM_ENVIRONMENT as `given` (unset where it names none), put back on the way out."""
    unknown = set(given) - set(PROGRAM_ENVIRONMENT)
    assert not unknown, f"the program reads no {sorted(unknown)}"
    before = {name: os.environ.get(name) for name in PROGRAM_ENVIRONMENT}
    try:
        for name in PROGRAM_ENVIRONMENT:
            os.environ.pop(name, None)
        os.environ.update(given)
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_program(
    stack: str,
    config: Mapping[str, Any] | None = None,
    *,
    preview: bool = False,
    load_balancer_ready: bool = True,
    with_secrets: bool = True,
    program: Path = MAIN,
    environment: Mapping[str, str] | None = None,
    plaintext: Collection[str] = (),
    project: str = PROJECT,
) -> ProgramRun:
    """Evaluate `__main__.py` (or another `program`) for `stack` of `project` (its stack file's
    config unless `config` is given), with `environment` as the PROGRAM_ENVIRONMENT it reads. The
    stack secrets among the config (SECRET_KEYS in `project`'s namespace) reach the program as
    secrets, as `pulumi config set --secret` leaves them, but for the keys in `plaintext`: those
    as a stack file holds a value set without `--secret`. Raises `ProgramExitError` if the
    program exits instead of completing."""
    values = dict(stack_config(stack) if config is None else config)
    if with_secrets:
        values = {**secrets_of(project), **values}
    stack_secrets = stack_secrets_of(project)
    secret_keys = [key for key in values if key in stack_secrets and key not in plaintext]
    _ensure_event_loop()
    engine_log = EngineLog()
    ENGINE_LOG.addHandler(engine_log)
    try:
        with _program_environment(environment or {}):
            return contextvars.Context().run(
                _run,
                project,
                stack,
                values,
                secret_keys,
                preview=preview,
                load_balancer_ready=load_balancer_ready,
                program=program,
                engine_log=engine_log,
            )
    finally:
        ENGINE_LOG.removeHandler(engine_log)


def _ensure_event_loop() -> None:
    """Pulumi's mocks run on the thread's current event loop. asyncio.run, which tests of the
    services call in the same pytest session (`pytest` at the root runs every suite), leaves the
    thread without one, and asking then raises instead of making one."""
    policy = asyncio.get_event_loop_policy()
    try:
        policy.get_event_loop()
    except RuntimeError:
        policy.set_event_loop(policy.new_event_loop())


def _exit_status(code: object) -> int:
    """The process exit status that `sys.exit(code)` gives."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def urn_type_name(urn: str) -> tuple[str, str]:
    """`(type, name)` of `urn:pulumi:<stack>::<project>::<qualified type>::<name>`, the type
    without its parents' (`mlstack:cluster:Gke$gcp:container/cluster:Cluster` is
    `gcp:container/cluster:Cluster`)."""
    _, _, qualified_type, name = urn.split("::", 3)
    return qualified_type.rsplit("$", 1)[-1], name


def _type_and_name(urn: str) -> str:
    """`gcp:container/cluster:Cluster::mlstack-prod` for that resource's URN."""
    return "::".join(urn_type_name(urn))


def _run(
    project: str,
    stack: str,
    values: dict[str, Any],
    secret_keys: list[str],
    *,
    preview: bool,
    load_balancer_ready: bool,
    program: Path,
    engine_log: EngineLog,
) -> ProgramRun:
    recorder = RecordingMocks(load_balancer_ready=load_balancer_ready)
    monitor = MonitorWithoutReferences(recorder)
    pulumi.runtime.set_mocks(
        recorder,
        project=project,
        stack=stack,
        preview=preview,
        logger=ENGINE_LOG,
        monitor=monitor,
    )
    pulumi.runtime.set_all_config(
        {key: _engine_value(value) for key, value in values.items()},
        secret_keys=secret_keys,
    )
    options: dict[tuple[str, str], pulumi.ResourceOptions] = {}

    def capture(
        args: pulumi.ResourceTransformationArgs,
    ) -> pulumi.ResourceTransformationResult | None:
        # Resource references coming back from the mocks are rebuilt with an URN: not the
        # program's own registration, whose options are the ones that count.
        if not args.opts.urn:
            options.setdefault((args.type_, args.name), args.opts)
        return None

    pulumi.runtime.register_stack_transformation(capture)
    run = ProgramRun(stack=stack)

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def evaluate() -> pulumi.Output[Any]:
        try:
            runpy.run_path(str(program), run_name="__main__")
        except SystemExit as exited:
            status = _exit_status(exited.code)
            raise ProgramExitError(status, engine_log.errors, recorder.registered) from exited
        root = pulumi.runtime.get_root_resource()
        exported: dict[str, Any] = dict(getattr(root, "outputs", {}))

        async def secret_keys() -> list[str]:
            return [
                key
                for key, value in exported.items()
                if await pulumi.Output.from_input(value).is_secret()
            ]

        def record(resolved: list[Any]) -> None:
            values, secrets = resolved
            run.outputs.update(values)
            run.secret_outputs.update(secrets)

        return pulumi.Output.all(
            pulumi.Output.all(**exported), pulumi.Output.from_input(cast(Any, secret_keys()))
        ).apply(record)

    evaluate()
    for resource in recorder.registered:
        waited = monitor.dependencies.get((resource.type, resource.name), [])
        resource.waits_for = [_type_and_name(urn) for urn in waited]
        resource.providers = monitor.providers.get((resource.type, resource.name), {})
        resource.urn = monitor.urns.get((resource.type, resource.name), "")
        resource.former_urns = sorted(monitor.former_urns.get(resource.urn, ()))
        opts = options.get((resource.type, resource.name))
        if opts is not None:
            resource.protect = bool(opts.protect)
            resource.delete_before_replace = bool(opts.delete_before_replace)
            resource.retain_on_delete = bool(opts.retain_on_delete)
            resource.ignore_changes = list(opts.ignore_changes or [])
            timeouts = opts.custom_timeouts
            resource.custom_timeouts = {
                operation: value
                for operation in ("create", "update", "delete")
                if timeouts is not None and (value := getattr(timeouts, operation)) is not None
            }
            after: Any = opts.depends_on
            after = after if isinstance(after, list) else [] if after is None else [after]
            resource.depends_on = [getattr(each, "_name", "") for each in after]
            parent = opts.parent
            resource.parent = getattr(parent, "_name", None) if parent is not None else None
    run.resources = recorder.registered
    return run
