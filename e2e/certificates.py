"""Certificates signed by a CA folder's `ca.crt` and `ca.key` (kwokctl's in a node run): an EC
key, its request and the certificate, side by side in one folder as `<name>.key`, `<name>.csr`
and `<name>.crt`, valid for a week (the throwaway cluster's life)."""

from __future__ import annotations

import os
from pathlib import Path

from e2e import process
from e2e.render import render


def sign(pki: Path, ca_dir: Path, name: str, subject: str, extensions: Path) -> tuple[Path, Path]:
    """A new key and a certificate for `subject` (openssl's `/O=.../CN=...`) with the X.509v3
    extensions of the file `extensions`, signed by the CA in `ca_dir`; returns their paths."""
    key, csr, cert = pki / f"{name}.key", pki / f"{name}.csr", pki / f"{name}.crt"
    process.run(
        "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-subj", subject, "-out", str(csr),
    )  # fmt: skip
    process.run(
        "openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_dir / "ca.crt"),
        "-CAkey", str(ca_dir / "ca.key"), "-set_serial",
        str(int.from_bytes(os.urandom(8), "big")), "-days", "7", "-extfile", str(extensions),
        "-out", str(cert),
    )  # fmt: skip
    return cert, key


def sign_serving(pki: Path, ca_dir: Path, name: str, subject_alt_names: str) -> tuple[Path, Path]:
    """A serving certificate and key for `subject_alt_names` (openssl's syntax), signed by the
    CA in `ca_dir`; returns their paths."""
    extensions = pki / f"{name}.ext"
    extensions.write_text(render("serving.ext", subject_alt_names=subject_alt_names))
    return sign(pki, ca_dir, name, f"/CN={name}", extensions)
