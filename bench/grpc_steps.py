"""Where the model's gRPC answer costs more than the bare grpc.aio echo: the echo with the model's
handler added one step at a time, each a server of its own, side by side in each round.

Every step is a grpc.aio server on uvloop, like ``bench.grpc_echo``, answering ModelInfer:

- ``messages``: the request decoded and the answer serialized as the model's server does, through
  its error wrapper, the answer one prebuilt message;
- ``parse``: and the request parsed and checked (``grpc.protocol.parse_infer_request``);
- ``score``: and the model resolved, a slot of the in-flight bound taken and the row scored;
- ``handler``: the model's whole handler (``GrpcRoutes.model_infer``), its answer built;
- ``server``: the model's gRPC server as it runs in the model (``GrpcServer``: its options, the
  health service), alone in its process;

then the model server itself, its REST side idle beside it. ghz loads each at 32 connections for
``--seconds`` per round, the order turning from round to round; each step's requests/s is taken
against the bare echo's of the same round, and the median over the rounds reported with the
median CPU µs per call. Prints a markdown table.

    python -m bench.grpc_steps [--rounds 6] [--seconds 3]
    python -m bench.grpc_steps serve STEP    (one step's server: MODEL_DIR, HOST, GRPC_PORT)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.load import GrpcRequest, LoadResult, run_load
from bench.run import GRPC_INFER, PROTO, grpc_infer_body, iris_rows
from bench.servers import start_grpc_echo, start_grpc_only, start_model, started
from components.app import MODEL_NAME
from harness.ports import LOOPBACK, free_port
from harness.processes import LocalServer
from harness.services import MODEL_SRC, import_service

STEPS = ("messages", "parse", "score", "handler", "server")
CONNECTIONS = 32


def step_routes(step: str, dataplane: Any) -> Any:
    """The model's gRPC routes over `dataplane`, ModelInfer answered by `step`."""
    from mlstack_model.dataplane import score
    from mlstack_model.grpc import protocol
    from mlstack_model.grpc.routes import GrpcRoutes
    from mlstack_model.proto import open_inference_pb2 as pb

    model = dataplane.model
    n_features, max_rows = model.scorer.n_features, dataplane.settings.max_batch_rows
    answer = pb.ModelInferResponse(model_name=model.name, model_version=model.version)
    answer.outputs.add(name="predict", datatype="INT64", shape=[1])
    answer.raw_output_contents.append(bytes(8))

    async def messages(request: Any) -> Any:
        return answer

    async def parse(request: Any) -> Any:
        protocol.parse_infer_request(request, n_features, max_rows)
        return answer

    async def scored(request: Any) -> Any:
        resolved = dataplane.resolve(request.model_name, request.model_version)
        with dataplane.admission.slot():
            score(resolved, protocol.parse_infer_request(request, n_features, max_rows))
        return answer

    steps: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "messages": messages,
        "parse": parse,
        "score": scored,
    }

    class StepRoutes(GrpcRoutes):
        async def model_infer(self, request: Any) -> Any:
            return await steps[step](request)

    return GrpcRoutes(dataplane) if step == "handler" else StepRoutes(dataplane)


async def serve(step: str) -> None:
    """One step, on HOST and GRPC_PORT, the model loaded from MODEL_DIR (the model's modules
    imported here: the driver needs none of them)."""
    import grpc
    from mlstack_model.dataplane import DataPlane
    from mlstack_model.grpc.routes import GrpcServer, inference_handler
    from mlstack_model.loaded_model import load_model
    from mlstack_model.settings import ModelSettings

    settings = ModelSettings.from_env()
    dataplane = DataPlane(settings)
    dataplane.model = load_model(settings)
    if step == "server":
        # The model's whole gRPC server (its options, the health service) without REST beside it.
        model_server = GrpcServer(dataplane, settings)
        await model_server.start()
        await model_server.server.wait_for_termination()
        return
    # The model's own method table (its decoding, error wrapper, encoding), a bare server's
    # options.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((inference_handler(step_routes(step, dataplane)),))
    server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    await server.start()
    await server.wait_for_termination()


def start_step(step: str, model_dir: Path, log_dir: Path) -> LocalServer:
    port = free_port()
    return start_grpc_only(
        step,
        [sys.executable, "-m", "bench.grpc_steps", "serve", step],
        port,
        log_dir,
        {
            "MODEL_DIR": str(model_dir),
            "HOST": LOOPBACK,
            "GRPC_PORT": str(port),
            "LOG_LEVEL": "warning",
        },
    )


def measure(rounds: int, seconds: float) -> str:
    from mlstack_model import train

    with tempfile.TemporaryDirectory(prefix="mlstack-grpc-steps-") as folder, ExitStack() as stack:
        work = Path(folder)
        logs = work / "logs"
        logs.mkdir()
        model_dir = work / "models"
        train.train_all(model_dir, [MODEL_NAME])
        servers = [
            stack.enter_context(started(start_grpc_echo(logs))),
            *(stack.enter_context(started(start_step(s, model_dir, logs))) for s in STEPS),
            stack.enter_context(started(start_model(model_dir, logs))),
        ]
        call = grpc_infer_body(iris_rows(1))
        results: list[dict[str, LoadResult]] = []
        for round_ in range(rounds):
            turn = round_ % len(servers)
            found: dict[str, LoadResult] = {}
            for server in servers[turn:] + servers[:turn]:
                request = GrpcRequest(str(server.grpc_target), PROTO, GRPC_INFER, call)
                found[server.name] = run_load(
                    request, CONNECTIONS, seconds, work, {server.name: server.pid}
                )
            results.append(found)
            print(f"round {round_ + 1}: " + ", ".join(
                f"{name} {result.rps:,.0f}/s" for name, result in found.items()
            ), flush=True)  # fmt: skip
        echo = servers[0].name
        lines = [
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {rounds} rounds of {seconds:g} s, "
            f"{CONNECTIONS} connections, one row a call; other load on the machine: median "
            f"{statistics.median(r[echo].other_busy_cores for r in results):.2f} cores.",
            "",
            "| server | requests/s ÷ the echo's (median) | CPU µs per call (median) |",
            "| --- | ---: | ---: |",
        ]
        for server in servers:
            ratio = statistics.median(r[server.name].rps / r[echo].rps for r in results)
            cpu = statistics.median(r[server.name].cpu_us_per_request[server.name] for r in results)
            lines.append(f"| {server.name} | {ratio:.2f} | {cpu:.0f} |")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["serve"]:
        import uvloop

        uvloop.run(serve(args[1]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_steps", description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    options = parser.parse_args(args)
    print(measure(options.rounds, options.seconds))
    return 0


if __name__ == "__main__":
    import_service(MODEL_SRC)
    sys.exit(main())
