"""A private key encrypted with a passphrase is refused, at start and at a reload, without the
gateway asking anyone for the passphrase: OpenSSL's default is to ask on the terminal, or to read
it from stdin, which blocks the event loop (a reload) or the start while it waits.

Each case runs in a process of its own, in a session without a terminal, with the passphrase
waiting on its stdin: a gateway that asked would read it, and load the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.services import GATEWAY_SRC, import_path
from tests.certificates import self_signed_certificate

PASSPHRASE = "correct horse"

# What each case prints: the settings' refusal, or whether a changed pair was loaded and how
# many pairs were refused (a check that never tried the pair loads none and refuses none).
AT_START = """
import sys
from mlstack_common.env import SettingsError
from mlstack_gateway.settings import GatewaySettings
env = {"MLSTACK_API_KEY": "k", "MODEL_URL": "http://model.invalid:8080",
       "TLS_CERT_FILE": sys.argv[1], "TLS_KEY_FILE": sys.argv[2]}
try:
    GatewaySettings.from_env(env)
except SettingsError as exc:
    print("refused:", exc)
else:
    print("accepted")
"""
AT_RELOAD = """
import shutil, sys
from pathlib import Path
from prometheus_client import CollectorRegistry, Counter
from mlstack_gateway.certificates import ServingCertificate
cert, key, encrypted_cert, encrypted_key = map(Path, sys.argv[1:5])
registry = CollectorRegistry()
reloads = Counter("reloads", "", ["result"], registry=registry)
serving = ServingCertificate(cert, key, reloads)
shutil.copyfile(encrypted_cert, cert)
shutil.copyfile(encrypted_key, key)
loaded = serving.check()
refused = registry.get_sample_value("reloads_total", {"result": "refused"}) or 0
print("loaded" if loaded else "not loaded", f"refused {refused:.0f}")
"""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """A plain pair, and a pair whose key is encrypted with PASSPHRASE."""
    folder = tmp_path_factory.mktemp("tls-passphrase")
    plain_cert, plain_key = self_signed_certificate(folder / "plain")
    cert, key = self_signed_certificate(folder / "encrypted", passphrase=PASSPHRASE)
    assert b"ENCRYPTED" in key.read_bytes()
    return plain_cert, plain_key, cert, key


def run_with_passphrase_on_stdin(code: str, *args: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        input=PASSPHRASE + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": ":".join(import_path(GATEWAY_SRC))},
        # No controlling terminal: OpenSSL's prompt, if it came, would read stdin.
        start_new_session=True,
        check=True,
    )


def test_an_encrypted_key_stops_the_gateway_at_start_without_asking(
    pairs: tuple[Path, Path, Path, Path],
) -> None:
    _, _, cert, key = pairs
    result = run_with_passphrase_on_stdin(AT_START, cert, key)
    assert result.stdout.strip() == (
        f"refused: TLS_CERT_FILE={cert} and TLS_KEY_FILE={key} do not load as a certificate "
        "chain and its private key: the private key is encrypted; give it without a passphrase"
    )
    assert "pass phrase" not in result.stderr


def test_an_encrypted_key_at_a_reload_is_refused_without_asking(
    pairs: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    plain_cert, plain_key, cert, key = pairs
    served_cert, served_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    served_cert.write_bytes(plain_cert.read_bytes())
    served_key.write_bytes(plain_key.read_bytes())
    result = run_with_passphrase_on_stdin(AT_RELOAD, served_cert, served_key, cert, key)
    assert result.stdout.strip() == "not loaded refused 1"
    assert "pass phrase" not in result.stderr
