"""Advisory rules: availability practices a team may trade against cost (a dev stack on a laptop
runs one replica of everything, on one node). They read Deployments and StatefulSets alike: the
database's instances are one StatefulSet's pods. A Patch is held to the replica count it sets
alone: whether the object's pods are spread and budgeted is the object's to answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi_policy import ReportViolation, ResourceValidationArgs, StackValidationArgs

from .kube import PDB, REPLICATED, dig, is_patch, named, objects


def _replicas(props: Mapping[str, Any]) -> int:
    value = dig(props, "spec", "replicas")
    return 1 if value is None else int(value)


def check_replicas_in_production(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """In production every Deployment and StatefulSet runs at least `minReplicas` (default 2)
    pods: one pod lost to a node drain or a crash is not an outage (for the database, Patroni
    promotes a standby). A Patch that sets replicas is held to the same floor."""
    config = args.get_config()
    if config.get("production") is not True or args.resource_type not in REPLICATED:
        return
    if is_patch(args.props) and dig(args.props, "spec", "replicas") is None:
        return  # the patch leaves the count as it is
    floor = int(config.get("minReplicas") or 2)
    replicas = _replicas(args.props)
    if replicas < floor:
        subject = named(args.resource_type, args.props)
        report(f"{subject}: {replicas} replica(s), fewer than {floor}", None)


def check_topology_spread(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """A Deployment or StatefulSet of several pods spreads them over nodes, so one node does not
    hold them all (a Patch is not asked)."""
    if args.resource_type not in REPLICATED or is_patch(args.props) or _replicas(args.props) < 2:
        return
    if not dig(args.props, "spec", "template", "spec", "topologySpreadConstraints"):
        subject = named(args.resource_type, args.props)
        report(f"{subject}: {_replicas(args.props)} replicas and no spread", None)


def _selects(selector: Any, labels: Mapping[str, Any]) -> bool:
    wanted = dig(selector, "matchLabels") or {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def check_disruption_budgets(args: StackValidationArgs, report: ReportViolation) -> None:
    """Every Deployment or StatefulSet of several pods has a PodDisruptionBudget: a node drain
    then waits rather than evicting them all at once (a Patch is not asked, nor counted as a
    budget)."""
    made = [
        (resource.urn, kind, props)
        for resource in args.resources
        for kind, props in objects(resource.resource_type, resource.props)
        if not is_patch(props)  # a patch makes neither a workload nor a budget
    ]
    budgets = [
        (dig(props, "metadata", "namespace"), dig(props, "spec", "selector"))
        for _, kind, props in made
        if kind == PDB
    ]
    for urn, kind, props in made:
        if kind not in REPLICATED or _replicas(props) < 2:
            continue
        namespace = dig(props, "metadata", "namespace")
        labels = dig(props, "spec", "template", "metadata", "labels") or {}
        if not any(ns == namespace and _selects(sel, labels) for ns, sel in budgets):
            report(f"{named(kind, props)}: no PodDisruptionBudget selects its pods", urn)
