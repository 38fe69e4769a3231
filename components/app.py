"""`MlApp`: the whole application in its own namespace: images, secrets, database, the schema's
migrations, model, gateway and the network policies between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import pulumi
import pulumi_kubernetes as k8s

from components import database, pod
from components.backup_repository import Repository, backup_repository
from components.cluster import Cluster
from components.config import MODEL_DRAIN_SECONDS, OLDEST_KUBERNETES, StackConfig
from components.database import Database, DatabaseArgs
from components.image import SERVICES, ServiceImage, ServiceImageArgs
from components.labels import APP, labels, metadata
from components.microservice import (
    CONTAINER_PORT,
    SERVICE_PORT,
    TLS_SERVICE_PORT,
    Microservice,
    MicroserviceArgs,
)
from components.migrations import SchemaMigrations, SchemaMigrationsArgs
from components.network_policy import (
    ApiServerRoute,
    NetworkPolicies,
    NetworkPoliciesArgs,
    Route,
)

MODEL_NAME: Final = "iris"
MODEL_SERVICE: Final = "model"
API_KEY: Final = "api-key"
# The key a rotation replaces, accepted beside API_KEY until it is removed (README, "Rotating the
# API key").
API_KEY_PREVIOUS: Final = "api-key-previous"
DATABASE_URL: Final = "database-url"
DATABASE_READ_URL: Final = "database-read-url"
# The Secrets' names. Workloads mount them by these names, not by the Secrets' outputs: a Secret
# is replaced when its data changes, and a workload that took its output would be replaced too
# (deleted first); instead, a keyed digest of the values in the pod template rolls the pods.
DATABASE_SECRET: Final = "database"
GATEWAY_SECRET: Final = "gateway"
# The owner's connection URL, for the gateway's migrations Job alone.
MIGRATIONS_SECRET: Final = "gateway-migrations"
# The Job that brings the schema up to date (the gateway's pods start beside it), and its pods'
# label.
MIGRATIONS: Final = "gateway-migrate"
GATEWAY_TLS_SECRET: Final = "gateway-tls"
GATEWAY_RESOURCES: Final = pod.Resources("100m", "128Mi", "1", "256Mi")
# The gateway's /metrics: a port of its own, never on the Service.
METRICS_PORT: Final = 9090
# Pod Security admission evaluates pods by the rules of this release, not `latest`, so a cluster
# upgrade never starts refusing pods: the oldest Kubernetes minor mlstack supports.
POD_SECURITY_VERSION: Final = f"v{OLDEST_KUBERNETES}"
MODEL_RESOURCES: Final = pod.Resources("200m", "256Mi", "1", "512Mi")


@dataclass(frozen=True)
class MlAppArgs:
    config: StackConfig
    cluster: Cluster


class MlApp(pulumi.ComponentResource):
    namespace: pulumi.Output[str]
    gateway_url: pulumi.Output[str]
    images: pulumi.Output[dict[str, str]]

    def __init__(self, name: str, args: MlAppArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlstack:app:MlApp", name, None, opts)
        config, cluster = args.config, args.cluster
        # Every Kubernetes object and component of the app (the database's claims among their
        # children) is made after what the cluster makes for it, and deleted before.
        on_cluster = pulumi.ResourceOptions(
            parent=self, provider=cluster.provider, depends_on=list(cluster.prerequisites)
        )
        namespace = _namespace(name, config, on_cluster)
        app = _AppContext(name, config, namespace.metadata.name, on_cluster)
        images = self._images(config, cluster)
        # The backups' repository: its secret options are entries of the database Secret.
        repository = backup_repository(config, cluster, self)
        db = _database(app, images["database"], repository)
        _schema_migrations(app, images["gateway"], db)
        _model_service(app, images["model"])
        gateway = _gateway_service(app, images["gateway"], db)
        _network_policies(app, repository)

        self.namespace = app.namespace
        self.gateway_url = gateway_url(gateway.service, cluster.local_gateway_url)
        self.images = pulumi.Output.all(
            gateway=images["gateway"],
            model=images["model"],
            database=images["database"],
        )
        self.register_outputs(
            {"namespace": self.namespace, "gateway_url": self.gateway_url, "images": self.images}
        )

    def _images(self, config: StackConfig, cluster: Cluster) -> dict[str, pulumi.Input[str]]:
        """Each service's image reference, by service: built and pushed, or as configured."""
        if not config.images.build:
            return {
                "gateway": config.images.gateway,
                "model": config.images.model,
                "database": config.images.database,
            }
        registry: pulumi.Input[str] = config.images.registry or cluster.image_registry or ""
        built = [
            ServiceImage(
                f"{config.stack}-{service}",
                ServiceImageArgs(
                    service=service,
                    project=config.project,
                    stack=config.stack,
                    registry=registry,
                ),
                pulumi.ResourceOptions(parent=self),
            )
            for service in SERVICES
        ]
        return {service: image.ref for service, image in zip(SERVICES, built, strict=True)}


@dataclass(frozen=True)
class _AppContext:
    """What each part of an `MlApp` is made with: the app's name (its children's names start
    with it), the stack's config, the namespace and the options every Kubernetes object takes
    (a child of the app, on the cluster's provider)."""

    name: str
    config: StackConfig
    namespace: pulumi.Output[str]
    opts: pulumi.ResourceOptions

    @property
    def stack(self) -> str:
        return self.config.stack

    @property
    def zone_spread(self) -> bool:
        """Whether instances spread across zones: on the cloud clusters only."""
        return self.config.cluster.provider in ("gke", "eks")

    def secret(
        self,
        part: str,
        secret_name: str,
        data: dict[str, pulumi.Input[str]],
        secret_type: str = "Opaque",
    ) -> k8s.core.v1.Secret:
        """Secret `secret_name` of `part` (`app.kubernetes.io/name`) in the app's namespace."""
        return k8s.core.v1.Secret(
            f"{self.name}-{secret_name}",
            metadata=metadata(secret_name, self.namespace, part, self.stack),
            type=secret_type,
            string_data=data,
            opts=self.opts,
        )


def _namespace(
    name: str, config: StackConfig, opts: pulumi.ResourceOptions
) -> k8s.core.v1.Namespace:
    """The stack's Namespace, where Pod Security admits `restricted` pods only. Protected as the
    database's volumes are: deleting a namespace deletes every claim in it, protected or not, and
    a new `namespace` would otherwise be made and the old one left for deletion when the claims'
    own protection stops the `pulumi up` (the next one deletes it first)."""
    return k8s.core.v1.Namespace(
        name,
        metadata={
            "name": config.namespace,
            "labels": {
                **labels(APP, config.stack),
                # Pod Security admission refuses any pod that is not `restricted`.
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": POD_SECURITY_VERSION,
                "pod-security.kubernetes.io/audit": "restricted",
                "pod-security.kubernetes.io/warn": "restricted",
            },
        },
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(protect=config.protect)),
    )


def _database(
    app: _AppContext, image: pulumi.Input[str], repository: Repository | None
) -> Database:
    """The database, after its Secret: the roles' passwords and the backup repository's secret
    options."""
    config = app.config
    secrets: dict[str, pulumi.Input[str]] = {
        database.OWNER_PASSWORD_KEY: config.database_owner_password,
        database.GATEWAY_PASSWORD_KEY: config.database_password,
        database.REPLICATION_PASSWORD_KEY: config.replication_password,
        database.REWIND_PASSWORD_KEY: config.rewind_password,
    }
    if repository is not None:
        secrets |= repository.secrets
    secret = app.secret("database", DATABASE_SECRET, secrets)
    return Database(
        f"{app.name}-database",
        DatabaseArgs(
            stack=app.stack,
            namespace=app.namespace,
            storage_size=config.database.storage_size,
            storage_class=config.database.storage_class,
            image=image,
            secret_name=DATABASE_SECRET,
            secrets_checksum=pod.secrets_checksum(secrets, config.secrets_digest_key),
            # The repository's bucket and identity too, so that the first archive finds
            # them.
            after=(secret, *(repository.resources if repository else ())),
            replicas=config.database.replicas,
            zone_spread=app.zone_spread,
            protect=config.protect,
            backup=repository.args if repository else None,
        ),
        app.opts,
    )


def _database_url(
    host: pulumi.Input[str], user: str, password: pulumi.Input[str]
) -> pulumi.Output[str]:
    """The URL `user` connects to the database at `host` with."""
    parts = pulumi.Output.all(host=host, password=password)
    return parts.apply(lambda p: database.connection_url(p["host"], p["password"], user=user))


def _schema_migrations(app: _AppContext, image: pulumi.Input[str], db: Database) -> None:
    """The Job that brings the gateway's schema up to date, after its Secret: the owner's
    connection URL."""
    config = app.config
    secrets: dict[str, pulumi.Input[str]] = {
        DATABASE_URL: _database_url(db.host, database.OWNER, config.database_owner_password),
    }
    secret = app.secret("gateway", MIGRATIONS_SECRET, secrets)
    # The schema, as the database's owner. The gateway's pods do not wait for it to start:
    # a new version's pods are Ready only once the schema they need is there.
    SchemaMigrations(
        f"{app.name}-migrations",
        SchemaMigrationsArgs(
            name=MIGRATIONS,
            stack=app.stack,
            namespace=app.namespace,
            image=image,
            command=("python", "-m", "mlstack_gateway.migrate"),
            secret_name=MIGRATIONS_SECRET,
            secrets_checksum=pod.secrets_checksum(secrets, config.secrets_digest_key),
            resources=GATEWAY_RESOURCES,
            env={"DATABASE_URL_FILE": pod.secret_file(DATABASE_URL)},
            after=(secret,),
        ),
        app.opts,
    )


def _model_service(app: _AppContext, image: pulumi.Input[str]) -> Microservice:
    """The model: the configured version of the classifier, over REST and gRPC."""
    config = app.config
    return Microservice(
        f"{app.name}-model",
        MicroserviceArgs(
            name=MODEL_SERVICE,
            stack=app.stack,
            namespace=app.namespace,
            image=image,
            service=config.model,
            liveness_path="/v2/health/live",
            readiness_path="/v2/health/ready",
            resources=MODEL_RESOURCES,
            env={"MODEL_NAME": MODEL_NAME, "MODEL_VERSION": config.model.version},
            drain_seconds=MODEL_DRAIN_SECONDS,
            zone_spread=app.zone_spread,
            grpc=True,
        ),
        app.opts,
    )


def _gateway_env() -> dict[str, str]:
    """The gateway's environment: the model it calls, and where its secrets are mounted."""
    return {
        "MODEL_NAME": MODEL_NAME,
        # The model Service's name; the gateway's readiness waits for it to answer.
        "MODEL_URL": f"http://{MODEL_SERVICE}:{SERVICE_PORT}",
        "MLSTACK_API_KEY_FILE": pod.secret_file(API_KEY),
        "DATABASE_URL_FILE": pod.secret_file(DATABASE_URL),
        # GET /api/v1/predictions reads from the standbys, within a bound on their lag
        # (README, "High availability": "Writes and reads").
        "DATABASE_READ_URL_FILE": pod.secret_file(DATABASE_READ_URL),
        # Named whether or not a rotation is under way (no file: no previous key), so that
        # a container that restarts reads whatever set of keys the Secret holds then.
        "MLSTACK_API_KEY_PREVIOUS_FILE": pod.secret_file(API_KEY_PREVIOUS),
        # The schema is the migrations Job's: the gateway's role may not change it.
        "DATABASE_MIGRATE": "false",
    }


def _gateway_service(app: _AppContext, image: pulumi.Input[str], db: Database) -> Microservice:
    """The gateway, after its Secrets: the API keys and its connection URLs, and the TLS
    certificate and key when the stack gives them (rather than an existing Secret's name)."""
    config = app.config
    secrets: dict[str, pulumi.Input[str]] = {
        API_KEY: config.api_key,
        DATABASE_URL: _database_url(db.host, database.GATEWAY_USER, config.database_password),
        DATABASE_READ_URL: _database_url(
            db.read_host, database.GATEWAY_USER, config.database_password
        ),
    }
    if config.api_key_previous is not None:
        secrets[API_KEY_PREVIOUS] = config.api_key_previous
    after = [app.secret("gateway", GATEWAY_SECRET, secrets)]
    # What the gateway's pods read at start: a new value of any of it rolls them.
    read = dict(secrets)
    tls = config.gateway.tls
    tls_secret_name: str | None = None
    if tls is not None and tls.secret_name is not None:
        tls_secret_name = tls.secret_name
    elif tls is not None and tls.certificate is not None and tls.private_key is not None:
        tls_files: dict[str, pulumi.Input[str]] = {
            "tls.crt": tls.certificate,
            "tls.key": tls.private_key,
        }
        read |= tls_files
        after.append(app.secret("gateway", GATEWAY_TLS_SECRET, tls_files, "kubernetes.io/tls"))
        tls_secret_name = GATEWAY_TLS_SECRET
    return Microservice(
        f"{app.name}-gateway",
        MicroserviceArgs(
            name="gateway",
            stack=app.stack,
            namespace=app.namespace,
            image=image,
            service=config.gateway,
            liveness_path="/healthz",
            readiness_path="/readyz",
            resources=GATEWAY_RESOURCES,
            env=_gateway_env(),
            secret_name=GATEWAY_SECRET,
            secrets_checksum=pod.secrets_checksum(read, config.secrets_digest_key),
            after=tuple(after),
            tls_secret_name=tls_secret_name,
            metrics_port=METRICS_PORT,
            source_ranges=config.gateway.source_ranges,
            drain_seconds=config.gateway.drain_seconds,
            zone_spread=app.zone_spread,
        ),
        app.opts,
    )


def _api_server_endpoints(app: _AppContext) -> pulumi.Output[list[tuple[str, int]]]:
    """Where a pod's connection to the `kubernetes` Service goes: the Service's own address and
    port, and where it is sent (its EndpointSlice). Patroni connects to the Service's address;
    a NetworkPolicy enforced after kube-proxy's rewrite sees the API server's, one enforced before
    it (EKS's VPC CNI) the Service's. Read from the cluster at each deploy (a control plane that
    moves shows in `make drift` and the next preview)."""
    api_server = k8s.discovery.v1.EndpointSlice.get(
        f"{app.name}-api-server", "default/kubernetes", opts=app.opts
    )
    service = k8s.core.v1.Service.get(
        f"{app.name}-api-service", "default/kubernetes", opts=app.opts
    )
    # The typed outputs are read before `Output.all`, which would turn them into dicts.
    addresses = api_server.endpoints.apply(
        lambda endpoints: [a for endpoint in endpoints or [] for a in endpoint.addresses]
    )
    ports = api_server.ports.apply(lambda found: [port.port for port in found or []])
    service_addresses = service.spec.apply(
        lambda spec: list(spec.cluster_ips or ([spec.cluster_ip] if spec.cluster_ip else []))
    )
    service_ports = service.spec.apply(lambda spec: [port.port for port in spec.ports or []])
    return pulumi.Output.all(addresses, ports, service_addresses, service_ports).apply(
        lambda found: (
            api_server_addresses(found[0], found[1]) + api_server_addresses(found[2], found[3])
        )
    )


def _routes(config: StackConfig) -> tuple[Route, ...]:
    """The routes between the app's parts (and in from the metrics scrapers) that the network
    policies allow."""
    return (
        Route(source=None, target="gateway", ports=(CONTAINER_PORT,)),
        Route(source="gateway", target="model", ports=(CONTAINER_PORT,)),
        Route(source="gateway", target=database.NAME, ports=(database.PORT,)),
        Route(source=MIGRATIONS, target=database.NAME, ports=(database.PORT,)),
        # Standbys copy, stream and rewind from the primary (any instance may be it), and
        # Patroni's members ask each other's REST API before a promotion.
        Route(
            source=database.NAME,
            target=database.NAME,
            ports=(database.PORT, database.API_PORT),
        ),
        *(
            [
                Route(
                    source=None,
                    target="gateway",
                    ports=(METRICS_PORT,),
                    namespaces=config.gateway.metrics_namespaces,
                    name="gateway-metrics",
                )
            ]
            if config.gateway.metrics_namespaces
            else []
        ),
        # The age of the newest backup, for the same scrapers.
        *(
            [
                Route(
                    source=None,
                    target=database.NAME,
                    ports=(database.BACKUP_METRICS_PORT,),
                    namespaces=config.gateway.metrics_namespaces,
                    name="database-metrics",
                )
            ]
            if config.gateway.metrics_namespaces and config.database.backup
            else []
        ),
    )


def _network_policies(app: _AppContext, repository: Repository | None) -> NetworkPolicies:
    """Default deny in the namespace, then exactly the routes the app uses."""
    return NetworkPolicies(
        f"{app.name}-network",
        NetworkPoliciesArgs(
            stack=app.stack,
            namespace=app.namespace,
            dns=app.config.dns,
            # Patroni's store is the API server.
            api_server=ApiServerRoute(source=database.NAME, endpoints=_api_server_endpoints(app)),
            # The backup repository: archive-push, archive-get and the base backups.
            external=repository.egress if repository else (),
            routes=_routes(app.config),
        ),
        app.opts,
    )


def api_server_addresses(addresses: list[str], ports: list[int | None]) -> list[tuple[str, int]]:
    """Every (address, port) pair of the API server's EndpointSlice, or of its Service."""
    return [
        (address, port)
        for address in addresses
        for port in ports
        if port is not None and address not in ("", "None")
    ]


def load_balancer_host(status: k8s.core.v1.outputs.ServiceStatus | None) -> str | None:
    """The first address a LoadBalancer Service was given (an IP, or a name on EKS), if any."""
    ingress = status.load_balancer.ingress if status and status.load_balancer else None
    if not ingress:
        return None
    return ingress[0].ip or ingress[0].hostname


def _node_port(spec: k8s.core.v1.outputs.ServiceSpec) -> int | None:
    return spec.ports[0].node_port if spec.ports else None


def _scheme_and_port(spec: k8s.core.v1.outputs.ServiceSpec) -> tuple[str, int]:
    port = spec.ports[0].port if spec.ports else SERVICE_PORT
    return ("https" if port == TLS_SERVICE_PORT else "http"), port


def gateway_url(
    service: k8s.core.v1.Service, local_url: pulumi.Output[str] | None
) -> pulumi.Output[str]:
    """The gateway's URL, guarded: a LoadBalancer without an ingress address yet says so."""

    def describe(parts: list[Any]) -> str:
        service_type, name, namespace, host, node_port, (scheme, port), local = parts
        if service_type == "ClusterIP":
            return f"{scheme}://{name}.{namespace}.svc.cluster.local:{port}"
        if service_type == "NodePort":
            return f"{scheme}://<node-address>:{node_port}"
        if not host:
            return "pending: the LoadBalancer has no address yet"
        if local:
            return str(local)
        return f"{scheme}://{host}:{port}"

    # The typed outputs are read before `Output.all`, which would turn them into plain dicts.
    return pulumi.Output.all(
        service.spec.type,
        service.metadata.name,
        service.metadata.namespace,
        service.status.apply(load_balancer_host),
        service.spec.apply(_node_port),
        service.spec.apply(_scheme_and_port),
        local_url,
    ).apply(describe)
