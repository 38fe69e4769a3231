"""The pack: each rule with its name, why a reviewer asks for it, and whether it blocks.

Mandatory rules fail `pulumi preview` and `pulumi up`; advisory ones are reported and let the
update go on. A stack's settings come from `--policy-pack-config` (policy/pack/config/<stack>.json):
`make preview` and `make up` pass it when the file exists, the workflows always (README, "Policy
gates: the pack at preview time").
"""

from __future__ import annotations

import inspect
from typing import Any, Final

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyConfigSchema,
    PolicyPack,
    ResourceValidation,
    ResourceValidationPolicy,
    StackValidation,
    StackValidationPolicy,
)

from . import availability, clusters, services, workloads
from .kube import each_object

NAME: Final = "mlstack"
MANDATORY: Final = EnforcementLevel.MANDATORY
ADVISORY: Final = EnforcementLevel.ADVISORY

# The settings a rule takes from the pack config, as JSON-schema properties.
PRODUCTION: Final = {
    "production": {
        "type": "boolean",
        "default": False,
        "description": "The stack serves production traffic (policy/pack/config/prod.json).",
    }
}
ALLOWED_IMAGES: Final = {
    **PRODUCTION,
    "allowedImages": {
        "type": "array",
        "items": {"type": "string"},
        "default": list(workloads.ALLOWED_BY_TAG),
        "description": "Image references accepted by tag, exactly as written.",
    },
}
MIN_REPLICAS: Final = {
    **PRODUCTION,
    "minReplicas": {"type": "integer", "minimum": 1, "default": 2},
}


def policies() -> list[Policy]:
    """Each rule by name and check; what it asks and why is its check's docstring, which the
    engine shows beside every violation."""
    return [
        _mandatory("pod-security-restricted", workloads.check_pod_security),
        _mandatory("container-resources", workloads.check_resources),
        _mandatory("container-probes", workloads.check_probes),
        _mandatory("image-by-digest", workloads.check_image_digest, ALLOWED_IMAGES),
        _mandatory("no-external-model-or-database-service", services.check_internal_services),
        _of_stack(MANDATORY, "no-external-model-or-database-pods", services.check_internal_pods),
        _mandatory("gateway-edge-in-production", services.check_gateway_edge, PRODUCTION),
        _mandatory(
            "no-public-plain-http-in-production", services.check_no_public_plain_http, PRODUCTION
        ),
        _mandatory("gke-node-identity", clusters.check_gke_node_identity),
        _mandatory("gke-private-nodes", clusters.check_gke_private_nodes),
        _mandatory("eks-secrets-encryption", clusters.check_eks_secrets_encryption),
        _mandatory("eks-imdsv2", clusters.check_eks_imdsv2),
        _mandatory("eks-endpoint-access", clusters.check_eks_endpoint_access),
        _advisory(
            "replicas-in-production", availability.check_replicas_in_production, MIN_REPLICAS
        ),
        _advisory("topology-spread", availability.check_topology_spread),
        _of_stack(ADVISORY, "pod-disruption-budget", availability.check_disruption_budgets),
    ]


def _described(check: ResourceValidation | StackValidation) -> str:
    """A check's docstring on one line."""
    return " ".join((inspect.getdoc(check) or "").split())


def _rule(
    level: EnforcementLevel,
    name: str,
    check: ResourceValidation,
    settings: dict[str, Any] | None,
) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name,
        description=_described(check),
        validate=each_object(check),
        enforcement_level=level,
        config_schema=PolicyConfigSchema(properties=settings) if settings else None,
    )


def _of_stack(level: EnforcementLevel, name: str, check: StackValidation) -> StackValidationPolicy:
    """A rule over the whole stack: every resource at once."""
    return StackValidationPolicy(
        name=name, description=_described(check), validate=check, enforcement_level=level
    )


def _mandatory(
    name: str, check: ResourceValidation, settings: dict[str, Any] | None = None
) -> ResourceValidationPolicy:
    """A rule that fails the preview or the update."""
    return _rule(MANDATORY, name, check, settings)


def _advisory(
    name: str, check: ResourceValidation, settings: dict[str, Any] | None = None
) -> ResourceValidationPolicy:
    """A rule that is reported and lets the update go on."""
    return _rule(ADVISORY, name, check, settings)


def serve() -> None:
    """Serve the pack to the engine (prints the port; runs until the engine stops it)."""
    PolicyPack(name=NAME, policies=policies(), enforcement_level=ADVISORY)
