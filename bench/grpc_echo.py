"""The gRPC ceiling: a bare grpc.aio server that answers every ModelInfer with one fixed answer.

The same grpc.aio server, options and uvloop event loop as the model server's gRPC side, but no
parsing of the request (its bytes are never decoded), no validation and no inference: the most a
Python gRPC server answers on this machine.

    python -m bench.grpc_echo PORT MODEL   (PYTHONPATH: the repository root and services/model)

MODEL: the model's name, which the answer gives (bench/servers.py starts it with the project's).
"""

from __future__ import annotations

import sys
from typing import Any

import grpc
import uvloop
from mlstack_model.grpc.routes import SERVICE
from mlstack_model.proto import open_inference_pb2 as pb


def answer(model_name: str) -> bytes:
    """What the model answers for one row, serialized (once)."""
    return pb.ModelInferResponse(
        model_name=model_name,
        model_version="v2",
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name="predict", datatype="INT64", shape=[1])
        ],
        raw_output_contents=[bytes(8)],
    ).SerializeToString()


async def serve(port: int, model_name: str) -> None:
    reply = answer(model_name)

    async def model_infer(request: bytes, context: Any) -> bytes:
        return reply

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    # No (de)serializers: bytes in, bytes out.
    handler = grpc.method_handlers_generic_handler(
        SERVICE.full_name, {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2]))
