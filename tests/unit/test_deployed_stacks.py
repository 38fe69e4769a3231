"""A newer program does not replace or delete what a deployed stack holds: each stack file's
resources that keep data or an address are still there under the URNs recorded in
tests/unit/deployed/<stack>.json, with the fields whose change replaces them unchanged
(tests/unit/deployed/__init__.py says which). New resources are free."""

from __future__ import annotations

import copy
import dataclasses

from components.stack_file import stacks
from harness.program import ProgramRun
from tests.unit import deployed
from tests.unit.runs import single


def test_every_stack_file_has_a_record() -> None:
    assert deployed.recorded_stacks() == stacks(), (
        f"tests/unit/deployed/ records {deployed.recorded_stacks()}, the stack files are "
        f"{stacks()}: `{deployed.WRITE_COMMAND}`"
    )


def test_a_pulumi_up_keeps_what_the_deployed_stack_holds(stack_run: ProgramRun) -> None:
    found = deployed.differences(stack_run.stack, deployed.load(stack_run.stack), stack_run)
    assert not found, "\n".join([*found, deployed.HOW_TO_PROCEED])


def test_the_record_holds_the_stateful_resources_and_nothing_of_a_run_s_own(
    stack_run: ProgramRun,
) -> None:
    recorded = deployed.load(stack_run.stack)
    database = stack_run.one("StatefulSet", "database")
    assert database.urn in recorded
    # The full chain of parents, the stack's own type left out, as the engine builds it.
    assert database.urn == (
        f"urn:pulumi:{stack_run.stack}::mlstack::mlstack:app:MlApp$mlstack:app:Database"
        "$kubernetes:apps/v1:StatefulSet::mlstack-database"
    )
    for kind in ("Namespace", "PersistentVolumeClaim", "Service", "Secret"):
        for resource in stack_run.of_kind(kind):
            assert resource.urn in recorded, resource.urn
    text = deployed.dump(recorded)
    for value in ("@sha256:", "test-", "/root", "/home"):
        assert value not in text, value


def test_a_renamed_claim_template_or_service_name_fails_saying_what_up_would_do(
    stack_run: ProgramRun,
) -> None:
    """The comparison on this run's own record, with the StatefulSet's serviceName and a claim's
    object name as an older program had them."""
    recorded = copy.deepcopy(deployed.record(stack_run))
    database = stack_run.one("StatefulSet", "database")
    recorded[database.urn]["fields"]["spec.serviceName"] = "database-peers"
    claim = stack_run.one("PersistentVolumeClaim", "data-database-0")
    recorded[claim.urn]["fields"]["metadata.name"] = "pgdata-database-0"
    gone = claim.urn.replace("::mlstack-database-data", "::mlstack-database-pgdata")
    recorded[gone] = recorded[claim.urn]
    found = deployed.differences(stack_run.stack, recorded, stack_run)
    assert found == [
        f'{stack_run.stack}: {database.urn}: spec.serviceName was "database-peers", is now '
        f'"database-headless": a pulumi up would {deployed.REPLACED_FIRST}.',
        f'{stack_run.stack}: {claim.urn}: metadata.name was "pgdata-database-0", is now '
        f'"data-database-0": a pulumi up would {deployed.REPLACED_FIRST}.',
        f"{stack_run.stack}: {gone} is gone: a pulumi up would {deployed.DELETED}.",
    ]


def test_a_field_the_program_stops_ignoring_fails(stack_run: ProgramRun) -> None:
    """The StatefulSet's claim templates are left as they were made (ignore_changes): a program
    that compares them again would replace it for any difference."""
    database = stack_run.one("StatefulSet", "database")
    assert "spec.volumeClaimTemplates" in deployed.record(stack_run)[database.urn]["ignoreChanges"]
    comparing = dataclasses.replace(
        stack_run,
        resources=[
            dataclasses.replace(r, ignore_changes=[]) if r is database else r
            for r in stack_run.resources
        ],
    )
    found = deployed.differences(stack_run.stack, deployed.load(stack_run.stack), comparing)
    assert [line.split(": ")[2] for line in found] == [
        "spec.volumeClaimTemplates is no longer in ignore_changes"
    ]


def test_a_new_resource_does_not_fail(stack_run: ProgramRun) -> None:
    recorded = deployed.load(stack_run.stack)
    namespace = single(stack_run, "kubernetes:core/v1:Namespace")
    del recorded[namespace.urn]
    assert deployed.differences(stack_run.stack, recorded, stack_run) == []
