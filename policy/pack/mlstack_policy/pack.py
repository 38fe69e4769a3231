"""The pack: each rule with its name, why a reviewer asks for it, and whether it blocks.

Mandatory rules fail `pulumi preview` and `pulumi up`; advisory ones are reported and let the
update go on. A stack's settings come from `--policy-pack-config` (policy/pack/config/<stack>.json,
passed by `make preview`/`make up` and the workflows when the file exists).
"""

from __future__ import annotations

from typing import Final

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyConfigSchema,
    PolicyPack,
    ResourceValidationPolicy,
    StackValidationPolicy,
)

from . import availability, clusters, services, workloads

NAME: Final = "mlstack"
MANDATORY: Final = EnforcementLevel.MANDATORY
ADVISORY: Final = EnforcementLevel.ADVISORY

PRODUCTION: Final = {
    "production": {
        "type": "boolean",
        "default": False,
        "description": "The stack serves production traffic (policy/pack/config/prod.json).",
    }
}


def policies() -> list[Policy]:
    return [
        ResourceValidationPolicy(
            name="pod-security-restricted",
            description="Every workload's pods meet the restricted Pod Security Standard: "
            "non-root, read-only root filesystem, no privilege escalation, every capability "
            "dropped, the RuntimeDefault seccomp profile.",
            validate=workloads.check_pod_security,
            enforcement_level=MANDATORY,
        ),
        ResourceValidationPolicy(
            name="container-resources",
            description="Every container has CPU and memory requests and limits.",
            validate=workloads.check_resources,
            enforcement_level=MANDATORY,
        ),
        ResourceValidationPolicy(
            name="container-probes",
            description="Every long-running container has a liveness and a readiness probe.",
            validate=workloads.check_probes,
            enforcement_level=MANDATORY,
        ),
        ResourceValidationPolicy(
            name="image-by-digest",
            description="Every image is referenced by digest (name@sha256:...), unless the "
            "reference is a declared exception (allowedImages; none by default).",
            validate=workloads.check_image_digest,
            enforcement_level=MANDATORY,
            config_schema=PolicyConfigSchema(
                properties={
                    "allowedImages": {
                        "type": "array",
                        "items": {"type": "string"},
                        "default": list(workloads.ALLOWED_BY_TAG),
                        "description": "Image references accepted by tag, exactly as written.",
                    }
                }
            ),
        ),
        ResourceValidationPolicy(
            name="no-external-model-or-database-service",
            description="The model and the database are not exposed by a LoadBalancer or "
            "NodePort Service.",
            validate=services.check_internal_services,
            enforcement_level=MANDATORY,
        ),
        ResourceValidationPolicy(
            name="gateway-edge-in-production",
            description="In production the gateway's public Service has loadBalancerSourceRanges "
            "(not the whole internet) and serves HTTPS.",
            validate=services.check_gateway_edge,
            enforcement_level=MANDATORY,
            config_schema=PolicyConfigSchema(properties=PRODUCTION),
        ),
        ResourceValidationPolicy(
            name="no-public-plain-http-in-production",
            description="In production no LoadBalancer or NodePort Service serves plain HTTP.",
            validate=services.check_no_public_plain_http,
            enforcement_level=MANDATORY,
            config_schema=PolicyConfigSchema(properties=PRODUCTION),
        ),
        ResourceValidationPolicy(
            name="gke-node-identity",
            description="GKE nodes run as their own service account, not the Compute Engine "
            "default, without the cloud-platform scope.",
            validate=clusters.check_gke_node_identity,
            enforcement_level=MANDATORY,
        ),
        ResourceValidationPolicy(
            name="gke-private-nodes",
            description="GKE nodes have private addresses only.",
            validate=clusters.check_gke_private_nodes,
            enforcement_level=MANDATORY,
        ),
        ResourceValidationPolicy(
            name="eks-secrets-encryption",
            description="EKS encrypts Kubernetes Secrets with a KMS key.",
            validate=clusters.check_eks_secrets_encryption,
            enforcement_level=MANDATORY,
        ),
        ResourceValidationPolicy(
            name="eks-imdsv2",
            description="EKS nodes require IMDSv2 (a launch template with httpTokens required).",
            validate=clusters.check_eks_imdsv2,
            enforcement_level=MANDATORY,
        ),
        ResourceValidationPolicy(
            name="eks-endpoint-access",
            description="The EKS API's public endpoint is off or limited to listed CIDRs.",
            validate=clusters.check_eks_endpoint_access,
            enforcement_level=MANDATORY,
        ),
        ResourceValidationPolicy(
            name="replicas-in-production",
            description="In production every Deployment and StatefulSet runs at least "
            "minReplicas pods.",
            validate=availability.check_replicas_in_production,
            enforcement_level=ADVISORY,
            config_schema=PolicyConfigSchema(
                properties={
                    **PRODUCTION,
                    "minReplicas": {"type": "integer", "minimum": 1, "default": 2},
                }
            ),
        ),
        ResourceValidationPolicy(
            name="topology-spread",
            description="A Deployment or StatefulSet of several pods spreads them over nodes.",
            validate=availability.check_topology_spread,
            enforcement_level=ADVISORY,
        ),
        StackValidationPolicy(
            name="pod-disruption-budget",
            description="Every Deployment or StatefulSet of several pods has a "
            "PodDisruptionBudget.",
            validate=availability.check_disruption_budgets,
            enforcement_level=ADVISORY,
        ),
    ]


def serve() -> None:
    """Serve the pack to the engine (prints the port; runs until the engine stops it)."""
    PolicyPack(name=NAME, policies=policies(), enforcement_level=ADVISORY)
