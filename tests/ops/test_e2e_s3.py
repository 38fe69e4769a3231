"""The real node's S3 server (e2e/s3.py), started as the node starts it but on 127.0.0.1: a real
`weed server -s3`, a signed PUT and GET over TLS verified against the CA that signed its
certificate, and no process left after `down`. Skipped when `weed` has not been built
(`bash e2e/toolchain/build.sh weed`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import process
from e2e.controlplane import toolchain_bin
from e2e.s3 import S3Server


def weed_binary() -> Path:
    """The `weed` build.sh has already built (this test never builds)."""
    try:
        return toolchain_bin("weed", build=False) / "weed"
    except subprocess.CalledProcessError:
        pytest.skip("weed has not been built: run `bash e2e/toolchain/build.sh weed` first")


def make_ca(folder: Path) -> Path:
    """A CA of the test's own (`ca.crt`, `ca.key`), as kwokctl's is in a node run."""
    folder.mkdir()
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.crt"),
            "-subj", "/CN=mlstack-e2e-test-ca", "-days", "1",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return folder


@pytest.fixture
def server(tmp_path: Path) -> Iterator[S3Server]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    weed = weed_binary()
    s3 = S3Server(weed, tmp_path / "s3", make_ca(tmp_path / "ca"), address="127.0.0.1")
    s3.up()
    try:
        yield s3
    finally:
        s3.down()


def curl(s3: S3Server, *args: str, secret: str | None = None) -> subprocess.CompletedProcess[str]:
    """curl signing with AWS Signature Version 4, trusting only the server's CA."""
    return subprocess.run(
        [
            "curl", "--silent", "--show-error", "--fail", "--noproxy", "*",
            "--cacert", str(s3.ca_certificate),
            "--aws-sigv4", f"aws:amz:{s3.region}:s3",
            "--user", f"{s3.access_key}:{secret or s3.secret_key}",
            # S3 wants the payload's hash in a header (curl signs what is there).
            "--header", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )  # fmt: skip


def test_s3_put_and_get_over_tls_then_down_leaves_no_process(
    server: S3Server, tmp_path: Path
) -> None:
    assert server.endpoint.startswith("https://127.0.0.1:")
    url = f"{server.endpoint}/{server.bucket}/backup/archive.bin"
    body = tmp_path / "archive.bin"
    body.write_bytes(os.urandom(64 * 1024) + b"mlstack")

    put = curl(server, "--upload-file", str(body), url)
    assert put.returncode == 0, put.stderr
    got = tmp_path / "got.bin"
    get = curl(server, "--output", str(got), url)
    assert get.returncode == 0, get.stderr
    assert got.read_bytes() == body.read_bytes()

    # e2e/s3.py's own signed requests read it back too.
    assert server.request("GET", f"/{server.bucket}/backup/archive.bin") == body.read_bytes()
    # The keys are checked: a wrong secret is refused (403).
    wrong = curl(server, url, secret="not-the-secret")
    assert wrong.returncode == 22 and "403" in wrong.stderr
    # The bucket was made at start: a write to another one is refused, not a bucket created.
    other = curl(server, "--upload-file", str(body), f"{server.endpoint}/other/archive.bin")
    assert other.returncode == 22 and "404" in other.stderr
    # The certificate is the CA's, not one the machine trusts: curl without it refuses (60).
    untrusted = subprocess.run(
        ["curl", "--silent", "--noproxy", "*", "--output", "/dev/null", url],
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert untrusted.returncode == 60

    server.down()
    assert not server.daemon.running()
    assert process.find(str(server.workdir)) == []
