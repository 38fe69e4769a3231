"""`existing`: a cluster the user already runs (minikube, kind, Docker Desktop, any cloud)."""

from __future__ import annotations

import os

import pulumi

from components.cluster.base import Cluster
from components.config import ExistingCluster

DEFAULT_KUBECONFIG = "~/.kube/config"


class ExistingKubeconfigCluster(Cluster):
    def __init__(
        self, name: str, config: ExistingCluster, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlstack:cluster:Existing", name, None, opts)
        # The provider reads the file itself: nothing here touches it while the program runs.
        path = os.path.expanduser(config.kubeconfig or DEFAULT_KUBECONFIG)
        self._finish(path, context=config.context)
