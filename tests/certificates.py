"""Self-signed certificates and their keys, made by the openssl CLI when a test asks (no key is
committed): the gateway's TLS tests serve them from files, the program's tests give them as the
stack secrets `mlstack:gatewayTlsCert` and `mlstack:gatewayTlsKey`."""

from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path

from harness.ports import LOOPBACK

# The names every certificate here is for.
SUBJECT_ALT_NAME = f"subjectAltName=IP:{LOOPBACK},DNS:localhost"


def self_signed_certificate(
    folder: Path,
    name: str = "mlstack-gateway-test",
    *,
    passphrase: str | None = None,
    traditional: bool = False,
    usage: str | None = None,
    dates: tuple[str, str] | None = None,
    ca: bool = False,
) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (common name `name`) and its key, in `folder`.
    The key is PKCS#8 (`BEGIN PRIVATE KEY`), encrypted with `passphrase` when one is given; with
    `traditional`, in OpenSSL's older format instead (`BEGIN EC PRIVATE KEY`, a passphrase's
    encryption in its `Proc-Type` header), as some tools still write keys. `usage`: its extended
    key usage (`clientAuth`, ...), none by default. `dates`: its start and end
    (YYYYMMDDHHMMSSZ, either past or to come), from now for two days by default. `ca`: a CA's
    certificate (basicConstraints CA:TRUE), which may issue others."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "tls.crt", folder / "tls.key"
    encryption = ["-nodes"] if passphrase is None else ["-passout", f"pass:{passphrase}"]
    extensions = [SUBJECT_ALT_NAME]
    if usage is not None:
        extensions.append(f"extendedKeyUsage={usage}")
    if ca:
        extensions.append("basicConstraints=critical,CA:TRUE")
    made = ["-x509", "-days", "2"] if dates is None else []
    _new_key(key, cert, name, extensions, *encryption, *made)
    if dates is not None:
        # `openssl req` dates a certificate from now alone; `openssl ca` signs the request with
        # its own key at any dates.
        _sign_dated(folder, cert, key, passphrase, dates)
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


def _new_key(key: Path, out: Path, name: str, extensions: list[str], *options: str) -> None:
    """`openssl req`: a new P-256 key in `key`, and in `out` a certificate request for the
    common name `name` with `extensions`, or with `-x509` among `options` a certificate its own
    key signs."""
    subprocess.run(
        [
            "openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            *options, "-keyout", str(key), "-out", str(out), "-subj", f"/CN={name}",
            *(argument for extension in extensions for argument in ("-addext", extension)),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


def _sign_dated(
    folder: Path, request: Path, key: Path, passphrase: str | None, dates: tuple[str, str]
) -> None:
    """The certificate request `request` replaced by the certificate its own `key` signs, valid
    over `dates`, with the request's extensions."""
    ca = folder / "ca"
    (ca / "issued").mkdir(parents=True)
    (ca / "index.txt").touch()
    (ca / "serial").write_text("01\n")
    (ca / "ca.cnf").write_text(
        "[ca]\ndefault_ca = own\n"
        f"[own]\ndatabase = {ca / 'index.txt'}\nnew_certs_dir = {ca / 'issued'}\n"
        f"serial = {ca / 'serial'}\ndefault_md = sha256\npolicy = any\n"
        "copy_extensions = copy\n[any]\ncommonName = supplied\n"
    )
    signed = folder / "signed.crt"
    subprocess.run(
        [
            "openssl", "ca", "-batch", "-selfsign", "-notext", "-config", str(ca / "ca.cnf"),
            "-keyfile", str(key), "-in", str(request), "-out", str(signed),
            "-startdate", dates[0], "-enddate", dates[1],
            *([] if passphrase is None else ["-passin", f"pass:{passphrase}"]),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    signed.replace(request)


@functools.cache
def pem_pair(
    name: str = "mlstack-gateway-test",
    *,
    passphrase: str | None = None,
    traditional: bool = False,
    usage: str | None = None,
    dates: tuple[str, str] | None = None,
) -> tuple[str, str]:
    """The PEM text of a self_signed_certificate and of its key, made once for each set of
    arguments, in a private folder removed at once."""
    with tempfile.TemporaryDirectory(prefix="mlstack-test-tls-") as folder:
        cert, key = self_signed_certificate(
            Path(folder),
            name,
            passphrase=passphrase,
            traditional=traditional,
            usage=usage,
            dates=dates,
        )
        return cert.read_text(), key.read_text()


def chain_with_expired_issuer() -> tuple[str, str]:
    """The PEM text of a chain and of its first certificate's key: a certificate for 127.0.0.1,
    valid, then that of the CA that issued it, which has expired (as in a bundle that still
    holds an old cross-signed root, which clients that trust the root above pass over)."""
    with tempfile.TemporaryDirectory(prefix="mlstack-test-tls-") as name:
        folder = Path(name)
        ca_cert, ca_key = self_signed_certificate(
            folder / "ca", "mlstack-test-ca", dates=("20250101000000Z", "20250201000000Z"), ca=True
        )
        key, request, cert = folder / "tls.key", folder / "tls.csr", folder / "tls.crt"
        _new_key(key, request, "mlstack-issued", [SUBJECT_ALT_NAME], "-nodes")
        subprocess.run(
            [
                "openssl", "x509", "-req", "-in", str(request), "-days", "2",
                "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
                "-copy_extensions", "copy", "-out", str(cert),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return cert.read_text() + ca_cert.read_text(), key.read_text()
