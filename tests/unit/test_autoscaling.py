"""Autoscaling: a stack that sets `<service>.autoscaling` gets a HorizontalPodAutoscaler on CPU
for that service's Deployment, whose replica count the program then leaves to it after creation;
a stack without it keeps `replicas` as a fixed count that every `pulumi up` takes back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components import rollout
from components.config import MAX_AUTOSCALED_REPLICAS
from harness.program import ProgramRun, Registered, run_program, stack_config
from tests.manifests import pod_spec
from tests.unit.configs import config_error, dev_with
from tools.drift import covers, parse_path

SERVICES = ("gateway", "model")


def autoscaled(stack: str) -> dict[str, dict[str, Any]]:
    """The services a stack file autoscales, with their config."""
    config = stack_config(stack)
    return {
        name: config[f"mlstack:{name}"]
        for name in SERVICES
        if config[f"mlstack:{name}"].get("autoscaling") is not None
    }


def autoscalers(run: ProgramRun) -> list[Registered]:
    return run.of_kind("HorizontalPodAutoscaler")


def dev_autoscaling(service: str, **scaling: Any) -> ProgramRun:
    config = dev_with(**{service: {"replicas": 1, "autoscaling": scaling}})
    return run_program("dev", config)


def test_prod_autoscales_both_services_and_dev_neither() -> None:
    assert set(autoscaled("prod")) == {"gateway", "model"}
    assert autoscaled("dev") == {}


def test_a_stack_has_an_autoscaler_for_each_service_it_autoscales(stack_run: ProgramRun) -> None:
    wanted = autoscaled(stack_run.stack)
    found = {hpa.metadata["name"]: hpa for hpa in autoscalers(stack_run)}
    assert set(found) == set(wanted)
    for name, config in wanted.items():
        hpa = found[name]
        assert hpa.type == "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
        spec = hpa.inputs["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert spec["minReplicas"] == config["replicas"]
        assert spec["maxReplicas"] == config["autoscaling"]["maxReplicas"]
        (metric,) = spec["metrics"]
        assert metric == {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {
                    "type": "Utilization",
                    "averageUtilization": config["autoscaling"]["cpuUtilization"],
                },
            },
        }


def test_every_autoscaled_workload_requests_cpu(stack_run: ProgramRun) -> None:
    # Utilisation is a share of the CPU request: a container without one leaves the HPA blind.
    for hpa in autoscalers(stack_run):
        target = hpa.inputs["spec"]["scaleTargetRef"]
        workload = stack_run.one(target["kind"], target["name"])
        for container in pod_spec(workload.inputs)["containers"]:
            assert container["resources"]["requests"]["cpu"], container["name"]


def test_only_an_autoscaled_deployment_leaves_its_replicas_to_the_autoscaler(
    stack_run: ProgramRun,
) -> None:
    wanted = autoscaled(stack_run.stack)
    for name in SERVICES:
        deployment = stack_run.one("Deployment", name)
        expected = ["spec.replicas"] if name in wanted else []
        assert deployment.ignore_changes == expected, name
        # Created at the floor either way; the config still wins back every other field.
        assert (
            deployment.inputs["spec"]["replicas"]
            == stack_config(stack_run.stack)[f"mlstack:{name}"]["replicas"]
        )
        assert deployment.metadata["annotations"][rollout.PATCH_FORCE] == "true"


def test_the_autoscaler_s_replica_count_is_not_drift_and_a_fixed_count_s_is() -> None:
    # `make drift` honours the ignoreChanges the state records; the provider names the moved
    # count `spec.replicas` in its refresh diff.
    moved = parse_path("spec.replicas")
    run = dev_autoscaling("model", maxReplicas=3)
    model_rules = [parse_path(rule) for rule in run.one("Deployment", "model").ignore_changes]
    gateway_rules = [parse_path(rule) for rule in run.one("Deployment", "gateway").ignore_changes]
    assert any(covers(rule, moved) for rule in model_rules)
    assert not any(covers(rule, moved) for rule in gateway_rules)
    # Nothing else of the Deployment is let go.
    assert not any(covers(rule, parse_path("spec.template")) for rule in model_rules)


def test_an_empty_autoscaling_object_takes_the_defaults() -> None:
    run = run_program("dev", dev_with(model={"replicas": 2, "autoscaling": {}}))
    spec = run.one("HorizontalPodAutoscaler", "model").inputs["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 6)
    assert spec["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_the_default_ceiling_stays_within_the_bound() -> None:
    run = run_program("dev", dev_with(gateway={"replicas": 9, "autoscaling": {}}))
    spec = run.one("HorizontalPodAutoscaler", "gateway").inputs["spec"]
    assert spec["maxReplicas"] == MAX_AUTOSCALED_REPLICAS


def test_scale_down_stabilisation_comes_from_the_config() -> None:
    run = dev_autoscaling("gateway", maxReplicas=4, scaleDownStabilizationSeconds=15)
    spec = run.one("HorizontalPodAutoscaler", "gateway").inputs["spec"]
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 15
    assert spec["minReplicas"] == 1


@pytest.mark.parametrize("service", ["gateway", "model"])
def test_a_fixed_count_from_one_to_two_changes_the_count_alone(service: str) -> None:
    """The pod template is the same for one pod and for several: a new count scales, it does not
    roll every pod."""
    one, two = (
        run_program("dev", dev_with(**{service: {"replicas": count}})).one("Deployment", service)
        for count in (1, 2)
    )
    assert (one.inputs["spec"]["replicas"], two.inputs["spec"]["replicas"]) == (1, 2)
    assert one.inputs["spec"]["template"] == two.inputs["spec"]["template"]


def test_a_floor_of_one_under_autoscaling_still_plans_for_several_pods() -> None:
    # One pod now, up to three later: the disruption budget and the spreading must be there
    # before the autoscaler adds the second.
    run = dev_autoscaling("model", maxReplicas=3)
    assert run.one("PodDisruptionBudget", "model").inputs["spec"]["maxUnavailable"] == 1
    assert pod_spec(run.one("Deployment", "model").inputs)["topologySpreadConstraints"]


def test_without_autoscaling_one_replica_has_no_budget_and_no_autoscaler(dev: ProgramRun) -> None:
    assert autoscalers(dev) == []
    budgets = {b.metadata["name"] for b in dev.of_kind("PodDisruptionBudget")}
    assert budgets.isdisjoint(SERVICES)


@pytest.fixture(scope="module")
def dev() -> ProgramRun:
    return run_program("dev")


def test_eks_clusters_get_metrics_server_as_an_add_on() -> None:
    run = run_program("staging")
    assert stack_config("staging")["mlstack:cluster"]["provider"] == "eks"
    (addon,) = [
        a for a in run.by_type("eks:index:Addon") if a.inputs["addonName"] == "metrics-server"
    ]
    assert addon.inputs["cluster"].endswith("eks:index:Cluster::mlstack-staging")


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_clusters_with_a_metrics_server_of_their_own_get_no_add_on(stack: str) -> None:
    # k3s ships metrics-server; GKE runs it.
    assert run_program(stack).by_type("eks:index:Addon") == []


# --- config errors ------------------------------------------------------------------------------


def scaling_error(service: str, replicas: int, scaling: Any) -> str:
    return config_error(dev_with(**{service: {"replicas": replicas, "autoscaling": scaling}}))


@pytest.mark.parametrize("maximum", [1, 21, 0, "3", True, 2.5])
def test_the_ceiling_is_from_the_floor_to_the_bound(maximum: Any) -> None:
    message = scaling_error("model", 2, {"maxReplicas": maximum})
    assert message.startswith(f"mlstack:model.autoscaling.maxReplicas: {json.dumps(maximum)} ")
    assert "from model.replicas (2, the floor) to 20" in message


@pytest.mark.parametrize("target", [0, 101, -5, "70", 70.5])
def test_the_cpu_target_is_a_percentage(target: Any) -> None:
    message = scaling_error("gateway", 1, {"maxReplicas": 3, "cpuUtilization": target})
    assert message.startswith("mlstack:gateway.autoscaling.cpuUtilization: ")
    assert "whole number from 1 to 100" in message


@pytest.mark.parametrize("seconds", [-1, 3601, "60"])
def test_scale_down_stabilisation_is_up_to_an_hour(seconds: Any) -> None:
    message = scaling_error("model", 1, {"scaleDownStabilizationSeconds": seconds})
    assert message.startswith("mlstack:model.autoscaling.scaleDownStabilizationSeconds: ")
    assert "whole number from 0 to 3600" in message


def test_a_misspelt_autoscaling_key_names_the_nearest_known_one() -> None:
    message = scaling_error("model", 1, {"maxReplica": 3})
    assert message == (
        'mlstack:model.autoscaling: unknown key "maxReplica" (did you mean "maxReplicas"?); '
        "known keys: maxReplicas, cpuUtilization, scaleDownStabilizationSeconds"
    )


def test_autoscaling_is_an_object() -> None:
    message = scaling_error("gateway", 1, True)
    assert message.startswith(
        "mlstack:gateway.autoscaling: true is not allowed: expected an object"
    )


def test_a_floor_above_the_bound_cannot_autoscale() -> None:
    message = scaling_error("model", 25, {})
    assert message.startswith("mlstack:model.replicas: 25 is not allowed: under autoscaling")


def test_a_misspelt_autoscaling_section_is_named() -> None:
    message = config_error(dev_with(model={"replicas": 1, "autoScaling": {}}))
    assert 'unknown key "autoScaling" (did you mean "autoscaling"?)' in message
