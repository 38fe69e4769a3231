"""A synthetic program for the evaluation benchmark: `__main__.py`, then N more services.

The stack config has no way to add services (the application is exactly gateway, model and
database), so this calls the `Microservice` component directly, N times, the way `MlApp` does
for the model: same namespace, same cluster provider, the model's sizes. N comes from
BENCH_EXTRA_SERVICES (default 20).
"""

from __future__ import annotations

import os
import runpy
from typing import Any

import pulumi

from components.app import MODEL_RESOURCES
from components.config import ServiceConfig
from components.microservice import Microservice, MicroserviceArgs
from harness.program import MAIN

program: dict[str, Any] = runpy.run_path(str(MAIN), run_name="__main__")
config, cluster, app = program["config"], program["cluster"], program["app"]

for index in range(int(os.environ.get("BENCH_EXTRA_SERVICES", "20"))):
    Microservice(
        f"extra-{index}",
        MicroserviceArgs(
            name=f"extra-{index}",
            stack=config.stack,
            namespace=app.namespace,
            image=f"registry.invalid/extra-{index}:1.0",
            service=ServiceConfig(replicas=config.model.replicas, service_type="ClusterIP"),
            liveness_path="/healthz",
            readiness_path="/readyz",
            resources=MODEL_RESOURCES,
        ),
        pulumi.ResourceOptions(provider=cluster.provider),
    )
