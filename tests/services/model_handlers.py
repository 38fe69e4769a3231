"""Infer requests answered by the model's own REST and gRPC handlers in one process, each pass
of its scorer over the rows counted: what ``test_model_scoring`` runs as a child process, since
the model's gRPC stubs cannot be imported beside tritonclient's (the test process holds those,
under the same message names).

    python -m tests.services.model_handlers MODEL_DIR VERSION REQUESTS_JSON

``REQUESTS_JSON`` is a file holding a list of requests, each ``{"transport": "rest" | "grpc",
"body": <hex>, "headers": {...}}`` (a gRPC body is a serialized ModelInferRequest). Prints, as
JSON, for each request in turn its outputs' elements and the row counts of the scorer's passes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from harness.services import MODEL_SRC, import_service

# Each compiled scorer's one pass over the rows that its predict and predict_proba start from.
SCORING_PASS = {"LinearScorer": "_decision", "TreeScorer": "_leaves"}
RAW_LAYOUT = {"INT64": "<i8", "FP64": "<f8"}


async def _rest(routes: Any, body: bytes, headers: dict[str, str]) -> list[Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    await routes.infer_asgi(scope, receive, send, routes.dataplane.model.name, None)
    if sent[0]["status"] != 200:
        raise RuntimeError(f"REST answered {sent[0]['status']}: {sent[1]['body']!r}")
    return [output["data"] for output in orjson.loads(sent[1]["body"])["outputs"]]


async def _grpc(routes: Any, body: bytes) -> list[Any]:
    from mlstack_model.proto import open_inference_pb2 as pb

    answer = await routes.model_infer(pb.ModelInferRequest.FromString(body))
    if answer.raw_output_contents:
        return [
            np.frombuffer(raw, dtype=RAW_LAYOUT[output.datatype]).tolist()
            for output, raw in zip(answer.outputs, answer.raw_output_contents, strict=True)
        ]
    return [
        list(output.contents.int64_contents or output.contents.fp64_contents)
        for output in answer.outputs
    ]


async def answer_all(model_dir: Path, version: str, requests: list[dict[str, Any]]) -> list[Any]:
    import_service(MODEL_SRC)
    from mlstack_model.dataplane import DataPlane
    from mlstack_model.grpc.routes import GrpcRoutes
    from mlstack_model.loaded_model import load_model
    from mlstack_model.rest.routes import RestRoutes
    from mlstack_model.settings import ModelSettings

    settings = ModelSettings.from_env({"MODEL_DIR": str(model_dir), "MODEL_VERSION": version})
    dataplane = DataPlane(settings)
    dataplane.model = load_model(settings)
    scorer = dataplane.model.scorer
    name = SCORING_PASS[type(scorer).__name__]
    scoring_pass = getattr(scorer, name)
    passes: list[int] = []

    def counted(x: Any) -> Any:
        passes.append(len(x))
        return scoring_pass(x)

    # On the instance: the real pass still runs, and every method that takes it is counted.
    setattr(scorer, name, counted)
    rest, grpc_routes = RestRoutes(dataplane), GrpcRoutes(dataplane)
    answers = []
    try:
        for request in requests:
            passes.clear()
            body = bytes.fromhex(request["body"])
            if request["transport"] == "rest":
                outputs = await _rest(rest, body, request["headers"])
            else:
                outputs = await _grpc(grpc_routes, body)
            answers.append({"outputs": outputs, "passes": list(passes)})
    finally:
        dataplane.executor.shutdown()
    return answers


def main(argv: list[str]) -> int:
    model_dir, version, requests_file = argv
    requests = json.loads(Path(requests_file).read_text())
    print(json.dumps(asyncio.run(answer_all(Path(model_dir), version, requests))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
