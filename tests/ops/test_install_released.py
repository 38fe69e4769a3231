"""e2e/toolchain/install-released.sh (what the GitHub workflow runs), run for real offline: a
stand-in `curl` serves each release URL from a folder of made-up release files, with checksums
that match them, or, for one test, a checksum list that does not. Each made-up binary reports its
pinned version, so that build.sh, run after it as the workflow's `make e2e` runs it, shows which
tools it takes as installed and which it builds."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Final

import yaml

from e2e.controlplane import TOOLCHAIN
from harness.program import ROOT
from tests.ops.toolchain_stand_ins import VERSIONS, go_calls, run_build, tools
from tests.stand_ins import env_first_on_path, stand_in

SCRIPT: Final = TOOLCHAIN / "install-released.sh"
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
# `pulumi version`, and `pulumi plugin install resource kubernetes VERSION` as the CLI installs a
# plugin (into $PULUMI_HOME/plugins), each call logged.
FAKE_PULUMI: Final = """\
#!/bin/sh
echo "$@" >> "$(dirname "$0")/calls"
if [ "$1" = version ]; then echo "v{version}"; exit 0; fi
plugin="$PULUMI_HOME/plugins/resource-$4-v$5"
mkdir -p "$plugin"
printf '#!/bin/sh\\n' > "$plugin/pulumi-resource-$4"
chmod 755 "$plugin/pulumi-resource-$4"
"""


def workflow_no_build() -> str:
    """The MLSTACK_E2E_NO_BUILD of the workflow's step that runs `make e2e`."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "test.yml").read_text())
    (step,) = [s for s in workflow["jobs"]["e2e"]["steps"] if "make e2e" in s.get("run", "")]
    return str(step["env"]["MLSTACK_E2E_NO_BUILD"])


WORKFLOW_NO_BUILD: Final = workflow_no_build()


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


def binary(name: str, version: str) -> bytes:
    """A made-up release binary: it reports `version` to any version flag."""
    return f"#!/bin/sh\necho '{name} version {version}'\n".encode()


def releases(web: Web) -> None:
    """Every file the script downloads."""
    v = VERSIONS
    for name in (*KUBE, *NODE):
        url = f"https://dl.k8s.io/release/{v['KUBE_VERSION']}/bin/linux/amd64/{name}"
        web.put(url, binary(name, v["KUBE_VERSION"]))
        web.put(f"{url}.sha256", sha256(binary(name, v["KUBE_VERSION"])).encode())
    etcd = f"etcd-{v['ETCD_VERSION']}-linux-amd64"
    base = f"https://github.com/etcd-io/etcd/releases/download/{v['ETCD_VERSION']}"
    web.put_listed(
        f"{base}/{etcd}.tar.gz",
        tarball({f"{etcd}/etcd": binary("etcd", v["ETCD_VERSION"])}),
        f"{base}/SHA256SUMS",
    )
    for name in ("kwok", "kwokctl"):
        base = f"https://github.com/kubernetes-sigs/kwok/releases/download/{v['KWOK_VERSION']}"
        web.put(f"{base}/{name}-linux-amd64", binary(name, v["KWOK_VERSION"]))
    coredns = f"coredns_{v['COREDNS_VERSION'].removeprefix('v')}_linux_amd64.tgz"
    base = f"https://github.com/coredns/coredns/releases/download/{v['COREDNS_VERSION']}"
    archive = tarball({"coredns": binary("coredns", v["COREDNS_VERSION"])})
    web.put(f"{base}/{coredns}", archive)
    web.put(f"{base}/{coredns}.sha256", f"{sha256(archive)}  {coredns}\n".encode())
    kv = v["KUBE_ROUTER_VERSION"].removeprefix("v")
    base = (
        "https://github.com/cloudnativelabs/kube-router/releases/download/"
        + v["KUBE_ROUTER_VERSION"]
    )
    web.put_listed(
        f"{base}/kube-router_{kv}_linux_amd64.tar.gz",
        tarball({"kube-router": binary("kube-router", v["KUBE_ROUTER_VERSION"])}),
        f"{base}/kube-router_{kv}_checksums.txt",
    )
    pv = v["PULUMI_VERSION"].removeprefix("v")
    base = "https://get.pulumi.com/releases/sdk"
    web.put_listed(
        f"{base}/pulumi-v{pv}-linux-x64.tar.gz",
        tarball(
            {
                "pulumi/pulumi": FAKE_PULUMI.format(version=pv).encode(),
                "pulumi/pulumi-language-python": b"#!/bin/sh\n",
                "pulumi/pulumi-language-python-exec": b"#!/usr/bin/env python3\n",
            }
        ),
        f"{base}/pulumi-{pv}-checksums.txt",
    )


def install(tmp_path: Path, web: Web) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    stand_in(bin_dir, "curl", FAKE_CURL.format(python=sys.executable, web=str(web.root)))
    return subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "dest")],
        env=env_first_on_path(bin_dir, PULUMI_HOME=str(tmp_path / "pulumi-home")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def build_after_install(
    tmp_path: Path, *tools: str, no_build: str
) -> subprocess.CompletedProcess[str]:
    """build.sh as the workflow's `make e2e` runs it after install-released.sh."""
    dest = tmp_path / "dest"
    return run_build(
        tmp_path,
        *tools,
        path=(dest / "pulumi",),
        KUBEBUILDER_ASSETS=str(dest),
        PULUMI_HOME=str(tmp_path / "pulumi-home"),
        MLSTACK_E2E_NO_BUILD=no_build,
    )


def test_every_released_tool_is_installed_as_build_sh_takes_it(tmp_path: Path) -> None:
    """Every tool of RELEASED_TOOLS is downloaded, checked and left where build.sh looks, at the
    version build.sh asks for: with no build allowed, build.sh takes each as installed."""
    web = Web(tmp_path / "web")
    releases(web)
    done = install(tmp_path, web)
    assert done.returncode == 0, done.stderr
    dest = tmp_path / "dest"
    for name in (*KUBE, *NODE, "etcd", "kwok", "kwokctl", "coredns", "kube-router"):
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

    built = build_after_install(tmp_path, *tools("RELEASED"), no_build="1")
    assert built.returncode == 0, built.stderr
    for tool in tools("RELEASED"):
        assert f"{tool}: using the installed binaries" in built.stderr, tool
    bin_dir = Path(built.stdout.splitlines()[-1])
    linked = {link.name: link.resolve() for link in bin_dir.iterdir()}
    installed = (tmp_path / "dest", tmp_path / "pulumi-home")
    assert all(any(map(target.is_relative_to, installed)) for target in linked.values()), linked
    assert set(linked) == {
        *KUBE,
        *NODE,
        *("etcd", "kwok", "kwokctl", "coredns", "kube-router"),
        *("pulumi", "pulumi-language-python", "pulumi-language-python-exec"),
        "pulumi-resource-kubernetes",
    }


def test_after_the_install_the_workflow_s_make_e2e_builds_only_the_built_tools(
    tmp_path: Path,
) -> None:
    """The workflow's MLSTACK_E2E_NO_BUILD lets build.sh build BUILT_TOOLS, which have no
    release, and no other third-party tool: every tool it names is then in bin/."""
    web = Web(tmp_path / "web")
    releases(web)
    assert install(tmp_path, web).returncode == 0
    built = build_after_install(
        tmp_path, *tools("RELEASED"), *tools("BUILT"), no_build=WORKFLOW_NO_BUILD
    )
    assert built.returncode == 0, built.stderr
    for tool in tools("RELEASED"):
        assert f"{tool}: using the installed binaries" in built.stderr, tool
    for tool in tools("BUILT"):
        assert f"{tool} built in" in built.stderr, tool
    go_builds = [call for call in go_calls(tmp_path / "bin") if call[0] == "build"]
    assert len(go_builds) == len(tools("BUILT"))
    bin_dir = Path(built.stdout.splitlines()[-1])
    assert {"metrics-server", "weed"} <= {link.name for link in bin_dir.iterdir()}


def test_the_workflow_s_setting_refuses_to_build_a_released_tool(tmp_path: Path) -> None:
    """A tool with a release that is missing is an error (the download went wrong), not a build."""
    for tool in tools("RELEASED"):
        done = run_build(tmp_path, tool, MLSTACK_E2E_NO_BUILD=WORKFLOW_NO_BUILD)
        assert done.returncode == 1, tool
        assert f"{tool} is not installed at its pinned version" in done.stderr, tool
    assert go_calls(tmp_path / "bin") == []


def test_no_build_at_all_refuses_the_built_tools_too(tmp_path: Path) -> None:
    for tool in tools("BUILT"):
        done = run_build(tmp_path, tool, MLSTACK_E2E_NO_BUILD="1")
        assert done.returncode == 1, tool
        assert f"{tool} is not installed at its pinned version" in done.stderr, tool
    assert go_calls(tmp_path / "bin") == []


def test_the_tool_lists_name_every_tool_once() -> None:
    every = [*tools("RELEASED"), *tools("BUILT"), *tools("OWN")]
    assert len(every) == len(set(every))
    assert {"metrics-server", "weed"} <= set(every)


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
    # Nothing listed after etcd was installed.
    after = tools("RELEASED")[tools("RELEASED").index("etcd") + 1]
    assert after == "kwok"
    assert not (tmp_path / "dest" / "kwok").exists()
