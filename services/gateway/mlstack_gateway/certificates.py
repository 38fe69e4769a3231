"""The certificate the gateway serves HTTPS with, taken up again when its files change.

A `kubernetes.io/tls` Secret renewed in place (by cert-manager, or by hand) reaches the pod's
volume without a restart: the kubelet swaps the files within about a minute. The gateway reads
the pair every TLS_RELOAD_SECONDS and, when either file's bytes have changed, loads it: the
handshakes that follow present the new certificate, connections already open keep theirs. A
pair that does not load (a key that does not match the certificate, a file caught half-written,
a key encrypted with a passphrase) is counted and logged once; the gateway keeps serving the
pair it has.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from pathlib import Path

from prometheus_client import Counter

log = logging.getLogger("mlstack_gateway")

# Forward secrecy and AEAD only; TLS 1.3 suites are not chosen by this string (all are good).
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _digest(cert: Path, key: Path) -> bytes | None:
    """The pair's bytes as one digest; None while either cannot be read."""
    try:
        return hashlib.sha256(cert.read_bytes() + b"\0" + key.read_bytes()).digest()
    except OSError:
        return None


class EncryptedKeyError(OSError):
    """A private key that needs a passphrase, which the gateway never has."""

    def __init__(self) -> None:
        super().__init__("the private key is encrypted; give it without a passphrase")


def _no_passphrase() -> str:
    raise EncryptedKeyError


def load_pair(context: ssl.SSLContext, cert: Path | str, key: Path | str) -> None:
    """Load the certificate chain and its key into `context`; an OSError (ssl.SSLError, or
    EncryptedKeyError) if they do not load. A key encrypted with a passphrase is refused:
    without a passphrase callback, OpenSSL asks for one on the terminal or reads it from stdin,
    which would hold the start, or the event loop at a reload, while it waits."""
    context.load_cert_chain(cert, key, password=_no_passphrase)


def _context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context of the pair: the first one, and each one a reload loads (``check``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    # No renegotiation of a TLS 1.2 connection, whoever asks: each one is a whole handshake the
    # server computes again, as often as a client asks on one connection (CVE-2011-1473).
    # OpenSSL 3 refuses a client's request unless told otherwise, OpenSSL 1.1.1 allowed it: the
    # option makes it the same whatever OpenSSL the image's Python links.
    context.options |= ssl.OP_NO_RENEGOTIATION
    load_pair(context, cert, key)
    return context


class ServingCertificate:
    """The server's SSLContext, which hands each handshake to the context of the pair last
    loaded whole.

    A pair is loaded into a context of its own, never into one in use: OpenSSL replaces a
    context's certificate before it checks the key, so a pair that fails half-way would leave
    a context in use with no key for its certificate.
    """

    def __init__(self, cert: Path, key: Path, reloads: Counter) -> None:
        self.cert, self.key = cert, key
        self._reloads = reloads
        # Read before loading: a change between the two is seen, and loaded, at the next check.
        self._loaded = _digest(cert, key)
        self._refused: bytes | None = None
        self.context = _context(cert, key)
        self._current = self.context
        # Called on every ClientHello, with a server name or without one.
        self.context.sni_callback = self._select

    def _select(self, connection: ssl.SSLObject | ssl.SSLSocket, _: str | None, __: object) -> None:
        if self._current is not self.context:
            connection.context = self._current

    def check(self) -> bool:
        """Serve the pair from now on if its files changed and load whole; whether it did."""
        digest = _digest(self.cert, self.key)
        if digest is None or digest in (self._loaded, self._refused):
            return False
        try:
            context = _context(self.cert, self.key)
        except (OSError, ssl.SSLError) as error:
            self._refused = digest
            self._reloads.labels(result="refused").inc()
            log.warning(
                "TLS: %s and %s changed but do not load as a certificate chain and its key "
                "(%s); still serving the previous certificate",
                self.cert, self.key, error,
            )  # fmt: skip
            return False
        self._current, self._loaded, self._refused = context, digest, None
        self._reloads.labels(result="loaded").inc()
        log.info("TLS: serving the certificate now in %s", self.cert)
        return True

    async def watch(self, interval_seconds: float) -> None:
        """Check every `interval_seconds` until cancelled, on the event loop's thread, where the
        handshakes read the current context (two small files take no time to read)."""
        while True:
            await asyncio.sleep(interval_seconds)
            self.check()
