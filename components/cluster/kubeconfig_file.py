"""`KubeconfigFile`: reads the kubeconfig a k3s container writes to a host folder.

Reading a file is I/O, so it happens inside a resource (a dynamic provider), when the engine
creates it after the k3s container is healthy, never while the program is evaluated.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi import dynamic


class _KubeconfigFileProvider(dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        import pathlib
        import time

        path = pathlib.Path(props["path"])
        deadline = time.monotonic() + 180
        while not path.is_file() or "certificate-authority-data" not in path.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError(f"k3s wrote no kubeconfig to {path} within 180 seconds")
            time.sleep(1)
        text = path.read_text().replace(
            "https://127.0.0.1:6443", f"https://127.0.0.1:{int(props['api_port'])}"
        )
        return dynamic.CreateResult(id_=str(path), outs={**props, "kubeconfig": text})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        keys = [key for key in ("path", "api_port", "container_id") if olds.get(key) != news[key]]
        return dynamic.DiffResult(changes=bool(keys), replaces=keys, delete_before_replace=True)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        import pathlib

        pathlib.Path(props["path"]).unlink(missing_ok=True)


class KubeconfigFile(dynamic.Resource):
    kubeconfig: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        path: str,
        api_port: int,
        container_id: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            _KubeconfigFileProvider(),
            name,
            {"path": path, "api_port": api_port, "container_id": container_id, "kubeconfig": None},
            pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(additional_secret_outputs=["kubeconfig"])
            ),
        )
