"""Every TLS context the gateway serves with (mlstack_gateway.certificates), the first one and each
one a renewed pair is loaded into, refuses renegotiation: on TLS 1.2 a client could otherwise
have the server compute a whole handshake again, as often as it asks, on one connection. Checked
in-process, on the context a handshake over memory buffers is given."""

from __future__ import annotations

import contextlib
import shutil
import ssl
from pathlib import Path

from mlstack_gateway.certificates import ServingCertificate
from prometheus_client import CollectorRegistry, Counter

from tests.certificates import self_signed_certificate


def serving_certificate(cert: Path, key: Path) -> ServingCertificate:
    reloads = Counter("reloads", "", ["result"], registry=CollectorRegistry())
    return ServingCertificate(cert, key, reloads)


def handshake(context: ssl.SSLContext, ca: Path) -> ssl.SSLObject:
    """A TLS 1.2 handshake, in memory, of a client that trusts ``ca`` alone with a server of
    ``context``: the server's end of the connection, its context the one the handshake chose."""
    client_context = ssl.create_default_context(cafile=str(ca))
    client_context.maximum_version = ssl.TLSVersion.TLSv1_2
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(client_in, client_out, server_hostname="localhost")
    server = context.wrap_bio(server_in, server_out, server_side=True)
    done: set[ssl.SSLObject] = set()
    for _ in range(10):
        for end in (client, server):
            if end not in done:
                with contextlib.suppress(ssl.SSLWantReadError):
                    end.do_handshake()
                    done.add(end)
        if len(done) == 2:
            return server
        server_in.write(client_out.read())
        client_in.write(server_out.read())
    raise AssertionError("the handshake did not end")


def test_the_served_context_refuses_renegotiation(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    serving = serving_certificate(cert, key)
    server = handshake(serving.context, cert)
    assert server.version() == "TLSv1.2"
    assert server.context.options & ssl.OP_NO_RENEGOTIATION


def test_a_context_loaded_at_a_reload_refuses_renegotiation(tmp_path: Path) -> None:
    old = self_signed_certificate(tmp_path / "old", "mlstack-old")
    new = self_signed_certificate(tmp_path / "new", "mlstack-new")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copyfile(old[0], cert)
    shutil.copyfile(old[1], key)
    serving = serving_certificate(cert, key)
    shutil.copyfile(new[0], cert)
    shutil.copyfile(new[1], key)
    assert serving.check()
    # Verified against the new certificate: the reload's context served the handshake.
    server = handshake(serving.context, new[0])
    assert server.context is not serving.context
    assert server.context.options & ssl.OP_NO_RENEGOTIATION
