"""Talk to a running model server the way a data scientist would: with tritonclient, HTTP and
gRPC, every option left at its default (tensors go as binary data over HTTP and as
raw_input_contents over gRPC).

    make serve       # in one terminal
    make oip-check   # in another: against make serve's model (the same SERVE_* variables)
    python -m tools.oip_check --http HOST:PORT --grpc HOST:PORT   # any other server

Exits 0 when every check passes, 1 with the first failure otherwise. The service tests run the
same checks against a server of their own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from components.app import MODEL_NAME
from harness.services import SETOSA, VIRGINICA

# Rows of the three iris species that every trained version classifies the same way.
ROWS = np.array([SETOSA, [6.4, 3.2, 4.5, 1.5], VIRGINICA], dtype=np.float32)
CLASSES = [0, 1, 2]


class CheckError(AssertionError):
    pass


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise CheckError(what)


def _check_client(client: Any, module: Any) -> str:
    """The checks both clients share (their methods have the same names); the served version."""
    _expect(client.is_server_live(), "server is not live")
    _expect(client.is_server_ready(), "server is not ready")
    _expect(client.is_model_ready(MODEL_NAME), f"model {MODEL_NAME} is not ready")
    metadata = client.get_model_metadata(MODEL_NAME)
    versions = list(metadata["versions"] if isinstance(metadata, dict) else metadata.versions)
    _expect(len(versions) == 1, f"model metadata lists versions {versions}")
    version = str(versions[0])
    _expect(
        client.is_model_ready(MODEL_NAME, version), f"model {MODEL_NAME} {version} is not ready"
    )

    tensor = module.InferInput("input-0", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    # No outputs named: the protocol answers every output the model's metadata lists, in order.
    result = client.infer(MODEL_NAME, [tensor])
    answered = _output_names(result.get_response())
    listed = _output_names(metadata)
    _expect(answered == listed, f"answered outputs {answered}, the metadata lists {listed}")
    labels = result.as_numpy("predict")
    _expect(labels is not None and labels.tolist() == CLASSES, f"predicted {labels}")

    outputs = [module.InferRequestedOutput("predict_proba")]
    proba = client.infer(MODEL_NAME, [tensor], model_version=version, outputs=outputs)
    matrix = proba.as_numpy("predict_proba")
    _expect(matrix is not None and matrix.shape == (3, 3), f"probabilities {matrix}")
    _expect(bool(np.allclose(matrix.sum(axis=1), 1.0)), f"probabilities {matrix} do not sum to 1")
    _expect(matrix.argmax(axis=1).tolist() == CLASSES, f"probabilities {matrix}")
    return version


def _output_names(message: Any) -> list[str]:
    """The output names of a metadata or infer answer: a dict over HTTP, a protobuf over gRPC."""
    outputs = message["outputs"] if isinstance(message, dict) else message.outputs
    return [str(o["name"] if isinstance(o, dict) else o.name) for o in outputs]


def check_http(target: str) -> str:
    return _check_with(httpclient, target)


def check_grpc(target: str) -> str:
    return _check_with(grpcclient, target)


def _check_with(protocol: Any, target: str) -> str:
    """The check through `protocol`'s client (tritonclient.http or .grpc), closed after."""
    client = protocol.InferenceServerClient(target)
    try:
        return _check_client(client, protocol)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.oip_check", description=__doc__)
    # No defaults: where `make serve` puts the model is mk/services.mk's, which `make oip-check`
    # passes here.
    parser.add_argument("--http", required=True, help="REST host:port")
    parser.add_argument("--grpc", required=True, help="gRPC host:port")
    args = parser.parse_args(argv)
    checks: list[tuple[str, str, Callable[[str], str]]] = [
        ("http", args.http, check_http),
        ("grpc", args.grpc, check_grpc),
    ]
    for name, target, check in checks:
        try:
            version = check(target)
        except Exception as exc:
            print(f"{name} {target}: FAILED: {exc}", file=sys.stderr)
            return 1
        print(f"{name} {target}: ok ({MODEL_NAME} {version}, tritonclient defaults)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
