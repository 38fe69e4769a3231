"""mlstack: a Kubernetes cluster and the ML application on it, per stack.

config → cluster → application → outputs. Everything else lives in components/.
"""

import pulumi

from components import config as stack_config
from components.app import MlApp, MlAppArgs
from components.cluster import create_cluster

config = stack_config.load_or_exit()

cluster = create_cluster(config)

app = MlApp("mlstack", MlAppArgs(config=config, cluster=cluster))

pulumi.export("gateway_url", app.gateway_url)
pulumi.export("namespace", app.namespace)
pulumi.export("kubeconfig", cluster.kubeconfig)
pulumi.export("images", app.images)
