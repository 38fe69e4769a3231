"""`HostFolder` and `KubeconfigFile`: the host folder a k3s container writes its kubeconfig to,
and the kubeconfig read from it.

Touching the user's disk is I/O, so it happens inside resources (dynamic providers), when the
engine creates them, never while the program is evaluated. The folder is a resource of its own,
created by the user before the container mounts it: a folder that Docker creates for a bind mount
belongs to root, and the user could not delete it (or the kubeconfig in it) on `destroy`.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi import dynamic


class _KubeconfigFileProvider(dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        import pathlib

        # Read once, with no wait: this resource is created after the k3s container is healthy
        # (pulumi-docker's `wait`), and its healthcheck's kubectl finds the cluster through
        # /etc/rancher/k3s/k3s.yaml, which k3s links to this file only once it has written it.
        path = pathlib.Path(props["path"])
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        if "certificate-authority-data" not in text:
            raise RuntimeError(f"the k3s container is healthy, but {path} holds no kubeconfig")
        # k3s writes its server as it listens in the container; the user reaches the published port.
        written = f"https://127.0.0.1:{int(props['k3s_api_port'])}"
        text = text.replace(written, f"https://127.0.0.1:{int(props['api_port'])}")
        return dynamic.CreateResult(id_=str(path), outs={**props, "kubeconfig": text})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        # Not `k3s_api_port`: a new one comes with a new container (`container_id`), and a state
        # that lacks the key must not replace (delete) a kubeconfig k3s will not write again.
        keys = [key for key in ("path", "api_port", "container_id") if olds.get(key) != news[key]]
        return dynamic.DiffResult(changes=bool(keys), replaces=keys, delete_before_replace=True)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        import pathlib

        pathlib.Path(props["path"]).unlink(missing_ok=True)


class _HostFolderProvider(dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        import pathlib

        path = pathlib.Path(props["path"])
        # Only the user: the kubeconfig k3s writes here holds cluster-admin credentials.
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return dynamic.CreateResult(id_=str(path), outs=dict(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        changed = olds.get("path") != news["path"]
        return dynamic.DiffResult(
            changes=changed, replaces=["path"] if changed else [], delete_before_replace=True
        )

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        import contextlib
        import pathlib
        import shutil

        path = pathlib.Path(props["path"])
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except PermissionError as error:
            raise RuntimeError(
                f"cannot delete {path} ({error.strerror}): Docker created it as root. "
                f"Remove it with `sudo rm -rf {path}`, then run the destroy again"
            ) from error
        # The parent (~/.mlstack) goes with the last stack's folder.
        with contextlib.suppress(OSError):
            path.parent.rmdir()


class HostFolder(dynamic.Resource):
    """A folder on the user's machine, owned by the user; deleted with its contents on destroy."""

    path: pulumi.Output[str]

    def __init__(self, name: str, path: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(_HostFolderProvider(), name, {"path": path}, opts)


class KubeconfigFile(dynamic.Resource):
    """The kubeconfig k3s wrote at `path` for its API on `k3s_api_port` in its container, with
    the server moved to `api_port`, where that port is published on the user's machine."""

    kubeconfig: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        path: str,
        api_port: int,
        k3s_api_port: int,
        container_id: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "path": path,
            "api_port": api_port,
            "k3s_api_port": k3s_api_port,
            "container_id": container_id,
            "kubeconfig": None,
        }
        super().__init__(
            _KubeconfigFileProvider(),
            name,
            props,
            pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(additional_secret_outputs=["kubeconfig"])
            ),
        )
