"""Every configuration mistake stops the program with one line naming the key, value and rule:
the program logs that line and exits with the status that tells the CLI to show it alone."""

from __future__ import annotations

import json
from typing import Any, Final

import pytest

from components import database
from harness.program import (
    PROJECT,
    STACK_SECRETS,
    TEST_SECRETS,
    ProgramExitError,
    run_program,
    stack_config,
)
from tests.certificates import pem_pair
from tests.unit.configs import (
    BACKUP_TEST_SECRETS,
    EXISTING,
    PREBUILT_IMAGES,
    S3,
    config_error,
    config_exit,
    dev_with,
    existing_with,
)

# The four database passwords, as config keys.
DATABASE_PASSWORDS: Final = (
    "mlstack:databasePassword",
    "mlstack:databaseOwnerPassword",
    "mlstack:databaseReplicationPassword",
    "mlstack:databaseRewindPassword",
)


@pytest.mark.parametrize("replicas", [-1, 0, 1.5, "three", "2", True, 1001])
def test_bad_replica_counts_name_key_value_and_rule(replicas: Any) -> None:
    message = config_error(dev_with(gateway={"replicas": replicas}))
    assert message.startswith("mlstack:gateway.replicas: ")
    assert str(replicas).lower() in message.lower()
    assert "whole number from 1 to 1000" in message


def test_model_replicas_are_checked_too() -> None:
    message = config_error(dev_with(model={"replicas": 0}))
    assert message.startswith("mlstack:model.replicas: 0 ")


def test_unknown_provider_lists_the_providers() -> None:
    message = config_error(dev_with(cluster={"provider": "kind"}))
    assert message == (
        'mlstack:cluster.provider: "kind" is not allowed: expected one of local, existing, gke, eks'
    )


def test_service_type_with_wrong_case_suggests_the_right_one() -> None:
    message = config_error(dev_with(gateway={"serviceType": "Loadbalancer"}))
    assert message == (
        'mlstack:gateway.serviceType: "Loadbalancer" is not allowed: expected one of '
        'LoadBalancer, ClusterIP, NodePort (did you mean "LoadBalancer"?)'
    )


@pytest.mark.parametrize("replicas", [0, 6, "2", True, 1.5])
def test_database_replicas_are_one_primary_and_up_to_four_standbys(replicas: Any) -> None:
    message = config_error(dev_with(database={"replicas": replicas}))
    assert message.startswith("mlstack:database.replicas: ")
    assert "whole number from 1 to 5" in message


@pytest.mark.parametrize(
    ("key", "value", "instead"),
    [
        ("primary", 1, "Patroni chooses the primary and fails over on its own"),
        ("primary", 0, "a planned change of primary is `make switchover`"),
        ("synchronousCommit", "on", "every commit waits for a synchronous standby"),
        ("synchronousCommit", "local", "every commit waits for a synchronous standby"),
    ],
)
def test_the_removed_database_keys_say_what_took_their_place(
    key: str, value: Any, instead: str
) -> None:
    """Not "unknown key": a stack file of an earlier release names them, whatever their value
    (the former default included)."""
    exited = config_exit(dev_with(database={"replicas": 2, key: value}))
    assert exited.resources == [], "refused before anything is registered"
    message = config_error(dev_with(database={"replicas": 2, key: value}))
    assert message.startswith(f"mlstack:database.{key} is no longer a setting: ")
    assert instead in message
    assert "; remove it" in message
    assert "unknown key" not in message


@pytest.mark.parametrize("key", ["primary", "synchronousCommit"])
def test_a_removed_database_key_sends_its_stack_to_the_upgrade_note(key: str) -> None:
    """Only a stack made before the database ran on Patroni has these keys, and `pulumi up` does
    not carry its database over: once the key is gone, the update would stop every instance for
    a server Patroni cannot run. The refusal says where the way across is, before that."""
    message = config_error(dev_with(database={"replicas": 2, key: 0}))
    assert message.endswith(
        'the database of a stack made before Patroni is not carried over: README, "A stack made '
        'before Patroni")'
    )


@pytest.mark.parametrize("key", DATABASE_PASSWORDS)
@pytest.mark.parametrize("replicas", [1, 2])
def test_every_database_password_is_required_whatever_the_instances(
    key: str, replicas: int
) -> None:
    """Patroni makes the replication and rewind roles with the cluster, standbys or not: adding
    the first standby then changes nothing the primary uses."""
    config = {
        **dev_with(database={"replicas": replicas}),
        **{k: v for k, v in TEST_SECRETS.items() if k != key},
    }
    message = config_error(config, with_secrets=False)
    assert message.startswith(f"{key} is missing: ")
    assert f"pulumi config set --secret {key}" in message


@pytest.mark.parametrize("key", DATABASE_PASSWORDS)
def test_a_database_password_holding_a_nul_character_is_refused(key: str) -> None:
    """The roles script's psql, which sets each role's password, ends a variable at a NUL
    character: the role would get the part before it, and the script would say it was set,
    while the gateway's and the migrations' URLs carry the whole value (refused at every
    connection), and Patroni's statement fails on it (PostgreSQL's text holds none)."""
    message = config_error({**dev_with(), key: "the first part of it\0and the rest"})
    assert message == (
        f"{key} holds a NUL character (U+0000), where the database's psql would cut it short; "
        f"set it without one with `pulumi config set --secret {key} <value>`"
    )


@pytest.mark.parametrize(
    "key", ["mlstack:databaseReplicationPassword", "mlstack:databaseRewindPassword"]
)
@pytest.mark.parametrize(
    "value",
    [
        "first line of a long password\nand its second",
        "a password long enough\r\nover two lines",
        "a password long enough, then a carriage return\r",
        "\na password long enough after a line break",
    ],
)
def test_a_patroni_password_with_a_line_break_is_refused(key: str, value: str) -> None:
    """Patroni writes these to its password file (pgpass), one entry a line, which libpq reads
    for a standby's copy and stream and for pg_rewind: a line break inside ends the entry early,
    and libpq drops a carriage return at a line's end (both tried with Patroni 4.1.5's own
    file and a real PostgreSQL: the standby's login is refused)."""
    message = config_error({**dev_with(), key: value})
    assert message == (
        f"{key} holds a line break: Patroni writes it to a password file of one entry a line "
        f"(pgpass); set it to one line with `pulumi config set --secret {key} <value>`"
    )


@pytest.mark.parametrize(
    "key", ["mlstack:databaseReplicationPassword", "mlstack:databaseRewindPassword"]
)
def test_a_patroni_password_holding_two_dollar_signs_is_refused(key: str) -> None:
    """Patroni 4.1.5 sets them at a new cluster's bootstrap inside `DO $$ ... $$`, which a `$$`
    in the password ends: its statement fails (a syntax error, tried against a real PostgreSQL),
    and Patroni gives the cluster up and tries again at every start."""
    message = config_error({**dev_with(), key: "pa$$word-long-enough"})
    assert message == (
        f"{key} holds `$$`: Patroni sets it inside a `DO $$ ... $$` block when it makes the "
        "cluster, which `$$` would end; set it without `$$` with "
        f"`pulumi config set --secret {key} <value>`"
    )


def test_a_single_dollar_sign_is_taken_in_any_database_password() -> None:
    """Only `$$` ends the block; the owner's and the gateway's passwords are never in one."""
    run_program(
        "dev",
        {
            **dev_with(),
            "mlstack:databaseReplicationPassword": "pa$word-$1-long-enough$",
            "mlstack:databaseRewindPassword": "$rewind-$-password",
            "mlstack:databasePassword": "pa$$word-long-enough",
            "mlstack:databaseOwnerPassword": "$$owner-password$$",
        },
    )


def test_a_patroni_password_s_final_line_breaks_are_no_line_break_inside() -> None:
    """The database's entrypoint reads them without their final line breaks, and the roles
    script sets them so: not refused."""
    run_program(
        "dev",
        {
            **dev_with(),
            "mlstack:databaseReplicationPassword": "a password long enough\n",
            "mlstack:databaseRewindPassword": "a password long enough\n\n",
        },
    )


@pytest.mark.parametrize("size", ["1GB", "lots", "0Gi", "-1Gi", "", 10])
def test_storage_size_must_be_a_kubernetes_quantity(size: Any) -> None:
    message = config_error(dev_with(database={"storageSize": size}))
    assert message.startswith("mlstack:database.storageSize: ")
    assert "Kubernetes quantity" in message


@pytest.mark.parametrize("size", ["256Mi", "512Mi", "1023Mi", "1G", "500M", "0.5Gi"])
def test_a_volume_too_small_for_the_wal_kept_is_refused_naming_the_floor(size: str) -> None:
    """Up to half of the volume is WAL, 256MB of it whatever the volume (wal_keep_size, the
    cluster's): on a smaller volume that takes more (README, "High availability")."""
    message = config_error(dev_with(database={"storageSize": size}))
    assert message.startswith(f'mlstack:database.storageSize: "{size}" is not allowed: ')
    assert f"at least {database.LEAST_STORAGE_SIZE} (1073741824 bytes)" in message


@pytest.mark.parametrize("size", ["1Gi", "1024Mi", "2G"])
def test_a_volume_from_the_floor_up_is_deployed_at_its_size(size: str) -> None:
    run = run_program("dev", dev_with(database={"storageSize": size}))
    template = run.one("StatefulSet", database.NAME).inputs["spec"]["volumeClaimTemplates"][0]
    assert template["spec"]["resources"]["requests"]["storage"] == size


def test_prebuilt_images_need_both_references() -> None:
    message = config_error(dev_with(images={"build": False, "gateway": "ghcr.io/x/gateway:1"}))
    assert message.startswith("mlstack:images.model is required when images.build is false")


def test_a_reference_beside_built_images_is_refused_not_ignored() -> None:
    """With images.build true the program deploys what it builds: a reference given beside it
    (a reviewed digest, say) would be ignored without a word."""
    message = config_error(dev_with(images={"gateway": "ghcr.io/x/gateway@sha256:" + "a" * 64}))
    assert message.startswith('mlstack:images.gateway: "ghcr.io/x/gateway@sha256:aaaa')
    assert "deployed only with images.build: false" in message


def test_a_registry_beside_prebuilt_images_is_refused_not_ignored() -> None:
    message = config_error(
        dev_with(images={**PREBUILT_IMAGES, "registry": "registry.example.com/mlstack"})
    )
    assert message.startswith('mlstack:images.registry: "registry.example.com/mlstack"')
    assert "remove images.registry" in message


def test_built_images_need_a_registry_outside_the_local_cluster() -> None:
    message = config_error(dev_with(cluster=EXISTING, images={"build": True}))
    assert message.startswith('mlstack:images.registry: "" is not allowed')
    assert "existing provider needs a registry" in message


def test_unknown_top_level_key_suggests_the_nearest() -> None:
    config = dev_with()
    config["mlstack:gatway"] = {"replicas": 2}
    message = config_error(config)
    assert message.startswith('mlstack:gatway: unknown key (did you mean "gateway"?)')


def test_unknown_nested_key_suggests_the_nearest() -> None:
    message = config_error(dev_with(gateway={"replica": 2}))
    assert message.startswith('mlstack:gateway: unknown key "replica" (did you mean "replicas"?)')


def test_unknown_cluster_key_for_the_chosen_provider() -> None:
    message = config_error(dev_with(cluster={"provider": "local", "context": "x"}))
    assert message.startswith('mlstack:cluster: unknown key "context"')


def test_cloud_cluster_needs_a_region() -> None:
    message = config_error(dev_with(cluster={"provider": "gke"}))
    assert message == "mlstack:cluster.region is required for this provider"


def test_no_stack_gets_a_default_cluster() -> None:
    message = config_error(dev_with(cluster=None))
    assert message.startswith("mlstack:cluster is required")


def test_section_must_be_an_object() -> None:
    message = config_error(dev_with(gateway="big"))
    assert message.startswith('mlstack:gateway: "big" is not allowed: expected an object')


def test_namespace_must_be_a_dns_label() -> None:
    message = config_error(dev_with(namespace="My_Namespace"))
    assert message.startswith('mlstack:namespace: "My_Namespace" is not allowed')
    assert "default" not in message


@pytest.mark.parametrize("namespace", ["default", "kube-system", "kube-public"])
def test_a_namespace_of_kubernetes_own_is_refused(namespace: str) -> None:
    assert config_error(dev_with(namespace=namespace)) == (
        f'mlstack:namespace: "{namespace}" is not allowed: it is Kubernetes\' own: the program '
        "makes the stack's namespace, takes over one that is there, and `pulumi destroy` "
        "deletes it with everything in it"
    )


def test_a_default_namespace_the_stack_name_cannot_make_says_what_to_set() -> None:
    with pytest.raises(ProgramExitError) as exited:
        run_program("Review_7", dev_with())
    assert exited.value.errors == [
        'mlstack:namespace: "mlstack-Review_7" is not allowed: expected a DNS label: lower-case '
        "letters, digits and '-', at most 63 characters (the default, mlstack-<stack>: set "
        "mlstack:namespace)"
    ]
    assert run_program("Review_7", dev_with(namespace="mlstack-review-7")).resources


@pytest.mark.parametrize("stack", ["review-", "feature.", "_draft", "x" * 64])
def test_a_stack_name_that_is_no_label_value_is_refused_before_any_resource(stack: str) -> None:
    """Pulumi takes these names; the API server would refuse the first object labelled with one
    partway through `pulumi up`."""
    with pytest.raises(ProgramExitError) as exited:
        run_program(stack, dev_with(namespace="mlstack-review"))
    (message,) = exited.value.errors
    assert message.startswith(f"stack {stack!r}: its name is the app.kubernetes.io/instance label")
    assert exited.value.resources == []


# The stack file of each cloud, and the longest `<project>-<stack>` its cloud names take (README,
# "Stack names on a cloud").
CLOUD_STACKS: Final = {"gke": ("prod", 26), "eks": ("staging", 41)}


@pytest.mark.parametrize(
    "provider, stack",
    [
        (provider, stack)
        for provider, (_, longest) in CLOUD_STACKS.items()
        for stack in ("QA", "qa_eu", "qa.eu", "x" * (longest - len(PROJECT)))
    ],
)
def test_a_cloud_stack_name_its_cloud_cannot_take_is_refused_before_any_resource(
    provider: str, stack: str
) -> None:
    """The stack's cloud resources are named after `<project>-<stack>`: GKE's and Compute
    Engine's names are lower-case, from a letter, and a node pool's holds 40 characters; an S3
    bucket's takes no capital letter or '_', an EKS cluster's no '.', an IAM role's holds 64.
    Pulumi takes every one of these stack names; `pulumi up` would fail partway, a GKE cluster
    made and its node pool refused."""
    with pytest.raises(ProgramExitError) as exited:
        config = stack_config(CLOUD_STACKS[provider][0])
        run_program(stack, {**config, f"{PROJECT}:namespace": "review"})
    (message,) = exited.value.errors
    assert message.startswith(
        f"stack {stack!r} of project {PROJECT!r}: on {provider} its cloud resources are named "
        f"after '{PROJECT}-{stack}', which must be "
    )
    assert message.endswith(": use another stack name")
    assert exited.value.resources == []


@pytest.mark.parametrize("provider", list(CLOUD_STACKS))
def test_the_longest_stack_name_a_cloud_takes_runs(provider: str) -> None:
    stack_file, longest = CLOUD_STACKS[provider]
    stack = "qa-" + "x" * (longest - len(PROJECT) - 1 - len("qa-"))
    config = {**stack_config(stack_file), f"{PROJECT}:namespace": "review"}
    assert run_program(stack, config).resources


def test_unknown_model_version() -> None:
    message = config_error(dev_with(model={"version": "v3"}))
    assert message.startswith('mlstack:model.version: "v3" is not allowed: expected one of v1, v2')


def test_protect_must_be_a_boolean() -> None:
    message = config_error(dev_with(protect="yes"))
    assert message.startswith('mlstack:protect: "yes" is not allowed')


def test_missing_secret_says_how_to_set_it() -> None:
    message = config_error(dev_with(), with_secrets=False)
    assert message.startswith("mlstack:databasePassword is missing")
    assert "pulumi config set --secret mlstack:databasePassword" in message


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_a_missing_generated_secret_names_the_command_for_its_stack(stack: str) -> None:
    """A stack previewed or updated by `pulumi` itself (by hand, or in a workflow) never ran
    `make stack`: the message names the one command that writes the secrets without deploying."""
    with pytest.raises(ProgramExitError) as raised:
        run_program(stack, stack_config(stack), with_secrets=False)
    (message,) = raised.value.errors
    assert message.endswith(f"(`make stack STACK={stack}` generates one, as `make up` does)")


def test_a_generated_secret_set_too_short_is_not_sent_to_make_stack() -> None:
    """`make stack` fills in missing secrets alone, and keeps one that is set: for one set too
    short, the command that changes it is `pulumi config set`."""
    message = config_error({**dev_with(), "mlstack:apiKey": "short"})
    assert message == (
        "mlstack:apiKey is too short (at least 12 characters): set it with "
        "`pulumi config set --secret mlstack:apiKey <value>`"
    )


# --- secrets: never in plain text in the stack's config ---------------------------------------

CERT, KEY = pem_pair()


def every_secret() -> dict[str, Any]:
    """A config that reads every stack secret, each set as its own checks want: an existing
    cluster, HTTPS from the stack's own certificate, backups to an S3-compatible endpoint and an
    API key rotation under way."""
    config = existing_with(
        gateway={"replicas": 1, "tls": {}},
        database={"replicas": 1, "storageSize": "1Gi", "backup": {"s3": S3}},
    )
    return {
        **TEST_SECRETS,
        **BACKUP_TEST_SECRETS,
        **config,
        "mlstack:gatewayTlsCert": CERT,
        "mlstack:gatewayTlsKey": KEY,
        "mlstack:apiKeyPrevious": "the-key-being-replaced",
    }


def plain_text_refusal(key: str) -> str:
    return (
        f"{key} is in plain text in the stack's config, not encrypted: "
        f"set it with `pulumi config set --secret {key} <value>` (a password or private key "
        "committed in plain text is no secret any more: replace it)"
    )


def test_every_secret_set_as_a_secret_is_taken() -> None:
    config = every_secret()
    assert config.keys() >= STACK_SECRETS
    assert run_program("dev", config).one("Secret", "gateway-tls")


@pytest.mark.parametrize("key", sorted(STACK_SECRETS))
def test_a_secret_in_plain_text_in_the_stack_s_config_is_refused_without_its_value(
    key: str,
) -> None:
    """`pulumi config set` without `--secret`, or a value typed into the stack file. The CLI
    refuses that itself only for the secrets Pulumi.yaml declares (those every stack has); a
    rotation's previous key, the gateway's certificate and key and a bucket's keys only the
    program can refuse, before a committed stack file would carry them in the clear."""
    config = every_secret()
    message = config_error(config, plaintext=[key])
    assert message == plain_text_refusal(key)
    assert config[key] not in message, "an error never shows a secret"


def engine_environment(config: dict[str, Any], secret: list[str]) -> dict[str, str]:
    """`config` the standard way besides `set_all_config`: PULUMI_CONFIG, each value a string
    (objects as JSON), and the keys of the secrets among it in PULUMI_CONFIG_SECRET_KEYS."""
    values = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    return {
        "PULUMI_CONFIG": json.dumps(values),
        "PULUMI_CONFIG_SECRET_KEYS": json.dumps(secret),
    }


def test_secrets_given_through_pulumi_config_are_known_by_pulumi_config_secret_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    previous = "mlstack:apiKeyPrevious"
    config = {**TEST_SECRETS, **stack_config("dev"), previous: "the-key-being-replaced"}
    secret = [key for key in config if key in STACK_SECRETS]
    for name, value in engine_environment(config, secret).items():
        monkeypatch.setenv(name, value)
    assert run_program("dev", {}, with_secrets=False).of_kind("Deployment")

    plain = [key for key in secret if key != previous]
    for name, value in engine_environment(config, plain).items():
        monkeypatch.setenv(name, value)
    assert config_error({}, with_secrets=False) == plain_text_refusal(previous)


def test_no_resource_is_registered_before_validation_fails() -> None:
    exited = config_exit(dev_with(database={"storageSize": "1GB"}))
    assert exited.errors and exited.resources == []


# --- cloud clusters: the API endpoint, upgrades ------------------------------------------------

GKE: dict[str, Any] = {
    "provider": "gke",
    "project": "acme-prod",
    "region": "europe-west1",
    "authorizedNetworks": ["192.0.2.0/28"],
}
EKS: dict[str, Any] = {
    "provider": "eks",
    "region": "eu-west-1",
    "authorizedNetworks": ["192.0.2.0/28"],
}


@pytest.mark.parametrize("cluster", [GKE, EKS], ids=["gke", "eks"])
def test_a_cloud_cluster_must_say_who_reaches_its_api(cluster: dict[str, Any]) -> None:
    without = {k: v for k, v in cluster.items() if k != "authorizedNetworks"}
    message = config_error(dev_with(cluster=without))
    assert message.startswith(
        "mlstack:cluster.authorizedNetworks is required for this provider: the IPv4 CIDRs"
    )
    assert "or [] for a private endpoint" in message


@pytest.mark.parametrize("cluster", [GKE, EKS], ids=["gke", "eks"])
@pytest.mark.parametrize(
    ("networks", "shown"),
    [
        (["192.0.2.1/24"], '"192.0.2.1/24"'),
        (["2001:db8::/32"], '"2001:db8::/32"'),
        (["office"], '"office"'),
        ("192.0.2.0/24", '"192.0.2.0/24"'),
        (["192.0.2.0/24", "192.0.2.0/24"], '["192.0.2.0/24", "192.0.2.0/24"]'),
    ],
)
def test_authorized_networks_are_distinct_ipv4_cidrs(
    cluster: dict[str, Any], networks: Any, shown: str
) -> None:
    message = config_error(dev_with(cluster={**cluster, "authorizedNetworks": networks}))
    assert message.startswith(f"mlstack:cluster.authorizedNetworks: {shown} is not allowed: ")


def test_the_gke_project_is_required() -> None:
    without = {k: v for k, v in GKE.items() if k != "project"}
    message = config_error(dev_with(cluster=without))
    assert message == "mlstack:cluster.project is required for this provider"


def test_release_channel_is_one_of_gke_s() -> None:
    message = config_error(dev_with(cluster={**GKE, "releaseChannel": "stable"}))
    assert message == (
        'mlstack:cluster.releaseChannel: "stable" is not allowed: expected one of RAPID, '
        'REGULAR, STABLE, EXTENDED (did you mean "STABLE"?)'
    )


def test_release_channels_are_gke_s_alone() -> None:
    message = config_error(dev_with(cluster={**EKS, "releaseChannel": "STABLE"}))
    assert message.startswith('mlstack:cluster: unknown key "releaseChannel"')


def test_an_unknown_cluster_key_suggests_the_hardening_key_meant() -> None:
    message = config_error(dev_with(cluster={**GKE, "authorizedNetwork": ["192.0.2.0/28"]}))
    assert message.startswith(
        'mlstack:cluster: unknown key "authorizedNetwork" (did you mean "authorizedNetworks"?)'
    )


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ({"start": "3am"}, 'mlstack:cluster.maintenanceWindow.start: "3am" is not allowed: '),
        ({"start": "24:00"}, 'mlstack:cluster.maintenanceWindow.start: "24:00" is not allowed'),
        ({"hours": 2}, "mlstack:cluster.maintenanceWindow.hours: 2 is not allowed: expected a "),
        (
            {"days": ["SAT"]},
            'mlstack:cluster.maintenanceWindow.days: "SAT" is not allowed: expected days from '
            'MO, TU, WE, TH, FR, SA, SU (did you mean "SA"?)',
        ),
        ({"days": []}, "mlstack:cluster.maintenanceWindow.days: [] is not allowed"),
        ({"days": ["SA", "SA"]}, 'mlstack:cluster.maintenanceWindow.days: ["SA", "SA"] is not'),
        (
            {"hours": 4, "days": ["SA", "SU"]},
            "mlstack:cluster.maintenanceWindow.hours: 4 is not allowed: GKE needs at least 48 "
            "hours of maintenance in any 32 days, so at least 12 hours a week, and 2 day(s) of "
            "4 hours is 8",
        ),
        ({"weekdays": ["SA"]}, 'unknown key "weekdays" (did you mean "days"?)'),
    ],
)
def test_maintenance_window_mistakes_name_key_value_and_rule(
    window: dict[str, Any], expected: str
) -> None:
    message = config_error(dev_with(cluster={**GKE, "maintenanceWindow": window}))
    assert expected in message
