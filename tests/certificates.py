"""Self-signed certificates and their keys, made by the openssl CLI when a test asks (no key is
committed), for the tests that serve HTTPS with them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.ports import LOOPBACK


def self_signed_certificate(
    folder: Path,
    name: str = "mlstack-gateway-test",
    *,
    passphrase: str | None = None,
) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (common name `name`) and its key, in `folder`;
    the key encrypted with `passphrase` when one is given."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "tls.crt", folder / "tls.key"
    encryption = ["-nodes"] if passphrase is None else ["-passout", f"pass:{passphrase}"]
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", *encryption,
            "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", f"/CN={name}",
            "-addext", f"subjectAltName=IP:{LOOPBACK},DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
