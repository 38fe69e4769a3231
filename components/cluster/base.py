"""What every cluster component offers the rest of the program."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_kubernetes as k8s


class Cluster(pulumi.ComponentResource):
    """A Kubernetes cluster with the one provider every application resource is created with."""

    provider: k8s.Provider
    # The kubeconfig (or, for an existing cluster, where it is), always a secret.
    kubeconfig: pulumi.Output[str]
    # Where images built by the stack are pushed, when the cluster brings its own registry.
    image_registry: pulumi.Output[str] | None = None
    # The address a LoadBalancer Service is reached at from the user's machine, when the
    # cluster publishes it somewhere other than its ingress address (k3s in Docker does).
    local_gateway_url: pulumi.Output[str] | None = None
    # What the application's objects wait for besides `provider`, and are deleted before: objects
    # the cluster component makes through that provider (EKS's default StorageClass), which the
    # provider itself cannot wait for.
    prerequisites: tuple[pulumi.Resource, ...] = ()

    def _finish(
        self,
        kubeconfig: pulumi.Input[str],
        context: str | None = None,
        depends_on: Sequence[pulumi.Resource] = (),
        cluster_identifier: pulumi.Input[str] | None = None,
    ) -> None:
        """Create the provider from `kubeconfig` and register the component's outputs.

        With `cluster_identifier` (what the cluster's state lives in), the provider, and every
        object made through it, is replaced only when that changes: not when the kubeconfig
        is unknown at preview because what writes it is replaced.

        Every application resource uses this provider, so it depends on the provider, and the
        provider on the cluster (through `kubeconfig`) and on `depends_on` (the nodes): on
        destroy, Pulumi deletes the application (LoadBalancer Services first among them, so the
        cloud load balancers go with them) before the nodes and the cluster.
        """
        self.kubeconfig = pulumi.Output.secret(kubeconfig)
        self.provider = k8s.Provider(
            f"{self._name}-k8s",
            kubeconfig=self.kubeconfig,
            context=context,
            cluster_identifier=cluster_identifier,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(depends_on)),
        )
        self.register_outputs({"kubeconfig": self.kubeconfig})
