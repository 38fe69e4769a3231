"""A certificate renewed in place, as the kubelet writes a Secret's new data into a running pod's
volume, is served without a restart; a pair that does not load leaves the served one as it is."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.services import ServiceProcess, start_gateway
from tests.certificates import self_signed_certificate
from tests.services.support import https, metric, serves_https

Pair = tuple[Path, Path]
RELOADS = "mlstack_gateway_tls_reloads_total"


def install(volume: Path, cert: Path, key: Path) -> None:
    """Write the pair into `volume` the way the kubelet updates a Secret volume: the files in a
    new folder, then one rename of the `..data` link; `tls.crt` and `tls.key` link through it."""
    volume.mkdir(exist_ok=True)
    folder = volume / f"..{time.monotonic_ns()}"
    folder.mkdir()
    (folder / "tls.crt").write_bytes(cert.read_bytes())
    (folder / "tls.key").write_bytes(key.read_bytes())
    (volume / "..data_tmp").symlink_to(folder.name)
    (volume / "..data_tmp").rename(volume / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pair, Pair]:
    folder = tmp_path_factory.mktemp("tls-renewal")
    return (
        self_signed_certificate(folder / "old", "mlstack-old"),
        self_signed_certificate(folder / "new", "mlstack-new"),
    )


@pytest.fixture
def gateway(
    model_server: ServiceProcess, log_dir: Path, tmp_path: Path, pairs: tuple[Pair, Pair]
) -> Iterator[tuple[ServiceProcess, Path]]:
    """The gateway serving the old pair from a Secret-like volume, read again every 0.2 s."""
    volume = tmp_path / "volume"
    install(volume, *pairs[0])
    service = start_gateway(
        model_server.url,
        log_dir,
        wait=None,
        TLS_CERT_FILE=str(volume / "tls.crt"),
        TLS_KEY_FILE=str(volume / "tls.key"),
        TLS_RELOAD_SECONDS="0.2",
    )
    try:
        service.wait_for("serving HTTPS", lambda: serves_https(service, pairs[0][0]), 30)
        yield service, volume
    finally:
        service.stop()


def presented_to_sni(service: ServiceProcess, ca: Path, server_name: str) -> bool:
    """Whether a handshake that names `server_name` (SNI) verifies against `ca`."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=server_name):
                return True
        except ssl.SSLCertVerificationError:
            return False


def reloads(service: ServiceProcess, result: str) -> float:
    return metric(service, RELOADS, result=result)


def test_a_renewed_certificate_is_served_without_a_restart(
    gateway: tuple[ServiceProcess, Path], pairs: tuple[Pair, Pair]
) -> None:
    service, volume = gateway
    (old_cert, _), new = pairs
    assert service.process is not None
    pid = service.pid
    install(volume, *new)
    service.wait_for("serving the new one", lambda: serves_https(service, new[0]), 30)
    with pytest.raises(ssl.SSLCertVerificationError):
        https(service.port, old_cert, "GET", "/readyz")
    # A client that names the server (SNI) gets the new one too.
    assert presented_to_sni(service, new[0], "localhost")
    assert not presented_to_sni(service, old_cert, "localhost")
    assert service.pid == pid and service.process.poll() is None
    assert reloads(service, "loaded") == 1
    assert reloads(service, "refused") == 0


def test_a_pair_that_does_not_load_leaves_the_served_certificate(
    gateway: tuple[ServiceProcess, Path], pairs: tuple[Pair, Pair]
) -> None:
    service, volume = gateway
    old, new = pairs
    # The new certificate with the old key: the pair does not match.
    install(volume, new[0], old[1])
    service.wait_for("refusing the pair", lambda: reloads(service, "refused") == 1, 30)
    assert serves_https(service, old[0])
    assert "do not load as a certificate chain and its key" in service.log_tail()
    # Seen once: the same bad pair is not counted again at each check.
    time.sleep(1)
    assert reloads(service, "refused") == 1
    install(volume, *new)
    service.wait_for("serving the new one", lambda: serves_https(service, new[0]), 30)
    assert reloads(service, "loaded") == 1
