"""HTTPS from the stack secrets `mlstack:gatewayTlsCert` and `mlstack:gatewayTlsKey`: the program
loads the pair as the gateway will at start (Python's ssl, a server context, no passphrase), so a
pair the gateway would refuse stops `pulumi preview` with one line that names the keys, never
their values, rather than the gateway's pods and a `pulumi up` that waits for them; and so does
a certificate every client would refuse (past its end, before its start)."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.program import ROOT, run_program
from tests.certificates import chain_with_expired_issuer, pem_pair
from tests.unit.configs import config_error, existing_with

CERT, KEY = pem_pair()
OTHER_KEY = pem_pair("mlstack-other")[1]
PASSPHRASE = "correct horse"
STOPS = "the gateway would stop at start"

# The program up to its config's refusal, in a process of its own, in a session without a
# terminal, with the passphrase waiting on its stdin: a check that let OpenSSL ask for it would
# read it there, and take the key.
REFUSAL = """
import json, sys
from harness.program import ProgramExitError, run_program
try:
    run_program("dev", json.loads(sys.argv[1]))
except ProgramExitError as exited:
    print(*exited.errors)
else:
    print("taken")
"""


def tls_from_secrets(cert: str, key: str) -> dict[str, Any]:
    """An existing cluster's config whose gateway serves HTTPS from the stack secrets `cert` and
    `key`."""
    config = existing_with(gateway={"replicas": 1, "tls": {}})
    config["mlstack:gatewayTlsCert"] = cert
    config["mlstack:gatewayTlsKey"] = key
    return config


def garbled(pem: str) -> str:
    """`pem` without the second line of its base64 body: its markers stay, and what they hold is
    shorter than its first bytes say, so it no longer parses."""
    lines = pem.splitlines(keepends=True)
    return "".join([*lines[:2], *lines[3:]])


def shows_no_value(message: str, *pems: str) -> str:
    """`message`, which holds no line of any of `pems`."""
    for line in (line for pem in pems for line in pem.splitlines() if line.strip()):
        assert line not in message
    return message


def refusal(cert: str, key: str) -> str:
    """The one line that refuses the pair, which shows no part of either value."""
    return shows_no_value(config_error(tls_from_secrets(cert, key)), cert, key)


def test_a_certificate_that_does_not_parse_is_refused() -> None:
    assert refusal(garbled(CERT), KEY) == (
        "mlstack:gatewayTlsCert does not load as a PEM certificate chain (a certificate in it "
        f"does not parse): {STOPS}; set it with `pulumi config set --secret "
        "mlstack:gatewayTlsCert < chain.pem`"
    )


def test_the_key_of_another_certificate_is_refused() -> None:
    assert refusal(CERT, OTHER_KEY) == (
        "mlstack:gatewayTlsKey is not the private key of the certificate in "
        f"mlstack:gatewayTlsCert (the chain's first): {STOPS}; set the key that belongs to it "
        "with `pulumi config set --secret mlstack:gatewayTlsKey < key.pem`"
    )


def test_a_key_that_does_not_parse_is_refused_with_openssl_s_reason() -> None:
    """Which of the two OpenSSL failed on, it does not say: both keys are named, with its
    reason (in its own words, which its versions may put otherwise)."""
    message = refusal(CERT, garbled(KEY))
    before, _, reason = message.partition(" (OpenSSL: ")
    assert before == (
        "mlstack:gatewayTlsCert and mlstack:gatewayTlsKey do not load as a certificate chain and "
        "its private key"
    )
    assert reason.endswith(
        f"): {STOPS}; set them with `pulumi config set --secret mlstack:gatewayTlsCert < "
        "chain.pem` and `pulumi config set --secret mlstack:gatewayTlsKey < key.pem`"
    )
    assert "_ssl.c" not in reason
    assert not reason.startswith(")")


@pytest.mark.parametrize(
    ("made", "why"),
    [
        ({"dates": ("20250101000000Z", "20250102000000Z")}, "has expired"),
        (
            {"dates": ("20400101000000Z", "20400102000000Z")},
            "is not valid yet (its start date is still to come)",
        ),
    ],
    ids=["expired", "not-yet-valid"],
)
def test_a_certificate_every_client_would_refuse_is_refused(made: Any, why: str) -> None:
    """The gateway would start with it, and serve HTTPS no client accepts: the preview stops."""
    cert, key = pem_pair(**made)
    assert refusal(cert, key) == (
        f"the certificate in mlstack:gatewayTlsCert (the chain's first) {why}: clients would "
        "refuse the gateway's HTTPS; set another with `pulumi config set --secret "
        "mlstack:gatewayTlsCert < chain.pem`"
    )


@pytest.mark.parametrize(
    "pair",
    [
        lambda: pem_pair("mlstack-both", usage="serverAuth,clientAuth"),
        # Only the first certificate's dates are the program's to judge: a client that trusts
        # a root above the expired one builds its chain without it.
        chain_with_expired_issuer,
    ],
    ids=["server-and-client-usage", "expired-issuer-in-the-chain"],
)
def test_a_certificate_clients_may_take_is_taken(pair: Callable[[], tuple[str, str]]) -> None:
    cert, key = pair()
    run = run_program("dev", tls_from_secrets(cert, key))
    assert run.one("Secret", "gateway-tls").inputs["stringData"]["tls.crt"] == cert


@pytest.mark.parametrize("traditional", [False, True], ids=["pkcs8", "traditional"])
def test_an_encrypted_key_is_refused_without_asking_for_its_passphrase(traditional: bool) -> None:
    cert, key = pem_pair("mlstack-encrypted", passphrase=PASSPHRASE, traditional=traditional)
    assert "ENCRYPTED" in key
    result = subprocess.run(
        [sys.executable, "-c", REFUSAL, json.dumps(tls_from_secrets(cert, key))],
        input=PASSPHRASE + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
        # No controlling terminal: OpenSSL's prompt, if it came, would read stdin.
        start_new_session=True,
        check=True,
    )
    assert shows_no_value(result.stdout.strip(), cert, key) == (
        "mlstack:gatewayTlsKey is encrypted with a passphrase, which the gateway is never given: "
        f"{STOPS}; set the key without one with `pulumi config set --secret "
        "mlstack:gatewayTlsKey < key.pem`"
    )
    assert "pass phrase" not in result.stderr


def test_a_key_in_openssl_s_older_form_is_taken() -> None:
    """`BEGIN EC PRIVATE KEY` (or `RSA PRIVATE KEY`, as cert-manager writes an RSA key), which
    the gateway loads as it loads PKCS#8."""
    cert, key = pem_pair("mlstack-traditional", traditional=True)
    assert key.startswith("-----BEGIN EC PRIVATE KEY-----")
    run = run_program("dev", tls_from_secrets(cert, key))
    secret = run.one("Secret", "gateway-tls").inputs["stringData"]
    assert secret == {"tls.crt": cert, "tls.key": key}


def test_a_chain_with_text_around_its_certificates_is_taken() -> None:
    """As `openssl x509 -text` or a CA's bundle writes it: OpenSSL reads the PEM blocks alone,
    and the names before one may be in UTF-8."""
    chain = f"subject=CN = caf\u00e9 r\u00e9seau\n{CERT}trailing notes\n"
    run = run_program("dev", tls_from_secrets(chain, KEY))
    assert run.one("Secret", "gateway-tls").inputs["stringData"]["tls.crt"] == chain


def test_the_pair_is_on_disk_only_while_it_loads_and_only_for_this_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenSSL reads a pair from files alone: the program writes them in a folder of the
    temporary one that only its user may open, and removes it, whether the pair loads or not."""
    modes: list[int] = []
    load = ssl.SSLContext.load_cert_chain

    def load_and_see(self: ssl.SSLContext, certfile: str, keyfile: str, **kwargs: Any) -> None:
        for path in (os.path.dirname(certfile), certfile, keyfile):
            modes.append(stat.S_IMODE(os.stat(path).st_mode))
        load(self, certfile, keyfile, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", load_and_see)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run_program("dev", tls_from_secrets(CERT, KEY))
    refusal(CERT, OTHER_KEY)
    # The pair, then its first certificate alone with its key (the handshake in memory); the
    # pair refused.
    assert modes == [0o700, 0o600, 0o600] * 3
    assert list(tmp_path.iterdir()) == []
