"""`SchemaMigrations`: a service's database schema brought up to date by a Job, which `pulumi up`
waits for.

A Job rather than an init container of every pod: the migrations run once per new image (or new
owner credentials), not in each pod that starts, so that a pod of the service neither waits for
the database to be there before it starts nor ever mounts the credentials of the role that owns
the schema. The service's pods start beside the Job, not after it: a new stack's (whose database
has no schema yet) are Ready at once and answer 503 with Retry-After until it has run; on an
update, a new version's pods are not Ready while the database holds an older schema than theirs
(the gateway's /readyz), so that the rollout waits for the Job and the pods of the version before
keep serving. A migration that fails fails the Job, with its reason, and `pulumi up` with it.

The Job is kept once it has succeeded (no `ttlSecondsAfterFinished`): it is part of the stack's
state, which a Job the cluster deletes by itself would leave (`make drift` would report it), and
its pod keeps the log of the last migrations. Its pod template is immutable, so a new image or a
new digest of the secrets it reads replaces it (deleted first: its name is fixed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import pulumi
import pulumi_kubernetes as k8s

from components import pod
from components.labels import labels, metadata

# A failed try (the database not there within the command's own timeout, a node lost under it)
# is made once more, in a new pod, before the Job fails.
BACKOFF_LIMIT: Final = 1
# The migrate command's own bound (its DATABASE_MIGRATE_TIMEOUT_SECONDS, left at its default).
MIGRATE_TIMEOUT_SECONDS: Final = 300
# The bound on the whole Job: two tries of the migrate command, the Job controller's backoff
# before the second (10 s) and each pod's start. Each try then ends by its own timeout, with its
# reason in its log, before the deadline ends the Job.
ACTIVE_DEADLINE_SECONDS: Final = 2 * MIGRATE_TIMEOUT_SECONDS + 60
# pulumi-kubernetes' annotation: an object that is not ready (a Job failed) is replaced at the
# next update rather than awaited again.
REPLACE_UNREADY: Final = "pulumi.com/replaceUnready"
# How long `pulumi up` waits for the Job: past its deadline, so that a Job that fails is reported
# with the Job's own reason, not as the engine's timeout racing it (the provider's default for a
# Job is 10 minutes, the deadline itself).
AWAIT_TIMEOUT: Final = f"{ACTIVE_DEADLINE_SECONDS // 60 + 5}m"


@dataclass(frozen=True)
class SchemaMigrationsArgs:
    """`command`, in `image`, run once to completion with `env` and the Secret `secret_name`
    mounted as files under pod.SECRETS_DIR."""

    name: str
    stack: str
    namespace: pulumi.Input[str]
    image: pulumi.Input[str]
    command: tuple[str, ...]
    secret_name: str
    # A digest of the secrets' values: a new value replaces the Job, which runs again with it.
    secrets_checksum: pulumi.Input[str]
    resources: pod.Resources
    env: Mapping[str, str] = field(default_factory=dict)
    # Resources the Job is created after (the Secret it mounts).
    after: tuple[pulumi.Resource, ...] = ()


class SchemaMigrations(pulumi.ComponentResource):
    """A ServiceAccount of its own (no API token) and the Job."""

    def __init__(
        self, name: str, args: SchemaMigrationsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlstack:app:SchemaMigrations", name, None, opts)
        meta_labels = labels(args.name, args.stack)
        account = pod.service_account(
            f"{name}-account",
            metadata(args.name, args.namespace, args.name, args.stack),
            pulumi.ResourceOptions(parent=self),
        )
        container: k8s.core.v1.ContainerArgsDict = {
            "name": args.name,
            "image": args.image,
            "image_pull_policy": pod.pull_policy(args.image),
            "command": list(args.command),
            "env": [{"name": k, "value": v} for k, v in sorted(args.env.items())],
            "resources": args.resources.spec(),
            "security_context": pod.container_security_context(),
            "volume_mounts": pod.mounts(secrets=True),
        }
        job = k8s.batch.v1.Job(
            name,
            metadata={
                **metadata(args.name, args.namespace, args.name, args.stack),
                # A Job that failed (the database away past its deadline, say) is replaced at the
                # next `pulumi up`, which runs it again: without this, every later up would wait
                # on the failed Job again and fail with it, until a `pulumi up --replace` by hand.
                "annotations": {REPLACE_UNREADY: "true"},
            },
            spec={
                "backoff_limit": BACKOFF_LIMIT,
                "active_deadline_seconds": ACTIVE_DEADLINE_SECONDS,
                "template": {
                    "metadata": {
                        "labels": meta_labels,
                        "annotations": {pod.SECRETS_CHECKSUM: args.secrets_checksum},
                    },
                    "spec": {
                        "service_account_name": account.metadata.name,
                        "automount_service_account_token": False,
                        # A failed try's pod stays, with its log; the next try is a new pod.
                        "restart_policy": "Never",
                        "security_context": pod.pod_security_context(),
                        "containers": [container],
                        "volumes": [pod.tmp_volume(), pod.secrets_volume(args.secret_name)],
                    },
                },
            },
            # Fixed names keep the Job findable; its replacement must free the name first.
            opts=pulumi.ResourceOptions(
                parent=self,
                delete_before_replace=True,
                depends_on=list(args.after),
                custom_timeouts=pulumi.CustomTimeouts(create=AWAIT_TIMEOUT, update=AWAIT_TIMEOUT),
            ),
        )
        self.register_outputs({"job": job.metadata.name})
