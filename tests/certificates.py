"""Self-signed certificates and their keys, made by the openssl CLI when a test asks (no key is
committed): the gateway's TLS tests serve them from files, the program's tests give them as the
stack secrets `mlstack:gatewayTlsCert` and `mlstack:gatewayTlsKey`."""

from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path

from harness.ports import LOOPBACK


def self_signed_certificate(
    folder: Path,
    name: str = "mlstack-gateway-test",
    *,
    passphrase: str | None = None,
    traditional: bool = False,
) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (common name `name`) and its key, in `folder`.
    The key is PKCS#8 (`BEGIN PRIVATE KEY`), encrypted with `passphrase` when one is given; with
    `traditional`, in OpenSSL's older format instead (`BEGIN EC PRIVATE KEY`, a passphrase's
    encryption in its `Proc-Type` header), as some tools still write keys."""
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
    if traditional:
        converted = folder / "tls.traditional.key"
        passes = (
            []
            if passphrase is None
            else ["-passin", f"pass:{passphrase}", "-aes256", "-passout", f"pass:{passphrase}"]
        )
        subprocess.run(
            ["openssl", "pkey", "-in", str(key), "-traditional", *passes, "-out", str(converted)],
            check=True,
            capture_output=True,
        )
        converted.replace(key)
    return cert, key


@functools.cache
def pem_pair(
    name: str = "mlstack-gateway-test",
    *,
    passphrase: str | None = None,
    traditional: bool = False,
) -> tuple[str, str]:
    """The PEM text of a self_signed_certificate and of its key, made once for each set of
    arguments, in a private folder removed at once."""
    with tempfile.TemporaryDirectory(prefix="mlstack-test-tls-") as folder:
        cert, key = self_signed_certificate(
            Path(folder), name, passphrase=passphrase, traditional=traditional
        )
        return cert.read_text(), key.read_text()
