"""e2e/toolchain/install-released.sh (what the GitHub workflow runs), run for real offline: a
stand-in `curl` serves each release URL from a folder of made-up release files, with checksums
that match them, or, for one test, a checksum list that does not."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Final

from e2e.controlplane import TOOLCHAIN, read_versions
from tests.stand_ins import env_first_on_path, stand_in

SCRIPT: Final = TOOLCHAIN / "install-released.sh"
VERSIONS: Final = read_versions()
KUBE: Final = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
NODE: Final = ("kubelet", "kube-proxy")
FAKE_CURL: Final = """\
#!{python}
import shutil, sys
from pathlib import Path

args = sys.argv[1:]
out, url = args[args.index("-o") + 1], args[-1]
served = Path({web!r}) / url.split("://", 1)[1]
if not served.is_file():
    sys.exit(22)  # curl -f on a 404
shutil.copyfile(served, out)
"""
FAKE_PULUMI: Final = """\
#!/bin/sh
echo "$@" >> "$(dirname "$0")/calls"
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Web:
    """The release files, by URL, in a folder the stand-in curl serves."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, url: str, data: bytes) -> None:
        path = self.root / url.split("://", 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def put_listed(self, url: str, data: bytes, sums_url: str) -> None:
        """`url`'s file and a checksum list at `sums_url` that has its line among others."""
        name = url.rsplit("/", 1)[1]
        self.put(url, data)
        self.put(sums_url, f"{sha256(b'other')}  other.tar.gz\n{sha256(data)}  {name}\n".encode())


def releases(web: Web) -> None:
    """Every file the script downloads, each binary's content its own name."""
    v = VERSIONS
    for name in (*KUBE, *NODE):
        url = f"https://dl.k8s.io/release/{v['KUBE_VERSION']}/bin/linux/amd64/{name}"
        web.put(url, name.encode())
        web.put(f"{url}.sha256", sha256(name.encode()).encode())
    etcd = f"etcd-{v['ETCD_VERSION']}-linux-amd64"
    base = f"https://github.com/etcd-io/etcd/releases/download/{v['ETCD_VERSION']}"
    web.put_listed(
        f"{base}/{etcd}.tar.gz", tarball({f"{etcd}/etcd": b"etcd"}), f"{base}/SHA256SUMS"
    )
    for name in ("kwok", "kwokctl"):
        base = f"https://github.com/kubernetes-sigs/kwok/releases/download/{v['KWOK_VERSION']}"
        web.put(f"{base}/{name}-linux-amd64", name.encode())
    coredns = f"coredns_{v['COREDNS_VERSION'].removeprefix('v')}_linux_amd64.tgz"
    base = f"https://github.com/coredns/coredns/releases/download/{v['COREDNS_VERSION']}"
    archive = tarball({"coredns": b"coredns"})
    web.put(f"{base}/{coredns}", archive)
    web.put(f"{base}/{coredns}.sha256", f"{sha256(archive)}  {coredns}\n".encode())
    kv = v["KUBE_ROUTER_VERSION"].removeprefix("v")
    base = (
        "https://github.com/cloudnativelabs/kube-router/releases/download/"
        + v["KUBE_ROUTER_VERSION"]
    )
    web.put_listed(
        f"{base}/kube-router_{kv}_linux_amd64.tar.gz",
        tarball({"kube-router": b"kube-router"}),
        f"{base}/kube-router_{kv}_checksums.txt",
    )
    pv = v["PULUMI_VERSION"].removeprefix("v")
    base = "https://get.pulumi.com/releases/sdk"
    web.put_listed(
        f"{base}/pulumi-v{pv}-linux-x64.tar.gz",
        tarball({"pulumi/pulumi": FAKE_PULUMI.encode()}),
        f"{base}/pulumi-{pv}-checksums.txt",
    )


def install(tmp_path: Path, web: Web) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    stand_in(bin_dir, "curl", FAKE_CURL.format(python=sys.executable, web=str(web.root)))
    return subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "dest")],
        env=env_first_on_path(bin_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_binary_is_installed_from_its_checked_release(tmp_path: Path) -> None:
    web = Web(tmp_path / "web")
    releases(web)
    done = install(tmp_path, web)
    assert done.returncode == 0, done.stderr
    dest = tmp_path / "dest"
    for name in (*KUBE, *NODE, "etcd", "kwok", "kwokctl", "coredns", "kube-router"):
        assert (dest / name).read_bytes() == name.encode(), name
        assert os.access(dest / name, os.X_OK), name
    calls = (dest / "pulumi" / "calls").read_text().split()
    assert calls == [
        "plugin",
        "install",
        "resource",
        "kubernetes",
        VERSIONS["PULUMI_KUBERNETES_VERSION"],
    ]
    assert done.stdout.splitlines() == [f"KUBEBUILDER_ASSETS={dest}", f"PATH={dest}/pulumi:$PATH"]


def test_an_archive_that_does_not_match_its_checksum_list_stops_the_install(
    tmp_path: Path,
) -> None:
    web = Web(tmp_path / "web")
    releases(web)
    etcd = f"etcd-{VERSIONS['ETCD_VERSION']}-linux-amd64"
    base = f"https://github.com/etcd-io/etcd/releases/download/{VERSIONS['ETCD_VERSION']}"
    web.put(f"{base}/{etcd}.tar.gz", tarball({f"{etcd}/etcd": b"tampered"}))
    done = install(tmp_path, web)
    assert done.returncode != 0
    assert "did NOT match" in done.stderr
    assert not (tmp_path / "dest" / "etcd").exists()
    assert not (tmp_path / "dest" / "pulumi").exists()
