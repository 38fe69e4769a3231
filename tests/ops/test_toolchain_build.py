"""The wrapper modules e2e/toolchain/build.sh builds each tool in, as its `gowrap` writes them:
build.sh run offline on made-up upstream go.mod files, with a stand-in `go` whose "binary" is
the wrapper's go.mod."""

from __future__ import annotations

import concurrent.futures
import fcntl
from pathlib import Path
from typing import Final

import pytest

from e2e import images
from harness.poll import eventually
from tests.ops.toolchain_stand_ins import VERSIONS, go_calls, run_build

PULUMI: Final = VERSIONS["PULUMI_VERSION"]
KUBE: Final = VERSIONS["KUBE_VERSION"]
STAGING: Final = VERSIONS["KUBE_STAGING_VERSION"]


def upstream(tmp_path: Path, module: str, version: str, gomod: str) -> Path:
    """`module`@`version` as the stand-in go serves it, with `gomod` as its go.mod."""
    folder = tmp_path / "modules" / f"{module}@{version}"
    folder.mkdir(parents=True)
    (folder / "go.mod").write_text(gomod)
    return folder


def built(tmp_path: Path, tool: str, binary: str) -> list[str]:
    """The go.mod lines of the wrapper module build.sh built `tool`'s `binary` in."""
    done = run_build(tmp_path, tool)
    assert done.returncode == 0, done.stderr
    return (Path(done.stdout.splitlines()[-1]) / binary).read_text().splitlines()


def test_a_replace_block_upstream_gives_its_published_replaces_and_no_opener(
    tmp_path: Path,
) -> None:
    """etcd's: local folders in a block and on a line, dropped; published modules kept."""
    etcd = VERSIONS["ETCD_VERSION"]
    upstream(
        tmp_path,
        "go.etcd.io/etcd/server/v3",
        etcd,
        """module go.etcd.io/etcd/server/v3

go 1.26.0

toolchain go1.26.10

replace (
\tgo.etcd.io/etcd/api/v3 => ../api // the api beside it
\tgithub.com/example/forked v1.0.0 => github.com/example/fork v1.0.1
)

replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY

replace github.com/example/other => github.com/example/other-fork v0.2.0
""",
    )
    assert built(tmp_path, "etcd", "etcd") == [
        "module mlstack.local/e2e/module",
        "",
        "go 1.26.0",
        "",
        f"require go.etcd.io/etcd/server/v3 {etcd}",
        "",
        "replace github.com/example/other => github.com/example/other-fork v0.2.0",
        "replace github.com/example/forked v1.0.0 => github.com/example/fork v1.0.1",
    ]


def test_the_cli_takes_the_sdk_of_its_own_release(tmp_path: Path) -> None:
    """pkg/v3 replaces sdk/v3 by its folder: the wrapper takes sdk/v3 at the same release."""
    upstream(
        tmp_path,
        "github.com/pulumi/pulumi/pkg/v3",
        PULUMI,
        f"""module github.com/pulumi/pulumi/pkg/v3

go 1.26.6

replace github.com/pulumi/pulumi/sdk/v3 => ../sdk

replace (
\tgithub.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-1
)

require github.com/pulumi/pulumi/sdk/v3 {PULUMI}
""",
    )
    assert built(tmp_path, "pulumi", "pulumi") == [
        "module mlstack.local/e2e/pulumi",
        "",
        "go 1.26.6",
        "",
        f"require github.com/pulumi/pulumi/pkg/v3 {PULUMI}",
        "",
        f"replace github.com/pulumi/pulumi/sdk/v3 => github.com/pulumi/pulumi/sdk/v3 {PULUMI}",
        "replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-1",
    ]


def test_kubernetes_staging_modules_become_their_releases_and_godebug_is_kept(
    tmp_path: Path,
) -> None:
    upstream(
        tmp_path,
        "k8s.io/kubernetes",
        KUBE,
        """module k8s.io/kubernetes

go 1.24.0

godebug default=go1.24

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
""",
    )
    assert built(tmp_path, "kubectl", "kubectl") == [
        "module mlstack.local/e2e/kube",
        "",
        "go 1.24.0",
        "godebug default=go1.24",
        "",
        f"require k8s.io/kubernetes {KUBE}",
        "",
        f"replace k8s.io/api => k8s.io/api {STAGING}",
        f"replace k8s.io/client-go => k8s.io/client-go {STAGING}",
    ]


def test_the_language_host_is_built_with_the_sdk_s_own_replaces(tmp_path: Path) -> None:
    sdk = upstream(
        tmp_path,
        "github.com/pulumi/pulumi/sdk/v3",
        PULUMI,
        """module github.com/pulumi/pulumi/sdk/v3

go 1.26.6

replace golang.org/x/text => golang.org/x/text v0.41.0
""",
    )
    shim = sdk / "python" / "cmd" / "pulumi-language-python-exec"
    shim.parent.mkdir(parents=True)
    shim.write_text("#!/usr/bin/env python3\n")
    assert built(tmp_path, "langhost", "pulumi-language-python") == [
        "module mlstack.local/e2e/langhost",
        "",
        "go 1.26.6",
        "",
        f"require github.com/pulumi/pulumi/sdk/v3 {PULUMI}",
        "",
        "replace golang.org/x/text => golang.org/x/text v0.41.0",
    ]


def test_the_images_cache_is_in_the_toolchain_s_cache_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build.sh names the cache folder; e2e/images.py asks it (`--cache-root`, which makes
    nothing)."""
    done = run_build(tmp_path, "--cache-root")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path / 'cache'}\n"
    assert not (tmp_path / "cache").exists()
    monkeypatch.setenv("MLSTACK_E2E_CACHE", str(tmp_path / "cache"))
    assert images.cache_dir() == tmp_path.resolve() / "cache" / "images"
    monkeypatch.delenv("MLSTACK_E2E_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert images.cache_dir() == tmp_path.resolve() / "home" / ".cache" / "mlstack-e2e" / "images"


def test_one_build_at_a_time_on_a_cache(tmp_path: Path) -> None:
    """A build.sh that must build while another holds the cache's lock waits for it before it
    makes any tool folder: two would build into the same one."""
    cache = tmp_path / "cache"
    cache.mkdir()
    log = tmp_path / "second-build.log"
    log.touch()
    # The lock is let go before the pool waits for the second build, whatever fails first.
    with concurrent.futures.ThreadPoolExecutor(1) as pool, (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first build.sh, as it holds the lock
        second = pool.submit(run_build, tmp_path, "probe", stderr=log)
        eventually(lambda: "waiting for another build.sh" in log.read_text(), "the wait", 60)
        assert not list((cache / "tools").glob("probe-*"))
        assert not second.done()
        fcntl.flock(lock, fcntl.LOCK_UN)
        done = second.result()
    assert done.returncode == 0, log.read_text()
    assert [call[0] for call in go_calls(tmp_path / "bin")] == ["build"]
    assert (Path(done.stdout.splitlines()[-1]) / "e2e-probe").exists()


def test_a_look_that_builds_nothing_does_not_wait_for_another_build(tmp_path: Path) -> None:
    """With every tool it asks for built, or with MLSTACK_E2E_NO_BUILD, a build.sh takes no lock:
    `make test`'s look for a built tool, or a teardown's, runs beside CI's toolchain build."""
    cache = tmp_path / "cache"
    assert run_build(tmp_path, "probe").returncode == 0
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another build.sh, building something else
        for done in (
            run_build(tmp_path, "probe"),
            run_build(tmp_path, "probe", MLSTACK_E2E_NO_BUILD="1"),
        ):
            assert done.returncode == 0, done.stderr
            assert "waiting for another build.sh" not in done.stderr
    assert [call[0] for call in go_calls(tmp_path / "bin")] == ["build"]
