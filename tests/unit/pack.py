"""The policy pack's rules (policy/pack) run as the Pulumi engine runs them, without the engine:
a resource rule's check on one resource's props (`violations`), a resource as a stack rule is
handed it (`stack_resource`), and every rule of the pack on what a program run registered, with
its stack's pack config (`pack_findings`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from harness.program import ProgramRun
from mlstack_policy.pack import policies
from tests.paths import POLICY_PACK


def options() -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=False,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
    )


def violations(
    check: Any,
    resource_type: str,
    props: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    stack: str = "t",
    *,
    project: str = "mlstack",
) -> list[str]:
    """What a resource rule's `check` reports on a resource of `resource_type` with `props` in
    the stack `stack` of `project`, given the rule's `config`."""
    found: list[str] = []

    def report(message: str, urn: str | None = None) -> None:
        found.append(message)

    urn = f"urn:pulumi:{stack}::{project}::{resource_type}::x"
    args = ResourceValidationArgs(resource_type, props, urn, "x", options(), None, config)
    check(args, report)
    return found


def stack_resource(resource_type: str, props: Mapping[str, Any], name: str) -> PolicyResource:
    return PolicyResource(resource_type, props, f"urn:{name}", name, options(), None, None, [], {})


def pack_config(stack: str) -> dict[str, Any]:
    path = POLICY_PACK / "config" / f"{stack}.json"
    found: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return found


def pack_findings(run: ProgramRun) -> list[str]:
    """Every finding of every rule of the pack, mandatory or advisory, on what `run`
    registered, with the pack config of its stack."""
    config = pack_config(run.stack)
    found: list[str] = []
    for policy in policies():
        settings = config.get(policy.name) or {}
        if isinstance(policy, ResourceValidationPolicy):
            for resource in run.resources:
                for message in violations(
                    policy.validate, resource.type, resource.inputs, settings, run.stack
                ):
                    found.append(f"{policy.name}: {message}")
        elif isinstance(policy, StackValidationPolicy):
            resources = [stack_resource(r.type, r.inputs, r.name) for r in run.resources]
            name = policy.name

            def report(message: str, urn: str | None = None, name: str = name) -> None:
                found.append(f"{name}: {message}")

            policy.validate(StackValidationArgs(resources, settings), report)
    return found
