"""The cloud clusters as hardened as their providers' own guides have them, read from the inputs
every cloud stack registers under the mocks: GKE nodes with a least-privilege service account,
Workload Identity, shielded and private nodes, an API endpoint open to the authorized networks
alone, a release channel and a maintenance window; EKS Secrets encrypted with a rotated KMS key,
IMDSv2 one hop away, control-plane audit logs, and the same endpoint rule."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from components.cluster.eks import CONTROL_PLANE_LOGS, STORAGE_CLASS
from components.cluster.gke import NODE_ROLES, service_account_id
from harness.program import (
    AWS_ACCOUNT,
    OIDC_ISSUER,
    ProgramRun,
    Registered,
    auto_name,
    run_program,
    stack_config,
)
from tests.unit.configs import cloud_stacks, config_error, existing_with, with_fields
from tests.unit.runs import single

GKE_CLUSTER = "gcp:container/cluster:Cluster"
GKE_NODES = "gcp:container/nodePool:NodePool"
EKS_CLUSTER = "eks:index:Cluster"
EKS_NODES = "eks:index:ManagedNodeGroup"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def cluster_config(stack: str) -> dict[str, Any]:
    return dict(stack_config(stack)["mlstack:cluster"])


def with_cluster(stack: str, **overrides: Any) -> dict[str, Any]:
    return with_fields(stack_config(stack), "cluster", **overrides)


@pytest.fixture(scope="module", params=cloud_stacks("gke"))
def gke(request: pytest.FixtureRequest) -> ProgramRun:
    return run_program(request.param)


@pytest.fixture(scope="module", params=cloud_stacks("eks"))
def eks(request: pytest.FixtureRequest) -> ProgramRun:
    return run_program(request.param)


def test_every_cloud_provider_has_a_stack_under_test() -> None:
    assert cloud_stacks("gke") and cloud_stacks("eks")


# --- GKE ----------------------------------------------------------------------------------------


def test_gke_nodes_run_as_their_own_least_privilege_account(gke: ProgramRun) -> None:
    project = cluster_config(gke.stack)["project"]
    # The nodes' account is the cluster's own (the backups have one of their own).
    (account,) = [
        a
        for a in gke.by_type("gcp:serviceaccount/account:Account")
        if a.parent == f"mlstack-{gke.stack}"
    ]
    email = f"{account.inputs['accountId']}@{project}.iam.gserviceaccount.com"
    node_config = single(gke, GKE_NODES).inputs["nodeConfig"]
    assert node_config["serviceAccount"] == email
    assert CLOUD_PLATFORM_SCOPE not in node_config["oauthScopes"]
    grants = gke.by_type("gcp:projects/iAMMember:IAMMember")
    assert {g.inputs["role"] for g in grants} == set(NODE_ROLES)
    assert {g.inputs["member"] for g in grants} == {f"serviceAccount:{email}"}
    assert {g.inputs["project"] for g in grants} == {project}


@pytest.mark.parametrize(("purpose", "kept"), [("nodes", 16), ("backups", 14)])
def test_gke_account_ids_keep_as_much_of_the_stack_name_as_the_readme_says(
    purpose: str, kept: int
) -> None:
    """GCP's account ids: 6-30 of [a-z0-9-], from a letter, not ending in `-`. Two stacks
    whose names differ within the first `kept` characters get two accounts."""
    stack = "prod-europe-west1-and-more"
    made = service_account_id(f"mlstack-{stack}", purpose)
    assert re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", made), made
    assert made == f"mlstack-{stack[:kept]}-{purpose}"
    other = stack[: kept - 1] + "x" + stack[kept:]
    assert service_account_id(f"mlstack-{other}", purpose) != made


def test_gke_pods_get_workload_identity_not_the_node_credentials(gke: ProgramRun) -> None:
    project = cluster_config(gke.stack)["project"]
    cluster = single(gke, GKE_CLUSTER).inputs
    assert cluster["workloadIdentityConfig"] == {"workloadPool": f"{project}.svc.id.goog"}
    node_config = single(gke, GKE_NODES).inputs["nodeConfig"]
    assert node_config["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}


def test_gke_nodes_are_shielded(gke: ProgramRun) -> None:
    assert single(gke, GKE_CLUSTER).inputs["enableShieldedNodes"] is True
    shielded = single(gke, GKE_NODES).inputs["nodeConfig"]["shieldedInstanceConfig"]
    assert shielded == {"enableSecureBoot": True, "enableIntegrityMonitoring": True}


def test_gke_nodes_are_private_and_leave_through_nat(gke: ProgramRun) -> None:
    private = single(gke, GKE_CLUSTER).inputs["privateClusterConfig"]
    assert private["enablePrivateNodes"] is True
    nat = single(gke, "gcp:compute/routerNat:RouterNat").inputs
    assert nat["sourceSubnetworkIpRangesToNat"] == "ALL_SUBNETWORKS_ALL_IP_RANGES"
    assert nat["region"] == cluster_config(gke.stack)["region"]


def test_gke_public_endpoint_admits_the_authorized_networks_alone(gke: ProgramRun) -> None:
    networks = cluster_config(gke.stack)["authorizedNetworks"]
    assert networks, "a cloud stack names the networks its API is reached from"
    cluster = single(gke, GKE_CLUSTER).inputs
    authorized = cluster["masterAuthorizedNetworksConfig"]
    assert [block["cidrBlock"] for block in authorized["cidrBlocks"]] == networks
    assert authorized["gcpPublicCidrsAccessEnabled"] is False
    assert cluster["privateClusterConfig"]["enablePrivateEndpoint"] is False


@pytest.mark.parametrize("stack", cloud_stacks("gke"))
def test_gke_without_authorized_networks_has_a_private_endpoint_only(stack: str) -> None:
    run = run_program(stack, with_cluster(stack, authorizedNetworks=[]))
    cluster = single(run, GKE_CLUSTER).inputs
    assert cluster["privateClusterConfig"]["enablePrivateEndpoint"] is True
    assert cluster["masterAuthorizedNetworksConfig"]["cidrBlocks"] == []


def test_gke_upgrades_follow_the_stacks_channel_and_window(gke: ProgramRun) -> None:
    config = cluster_config(gke.stack)
    cluster = single(gke, GKE_CLUSTER).inputs
    assert cluster["releaseChannel"] == {"channel": config.get("releaseChannel", "REGULAR")}
    window = config["maintenanceWindow"]
    recurring = cluster["maintenancePolicy"]["recurringWindow"]
    assert recurring["recurrence"] == f"FREQ=WEEKLY;BYDAY={','.join(window['days'])}"
    assert recurring["startTime"].endswith(f"T{window['start']}:00Z")


@pytest.mark.parametrize("stack", cloud_stacks("gke"))
def test_gke_maintenance_window_spans_its_hours_across_midnight(stack: str) -> None:
    window = {"start": "22:30", "hours": 6, "days": ["SA", "SU"]}
    run = run_program(stack, with_cluster(stack, maintenanceWindow=window))
    recurring = single(run, GKE_CLUSTER).inputs["maintenancePolicy"]["recurringWindow"]
    assert recurring == {
        "startTime": "2024-01-01T22:30:00Z",
        "endTime": "2024-01-02T04:30:00Z",
        "recurrence": "FREQ=WEEKLY;BYDAY=SA,SU",
    }


@pytest.mark.parametrize("stack", cloud_stacks("gke"))
def test_gke_defaults_are_the_regular_channel_and_a_nightly_window(stack: str) -> None:
    config = with_cluster(stack)
    for key in ("releaseChannel", "maintenanceWindow"):
        config["mlstack:cluster"].pop(key, None)
    cluster = single(run_program(stack, config), GKE_CLUSTER).inputs
    assert cluster["releaseChannel"] == {"channel": "REGULAR"}
    recurring = cluster["maintenancePolicy"]["recurringWindow"]
    assert recurring["startTime"] == "2024-01-01T03:00:00Z"
    assert recurring["endTime"] == "2024-01-01T07:00:00Z"
    assert recurring["recurrence"] == "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA,SU"


@pytest.mark.parametrize("stack", cloud_stacks("gke"))
def test_gke_kubernetes_version_is_the_control_plane_s_and_the_nodes_follow_it(stack: str) -> None:
    """`kubernetesVersion` is the control plane's least version. The node pool auto-upgrades to
    the control plane's version: a version of its own too would fight the upgrades (each preview
    after one would take the nodes back to it), as pulumi-gcp's NodePool warns."""
    run = run_program(stack, with_cluster(stack, kubernetesVersion="1.31"))
    assert single(run, GKE_CLUSTER).inputs["minMasterVersion"] == "1.31"
    nodes = single(run, GKE_NODES).inputs
    assert nodes["management"]["autoUpgrade"] is True
    assert "version" not in nodes


@pytest.mark.parametrize("stack", [*cloud_stacks("gke"), *cloud_stacks("eks")])
@pytest.mark.parametrize("version", ["1.30", "1.9", "0.31", "v1.31", "1.31.x", "latest", "1"])
def test_a_kubernetes_version_before_mlstack_s_oldest_is_refused(stack: str, version: str) -> None:
    """The program's objects use APIs from OLDEST_KUBERNETES on (the database's scale-in
    policy, the Pod Security level): an older control plane would be made, then fail them."""
    assert config_error(with_cluster(stack, kubernetesVersion=version)) == (
        f'mlstack:cluster.kubernetesVersion: "{version}" is not allowed: expected a Kubernetes '
        "version from 1.31 on, such as 1.31 (mlstack's oldest)"
    )


@pytest.mark.parametrize("version", ["1.31", "1.33", "1.31.6", "1.31.6-gke.1020000", "2.0"])
def test_a_gke_kubernetes_version_may_name_a_patch(version: str) -> None:
    (stack, *_) = cloud_stacks("gke")
    run = run_program(stack, with_cluster(stack, kubernetesVersion=version))
    assert single(run, GKE_CLUSTER).inputs["minMasterVersion"] == version


def test_an_eks_kubernetes_version_is_a_minor() -> None:
    (stack, *_) = cloud_stacks("eks")
    assert "is not allowed: expected a Kubernetes version from 1.31 on" in config_error(
        with_cluster(stack, kubernetesVersion="1.31.6")
    )


# --- EKS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", cloud_stacks("eks"))
def test_eks_nodes_follow_the_control_plane_to_a_new_kubernetes_version(stack: str) -> None:
    """EKS upgrades no managed node group when its control plane is upgraded, and pulumi-eks
    (4.4) gives the group the cluster's version only when it has no launch template of ours:
    `kubernetesVersion` is the node group's too, which is upgraded after the cluster."""
    run = run_program(stack, with_cluster(stack, kubernetesVersion="1.32"))
    cluster = single(run, EKS_CLUSTER)
    assert cluster.inputs["version"] == "1.32"
    nodes = single(run, EKS_NODES)
    assert nodes.inputs["version"] == "1.32"
    assert f"{EKS_CLUSTER}::{cluster.name}" in nodes.waits_for


@pytest.mark.parametrize("stack", cloud_stacks("eks"))
def test_eks_nodes_without_a_kubernetes_version_are_made_at_the_control_plane_s(
    stack: str,
) -> None:
    """No `kubernetesVersion`: EKS makes the cluster at its default version and the nodes at
    the cluster's."""
    config = with_cluster(stack)
    config["mlstack:cluster"].pop("kubernetesVersion", None)
    run = run_program(stack, config)
    assert "version" not in single(run, EKS_CLUSTER).inputs
    assert "version" not in single(run, EKS_NODES).inputs


def test_eks_secrets_are_encrypted_with_a_rotated_key_of_the_stack(eks: ProgramRun) -> None:
    # The cluster's own key (the backups' bucket has another).
    (key,) = [k for k in eks.by_type("aws:kms/key:Key") if k.parent == f"mlstack-{eks.stack}"]
    assert key.inputs["enableKeyRotation"] is True
    cluster = single(eks, EKS_CLUSTER).inputs
    assert cluster["encryptionConfigKeyArn"].endswith(f"key/{key.name}")


def test_eks_has_an_oidc_provider_for_roles_of_service_accounts(eks: ProgramRun) -> None:
    """A pod acts as an IAM role of its own (the database's backups do), never a key."""
    assert single(eks, EKS_CLUSTER).inputs["createOidcProvider"] is True


def test_eks_nodes_answer_imdsv2_only_one_hop_away(eks: ProgramRun) -> None:
    template = single(eks, "aws:ec2/launchTemplate:LaunchTemplate")
    assert template.inputs["metadataOptions"] == {
        "httpEndpoint": "enabled",
        "httpTokens": "required",
        "httpPutResponseHopLimit": 1,
    }
    nodes = single(eks, EKS_NODES).inputs
    assert nodes["launchTemplate"] == {"id": f"{template.name}-id", "version": "1"}


def test_eks_control_plane_logs_api_calls_audit_and_authentication(eks: ProgramRun) -> None:
    logs = single(eks, EKS_CLUSTER).inputs["enabledClusterLogTypes"]
    assert {"api", "audit", "authenticator"} <= set(logs)
    assert tuple(logs) == CONTROL_PLANE_LOGS


def test_eks_public_endpoint_admits_the_authorized_networks_alone(eks: ProgramRun) -> None:
    networks = cluster_config(eks.stack)["authorizedNetworks"]
    assert networks, "a cloud stack names the networks its API is reached from"
    cluster = single(eks, EKS_CLUSTER).inputs
    assert cluster["endpointPublicAccess"] is True
    assert cluster["publicAccessCidrs"] == networks
    assert cluster["endpointPrivateAccess"] is True


@pytest.mark.parametrize("stack", cloud_stacks("eks"))
def test_eks_without_authorized_networks_has_a_private_endpoint_only(stack: str) -> None:
    cluster = single(run_program(stack, with_cluster(stack, authorizedNetworks=[])), EKS_CLUSTER)
    assert cluster.inputs["endpointPublicAccess"] is False
    assert "publicAccessCidrs" not in cluster.inputs
    assert cluster.inputs["endpointPrivateAccess"] is True


def storage_classes(run: ProgramRun) -> list[Registered]:
    return run.of_kind("StorageClass")


def ancestry(run: ProgramRun, resource: Registered) -> list[Registered]:
    """`resource` and its parents, up to the program's top-level component (whose parent, the
    stack, is registered by no one)."""
    by_name = {r.name: r for r in run.resources if not r.read and r.type.startswith("mlstack:")}
    found = [resource]
    while found[-1].parent in by_name and by_name[found[-1].parent] not in found:
        found.append(by_name[found[-1].parent])
    return found


def test_eks_claims_that_name_no_class_get_ebs_volumes(eks: ProgramRun) -> None:
    """EKS provisions EBS volumes through the EBS CSI driver alone (the in-tree provisioner is
    gone since 1.23) and from 1.30 marks no StorageClass the default: without the driver and a
    default class, the database's claims, which name no class here, never bind."""
    assert "storageClass" not in stack_config(eks.stack)["mlstack:database"]
    claim = eks.one("PersistentVolumeClaim", "data-database-0")
    assert "storageClassName" not in claim.inputs["spec"]
    addons = {a.inputs["addonName"]: a for a in eks.by_type("eks:index:Addon")}
    driver = addons["aws-ebs-csi-driver"]
    # The application, claims included, waits for the driver (through the cluster's provider).
    (provider,) = [r for r in eks.resources if r.name == f"mlstack-{eks.stack}-k8s"]
    assert f"eks:index:Addon::{driver.name}" in provider.waits_for


def test_eks_default_class_is_the_program_s_encrypted_gp3_that_grows(eks: ProgramRun) -> None:
    """The class a claim without one gets is the program's: EBS gp3 volumes encrypted at rest
    whatever the AWS account's settings (with the account's EBS key: no `kmsKeyId`, so with
    `aws/ebs` the driver's role needs no KMS grant of its own), which grow in place when
    `storageSize` does, each made in the zone of the node its pod is scheduled on. It is made on
    the cluster itself, through its provider."""
    (storage_class,) = storage_classes(eks)
    assert storage_class.inputs["provisioner"] == "ebs.csi.aws.com"
    assert storage_class.inputs["parameters"] == {"type": "gp3", "encrypted": "true"}
    assert storage_class.inputs["allowVolumeExpansion"] is True
    assert storage_class.inputs["volumeBindingMode"] == "WaitForFirstConsumer"
    assert storage_class.inputs["reclaimPolicy"] == "Delete"
    assert storage_class.metadata["name"] == STORAGE_CLASS
    assert f"::mlstack-{eks.stack}-k8s::" in (storage_class.provider or "")
    assert storage_class.parent == f"mlstack-{eks.stack}"


def test_eks_program_s_class_is_the_only_default(eks: ProgramRun) -> None:
    """The add-on's own default class (`ebs-csi-default-sc`, unencrypted) is turned off: two
    defaults would leave the choice to Kubernetes."""
    defaults = [
        c
        for c in storage_classes(eks)
        if (c.metadata.get("annotations") or {}).get("storageclass.kubernetes.io/is-default-class")
        == "true"
    ]
    assert [c.metadata["name"] for c in defaults] == [STORAGE_CLASS]
    driver = next(
        a for a in eks.by_type("eks:index:Addon") if a.inputs["addonName"] == "aws-ebs-csi-driver"
    )
    assert driver.inputs["configurationValues"] == {"defaultStorageClass": {"enabled": False}}


def test_eks_claims_are_made_after_the_default_class_and_deleted_before_it(
    eks: ProgramRun,
) -> None:
    """The provider cannot wait for what is made through it: the application's objects wait for
    the class instead. A claim is registered after its parent, and the engine deletes a
    resource before its parent and a parent before what it waits for: each claim's component
    waits for the class, so a claim is made on it and a destroy deletes the class last."""
    (storage_class,) = storage_classes(eks)
    waited = f"{storage_class.type}::{storage_class.name}"
    claims = eks.of_kind("PersistentVolumeClaim")
    assert len(claims) == int(stack_config(eks.stack)["mlstack:database"]["replicas"])
    for claim in claims:
        assert any(waited in r.waits_for for r in ancestry(eks, claim)), claim.name
    # Every object and component of the app's on the cluster, not its claims alone.
    on_cluster = [
        r
        for r in eks.resources
        if r.parent == "mlstack"
        and not r.read
        and (r.type.startswith("kubernetes:") or r.type.startswith("mlstack:app:"))
    ]
    assert {r.type for r in on_cluster} >= {"mlstack:app:Database", "kubernetes:core/v1:Namespace"}
    for obj in on_cluster:
        assert waited in obj.waits_for, obj.name


@pytest.mark.parametrize("stack", cloud_stacks("eks"))
def test_eks_stack_that_names_a_class_keeps_it(stack: str) -> None:
    """`database.storageClass` still chooses the claims' class on EKS."""
    config = with_fields(stack_config(stack), "database", storageClass="io2-fast")
    run = run_program(stack, config)
    for claim in run.of_kind("PersistentVolumeClaim"):
        assert claim.inputs["spec"]["storageClassName"] == "io2-fast"


def test_other_clusters_get_no_storage_class_of_the_program_s() -> None:
    """GKE's default (`standard-rwo`) already encrypts and grows, k3s's `local-path` is all a
    laptop has, and an existing cluster's classes are its owner's (README, "Which class, and
    whether it grows")."""
    runs = {stack: run_program(stack) for stack in ("dev", *cloud_stacks("gke"))}
    runs["existing"] = run_program("dev", existing_with())
    for name, run in runs.items():
        assert storage_classes(run) == [], name
        assert run.of_kind("PersistentVolumeClaim"), name


def test_eks_volume_driver_acts_as_a_role_only_its_controller_assumes(eks: ProgramRun) -> None:
    """Its controller creates and attaches the volumes as a role of its own, through the
    cluster's OIDC provider (a pod cannot reach the nodes' role), with AWS's policy for it."""
    driver = next(
        a for a in eks.by_type("eks:index:Addon") if a.inputs["addonName"] == "aws-ebs-csi-driver"
    )
    (role,) = [r for r in eks.by_type("aws:iam/role:Role") if r.name == driver.name]
    assert (
        driver.inputs["serviceAccountRoleArn"]
        == f"arn:aws:iam::{AWS_ACCOUNT}:role/{auto_name(role.name)}"
    )
    (statement,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert statement["Principal"] == {
        "Federated": f"arn:aws:iam::{AWS_ACCOUNT}:oidc-provider/{OIDC_ISSUER}"
    }
    assert statement["Condition"]["StringEquals"] == {
        f"{OIDC_ISSUER}:sub": "system:serviceaccount:kube-system:ebs-csi-controller-sa",
        f"{OIDC_ISSUER}:aud": "sts.amazonaws.com",
    }
    (grant,) = [
        a
        for a in eks.by_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if a.inputs.get("role") == auto_name(role.name)
    ]
    assert grant.inputs["policyArn"] == (
        "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
    )
    assert f"{grant.type}::{grant.name}" in driver.waits_for


def test_eks_components_make_their_aws_resources_in_the_cluster_s_region(eks: ProgramRun) -> None:
    """pulumi-eks's components make their AWS resources with the providers they are given: one
    given none makes them with the default provider, in whatever region the environment names
    (a cluster there is not found), or none (the `up` fails). All but the metrics-server add-on,
    which has had the default provider since it was first made: a new provider would replace
    it, and a second one cannot be made beside it (the next test)."""
    region = f"::mlstack-{eks.stack}-aws::"
    components = [r for r in eks.resources if r.type.startswith("eks:index:")]
    assert {r.type for r in components} >= {EKS_CLUSTER, EKS_NODES, "eks:index:Addon"}
    for component in components:
        if component.inputs.get("addonName") == "metrics-server":
            assert "aws" not in component.providers, component.providers
            continue
        assert region in component.providers.get("aws", ""), (component.type, component.name)


def test_eks_refuses_a_default_aws_region_that_is_not_the_cluster_s() -> None:
    """The default AWS provider, which makes the metrics-server add-on, takes its region from
    `aws:region`, else AWS_REGION, else AWS_DEFAULT_REGION: the first one given must be the
    cluster's, or the add-on would be asked for in a region without the cluster."""
    staging = stack_config("staging")
    region = staging["mlstack:cluster"]["region"]
    elsewhere = {"AWS_DEFAULT_REGION": "us-east-1"}
    message = config_error(staging, environment=elsewhere)
    assert message == (
        f"mlstack:cluster.region is {region} but the default AWS provider's region is us-east-1 "
        "(from AWS_DEFAULT_REGION), where the cluster's metrics-server add-on would be asked "
        f"for: `export AWS_DEFAULT_REGION={region}`"
    )
    # AWS_REGION is read before AWS_DEFAULT_REGION.
    run_program("staging", staging, environment={**elsewhere, "AWS_REGION": region})
    message = config_error(
        {**staging, "aws:region": "us-west-2"}, environment={"AWS_REGION": region}
    )
    assert "region is us-west-2 (from aws:region)" in message
    assert message.endswith(f"`pulumi config set aws:region {region}`")


def test_eks_takes_no_default_aws_region_for_a_mistake() -> None:
    """Told no region, the default provider takes the AWS profile's, which the program cannot
    read: nothing to refuse."""
    run_program("staging", environment={})


def test_a_run_under_the_mocks_sees_no_aws_region_of_this_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`make render`, `make policy` and the tests run the program offline: a region exported on
    the machine that runs them is none of the stack's, and is not refused."""
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    run_program("staging")
