"""`database.replicas`: one primary and streaming standbys, each a StatefulSet of its own, two
Services that select by role, the replication secret, and the policies between instances."""

from __future__ import annotations

from typing import Any

import pytest

from components import database, pod
from harness.program import TEST_SECRETS, ProgramRun, Registered, run_program, stack_config

NAME = "app.kubernetes.io/name"


def run_with(replicas: int, **database_keys: Any) -> ProgramRun:
    config = stack_config("dev")
    config["mlstack:database"] = {
        **config["mlstack:database"],
        "replicas": replicas,
        **database_keys,
    }
    return run_program("dev", config)


def instances(run: ProgramRun) -> dict[str, Registered]:
    return {s.metadata["name"]: s for s in run.of_kind("StatefulSet")}


def template(stateful_set: Registered) -> dict[str, Any]:
    return dict(stateful_set.inputs["spec"]["template"])


def env(stateful_set: Registered) -> dict[str, str]:
    (container,) = template(stateful_set)["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def server_args(stateful_set: Registered) -> dict[str, str]:
    (container,) = template(stateful_set)["spec"]["containers"]
    args = container["args"]
    assert args[0] == "postgres"
    pairs = args[1:]
    assert pairs[::2] == ["-c"] * (len(pairs) // 2)
    return dict(pair.split("=", 1) for pair in pairs[1::2])


@pytest.fixture(scope="module")
def three() -> ProgramRun:
    return run_with(3)


def test_each_instance_is_a_statefulset_of_one_pod_on_its_own_claim(three: ProgramRun) -> None:
    sets = instances(three)
    assert sorted(sets) == ["database", "database-1", "database-2"]
    claims = {c.metadata["name"] for c in three.of_kind("PersistentVolumeClaim")}
    assert claims == {"data-database-0", "data-database-1-0", "data-database-2-0"}
    assert claims == {database.claim_name(i) for i in range(3)}
    for index in range(3):
        stateful_set = sets[database.instance_name(index)]
        assert stateful_set.inputs["spec"]["replicas"] == 1
        assert stateful_set.inputs["spec"]["serviceName"] == database.HEADLESS_NAME
        labels = template(stateful_set)["metadata"]["labels"]
        assert labels[database.INSTANCE_LABEL] == str(index)
        assert labels[database.ROLE_LABEL] == ("primary" if index == 0 else "standby")
        assert env(stateful_set)["DATABASE_ROLE"] == labels[database.ROLE_LABEL]
        selector = stateful_set.inputs["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        assert (database.INSTANCE_LABEL in selector) == (index > 0), (
            "the first instance keeps the selector a one-instance stack was created with"
        )


def test_the_services_select_by_role(three: ProgramRun) -> None:
    def selector(name: str) -> dict[str, str]:
        return dict(three.one("Service", name).inputs["spec"]["selector"])

    assert selector("database")[database.ROLE_LABEL] == "primary"
    assert selector("database-read")[database.ROLE_LABEL] == "standby"
    assert database.ROLE_LABEL not in selector("database-headless")
    alone = run_with(1)
    assert alone.one("Service", "database-read").inputs["spec"]["selector"][
        database.ROLE_LABEL
    ] == ("primary"), "with no standby, reads go to the primary"


def test_the_gateway_reads_from_database_read_and_writes_to_database(three: ProgramRun) -> None:
    secret = three.one("Secret", "gateway").inputs["stringData"]
    assert "@database.mlstack-dev.svc:5432/" in secret["database-url"]
    assert "@database-read.mlstack-dev.svc:5432/" in secret["database-read-url"]
    (container,) = three.one("Deployment", "gateway").inputs["spec"]["template"]["spec"][
        "containers"
    ]
    variables = {e["name"]: e["value"] for e in container["env"]}
    assert variables["DATABASE_READ_URL_FILE"].endswith("/database-read-url")


def test_the_replication_password_is_its_own_secret(three: ProgramRun) -> None:
    stored = three.one("Secret", "database").inputs["stringData"]
    assert (
        stored[database.REPLICATION_PASSWORD_KEY]
        == (TEST_SECRETS["mlstack:databaseReplicationPassword"])
    )
    assert stored[database.PASSWORD_KEY] != stored[database.REPLICATION_PASSWORD_KEY]
    gateway = three.one("Secret", "gateway").inputs["stringData"]
    assert TEST_SECRETS["mlstack:databaseReplicationPassword"] not in str(gateway)
    # Kept when given with one instance (adding a standby then changes nothing the primary
    # uses); a stack without it and without standbys needs none.
    assert (
        database.REPLICATION_PASSWORD_KEY
        in (run_with(1).one("Secret", "database").inputs["stringData"])
    )
    config = stack_config("dev")
    config.update({k: v for k, v in TEST_SECRETS.items() if "Replication" not in k})
    alone = run_program("dev", config, with_secrets=False)
    assert (
        database.REPLICATION_PASSWORD_KEY
        not in (alone.one("Secret", "database").inputs["stringData"])
    )


def test_pods_roll_when_a_secret_they_read_changes(three: ProgramRun) -> None:
    """Workloads mount the Secrets by name (a Secret replaced for new data replaces no workload)
    and carry a digest of the values, so that a new value rolls the pods that read it."""

    def digests(run: ProgramRun) -> dict[str, str | None]:
        workloads = run.of_kind("StatefulSet") + run.of_kind("Deployment")
        return {
            w.metadata["name"]: (template(w)["metadata"].get("annotations") or {}).get(
                pod.SECRETS_CHECKSUM
            )
            for w in workloads
        }

    before = digests(three)
    # Not secret: a secret in a workload's spec would make its whole spec output secret (and
    # with the gateway's, its Service's selector and the stack's gateway_url).
    for workload in three.of_kind("StatefulSet") + three.of_kind("Deployment"):
        assert workload.secret_paths == [], workload.metadata["name"]
    assert before["gateway"] and before["database"] and before["model"] is None
    for value in TEST_SECRETS.values():
        assert value not in str(before)
    config = stack_config("dev")
    config["mlstack:database"] = {**config["mlstack:database"], "replicas": 3}
    config["mlstack:apiKey"] = "another-gateway-api-key"
    after = digests(run_program("dev", config))
    assert after["gateway"] != before["gateway"]
    assert after["database"] == before["database"], "the database does not read the API key"
    volumes = template(instances(three)["database"])["spec"]["volumes"]
    assert {"name": "secrets", "secret": {"secretName": "database", "defaultMode": 0o440}} in (
        volumes
    )


def test_standbys_may_reach_the_primary_and_nothing_else_is_new(three: ProgramRun) -> None:
    def policies(run: ProgramRun) -> dict[str, Any]:
        return {p.metadata["name"]: p.inputs["spec"] for p in run.of_kind("NetworkPolicy")}

    alone, replicated = policies(run_with(1)), policies(three)
    assert set(replicated) - set(alone) == {"database-from-database", "database-to-database"}
    (rule,) = replicated["database-from-database"]["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"][NAME] == "database"
    assert rule["ports"] == [{"port": database.PORT, "protocol": "TCP"}]
    (egress,) = replicated["database-to-database"]["egress"]
    assert egress["ports"] == [{"port": database.PORT, "protocol": "TCP"}]


def test_every_instance_runs_the_start_script_with_the_same_server_settings(
    three: ProgramRun,
) -> None:
    scripts = three.one("ConfigMap", database.SCRIPTS).inputs["data"]
    assert set(scripts) == set(database.SCRIPT_FILES)
    assert f"host    replication  {database.REPLICATION_USER} " in scripts["pg_hba.conf"]
    settings = {name: server_args(s) for name, s in instances(three).items()}
    assert len({tuple(sorted(s.items())) for s in settings.values()}) == 1
    (one,) = {tuple(sorted(s.items())) for s in settings.values()}
    assert dict(one) == {
        "hba_file": f"{database.SCRIPTS_DIR}/pg_hba.conf",
        "synchronous_commit": "on",
        "synchronous_standby_names": "",
        "wal_keep_size": "256MB",
    }
    for stateful_set in instances(three).values():
        (container,) = template(stateful_set)["spec"]["containers"]
        assert container["command"] == ["bash", f"{database.SCRIPTS_DIR}/start.sh"]


@pytest.mark.parametrize(
    ("level", "standbys", "setting"),
    [
        ("local", "", "on"),
        ("remote_write", "ANY 1 (*)", "remote_write"),
        ("on", "ANY 1 (*)", "on"),
        ("remote_apply", "ANY 1 (*)", "remote_apply"),
    ],
)
def test_synchronous_commit_waits_for_any_one_standby(
    level: str, standbys: str, setting: str
) -> None:
    for stateful_set in instances(run_with(2, synchronousCommit=level)).values():
        args = server_args(stateful_set)
        assert args["synchronous_standby_names"] == standbys
        assert args["synchronous_commit"] == setting


def test_prod_waits_for_a_standby_of_two() -> None:
    prod = run_program("prod")
    assert len(prod.of_kind("StatefulSet")) == 3
    args = server_args(instances(prod)["database"])
    assert args["synchronous_standby_names"] == "ANY 1 (*)"
    assert args["wal_keep_size"] == f"{20 * 1024 // 4}MB"


def test_failing_over_changes_only_the_two_instances_that_swap_roles(three: ProgramRun) -> None:
    moved = run_with(3, primary=1)
    before, after = instances(three), instances(moved)
    changed = {name for name in before if before[name].inputs != after[name].inputs}
    assert changed == {"database", "database-1"}
    assert template(after["database-1"])["metadata"]["labels"][database.ROLE_LABEL] == "primary"
    assert env(after["database"])["DATABASE_ROLE"] == "standby"
    for service in ("database", "database-read", "database-headless"):
        assert three.one("Service", service).inputs == moved.one("Service", service).inputs


@pytest.mark.parametrize(("smaller", "larger"), [(1, 2), (2, 3), (3, 5)])
def test_scaling_leaves_the_primary_and_its_claim_as_they_are(smaller: int, larger: int) -> None:
    few, many = run_with(smaller), run_with(larger)
    assert instances(few)["database"].inputs == instances(many)["database"].inputs
    assert (
        few.one("PersistentVolumeClaim", "data-database-0").inputs
        == many.one("PersistentVolumeClaim", "data-database-0").inputs
    )
    added = set(instances(many)) - set(instances(few))
    assert added == {database.instance_name(i) for i in range(smaller, larger)}


def test_protect_covers_every_instance_s_claim() -> None:
    for claim in run_program("prod").of_kind("PersistentVolumeClaim"):
        assert claim.protect, claim.metadata["name"]
