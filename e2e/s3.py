"""An S3-compatible server for the real node: SeaweedFS, where the database's backups go.

It runs as a process on the machine, like metrics-server, from the `weed` binary that
e2e/toolchain/build.sh builds (`github.com/seaweedfs/seaweedfs` WEED_VERSION), as
`weed server -s3`: one process holding a master, a volume server, a filer (its embedded LevelDB
store) and the S3 gateway, its files (data, identities, certificate, pid file) under its own
folder, but for the gRPC sockets weed always puts in /tmp (`down` removes them):
- the master, the volume server and the filer listen on 127.0.0.1 only; the S3 gateway alone
  listens on the address it is given (the node address in a node run: pods reach it there; its
  gRPC port too, weed binds both to one address), at a free port, over HTTPS only (pgBackRest's
  S3 driver speaks nothing else), with a serving certificate for that address signed by the
  cluster's CA, so a pod verifies it with the CA it already has;
- one identity, from weed's identities file (`-s3.config`): a fixed access key and a secret key
  drawn at each start; one bucket, created at start by a signed S3 request (AWS Signature
  Version 4), and no other: a write to another bucket fails instead of creating it;
- the master's telemetry (on by default, to an outside server) is off; nothing else dials out.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Any, Final

from e2e import addresses as net
from e2e import process
from e2e.certificates import sign_serving
from e2e.workdir import InWorkdir
from harness.http import Reply, request
from harness.ports import LOOPBACK, free_port

NAME: Final = "weed"
REGION: Final = "us-east-1"
BUCKET: Final = "mlstack-backups"
ACCESS_KEY: Final = "mlstack-e2e"
START_TIMEOUT: Final = 60.0
# Seconds from SIGTERM to SIGKILL. The S3 gateway and the volume server stop within a second; the
# filer then retries its metadata log's last write to the stopped volume server until its own
# 15 s deadline: nothing the throwaway store needs.
STOP_GRACE: Final = 3.0
# The S3 gateway's own ports, and the master's, volume server's and filer's (HTTP and gRPC).
PORTS: Final = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
)


class S3Server:
    """`weed server -s3` in `workdir`, its S3 gateway at `https://<address>:<port>` with a
    certificate signed by the CA in `ca_dir` (`ca.crt`, `ca.key`: kwokctl's in a node run).
    What `up` chose (ports, secret key) is kept in `workdir`, so `down` and the properties work
    from another process too."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        ca_dir: Path,
        address: str = net.NODE_ADDRESS,
        log: Path | None = None,
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.ca_dir = ca_dir
        self.address = address
        # weed.pid and (unless `log` puts it elsewhere) weed.log in `workdir`, which its command
        # line names.
        self.daemon = process.Daemon.in_folder(workdir, NAME, str(workdir), log=log)

    # --- what a client needs --------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"https://{self.address}:{self._settings()['ports']['s3.port']}"

    @property
    def region(self) -> str:
        return REGION

    @property
    def bucket(self) -> str:
        return BUCKET

    @property
    def access_key(self) -> str:
        return ACCESS_KEY

    @property
    def secret_key(self) -> str:
        return str(self._settings()["secret_key"])

    @property
    def ca_certificate(self) -> Path:
        return self.ca_dir / "ca.crt"

    # --- files ----------------------------------------------------------------------------
    settings_file = InWorkdir("settings.json")

    def _settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = json.loads(self.settings_file.read_text())
        return settings

    # --- up / down ------------------------------------------------------------------------
    def up(self) -> None:
        """Start the server and create the bucket, through the S3 gateway over TLS."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        ports = {
            name: free_port(self.address if name.startswith("s3.") else LOOPBACK) for name in PORTS
        }
        self.settings_file.write_text(
            json.dumps({"ports": ports, "secret_key": secrets.token_urlsafe(30)}, indent=1)
        )
        sign_serving(self.workdir, self.ca_dir, NAME, f"IP:{self.address}")
        identities = {
            "identities": [
                {
                    "name": ACCESS_KEY,
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        (self.workdir / "identities.json").write_text(json.dumps(identities, indent=1))
        (self.workdir / "data").mkdir(exist_ok=True)
        try:
            # A few seconds. The first write waits a few more: the filer joins the master's
            # list some 7 s after the start (its empty-membership confirm window).
            self.daemon.start(self.argv(), self._bucket_made, "SeaweedFS's bucket", START_TIMEOUT)
        except BaseException:
            self.down()
            raise

    def argv(self) -> list[str]:
        """The command line of the server (after `up` has chosen its ports)."""
        ports = self._settings()["ports"]
        w = self.workdir
        return [
            str(self.binary),
            "-logtostderr=true",
            f"-config_dir={w}",
            "server",
            f"-dir={w / 'data'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            *(f"-{name}={port}" for name, port in ports.items()),
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            f"-filer.localSocket={w / 'filer.sock'}",
            "-s3",
            f"-s3.ip.bind={self.address}",
            f"-s3.localSocket={w / 's3.sock'}",
            f"-s3.config={w / 'identities.json'}",
            f"-s3.cert.file={w / f'{NAME}.crt'}",
            f"-s3.key.file={w / f'{NAME}.key'}",
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]

    def down(self) -> None:
        """Stop the server; its folder (data, log) stays for whoever owns it."""
        self.daemon.stop(timeout=STOP_GRACE)
        # weed serves each part's gRPC on /tmp/seaweedfs-<part>-grpc-<port>.sock too (a fixed
        # folder), and removes them only when it has time to stop.
        if self.settings_file.exists() and not self.daemon.running():
            for name, port in self._settings()["ports"].items():
                part, _, kind = name.partition(".")
                if kind == "port.grpc":
                    Path(f"/tmp/seaweedfs-{part}-grpc-{port}.sock").unlink(missing_ok=True)

    def request(self, method: str, path: str, body: bytes = b"") -> bytes:
        """The body of the answer to one signed S3 request (`_send`); a RuntimeError on an
        error status."""
        reply = self._send(method, path, body)
        if not 200 <= reply.status < 300:
            raise RuntimeError(
                f"SeaweedFS answered {method} {path} with {reply.status}: {reply.body[:300]!r}"
            )
        return reply.body

    def _send(self, method: str, path: str, body: bytes = b"") -> Reply:
        """One S3 request signed with AWS Signature Version 4 (headers `host`,
        `x-amz-content-sha256`, `x-amz-date`), over TLS verified against the CA; the answer,
        whatever its status. `path` starts with `/` and is sent as it is (no query string:
        enough for a bucket or an object)."""
        now = datetime.datetime.now(datetime.UTC)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        host = self.endpoint.removeprefix("https://")
        payload = hashlib.sha256(body).hexdigest()
        headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": stamp}
        signed = ";".join(headers)
        canonical = "\n".join(
            [method, path, "", *(f"{k}:{v}" for k, v in headers.items()), "", signed, payload]
        )
        scope = f"{day}/{REGION}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = f"AWS4{self.secret_key}".encode()
        for part in (day, REGION, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders={signed}, "
            f"Signature={signature}"
        )
        return request(method, self.endpoint + path, body, headers, ca=self.ca_certificate)

    def _bucket_made(self) -> bool:
        try:
            reply = self._send("PUT", f"/{BUCKET}")
        except OSError:
            return False
        if reply.status in (401, 403):
            raise RuntimeError(
                f"SeaweedFS refused the bucket's creation: {reply.status} {reply.body[:300]!r}"
            )
        # 409: made by an earlier try whose answer was lost; else the filer is not ready.
        return 200 <= reply.status < 300 or reply.status == 409
