"""gRPC handlers for the Open Inference Protocol: ``inference.GRPCInferenceService``, plus the
standard ``grpc.health.v1.Health`` service for probes, on a grpc.aio server that shares the REST
server's event loop (see ``mlstack_model.app``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mlstack_model import SERVER_NAME, SERVER_VERSION
from mlstack_model.dataplane import DataPlane
from mlstack_model.errors import ErrorKind, ProtocolError, invalid
from mlstack_model.grpc import protocol
from mlstack_model.grpc.connections import connection_options
from mlstack_model.metadata import EXTENSIONS
from mlstack_model.proto import open_inference_pb2 as pb
from mlstack_model.settings import ModelSettings

log = logging.getLogger("mlstack_model")

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
Handler = Callable[[Any], Awaitable[Message]]

_LIVE = pb.ServerLiveResponse(live=True)
_SERVER_METADATA = pb.ServerMetadataResponse(
    name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS
)


class GrpcRoutes:
    """The protocol's RPCs, each answering from the shared ``DataPlane``."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def handlers(self) -> dict[str, Handler]:
        return {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer,
        }

    async def server_live(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return _LIVE

    async def server_ready(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready)

    async def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        self.dataplane.resolve(request.name, request.version)
        return pb.ModelReadyResponse(ready=True)

    async def server_metadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return _SERVER_METADATA

    async def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        model = self.dataplane.resolve(request.name, request.version)
        return protocol.model_metadata(model.metadata)

    async def model_infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        model = self.dataplane.resolve(request.model_name, request.model_version)
        with self.dataplane.admission.slot():
            infer_request = protocol.parse_infer_request(
                request, model.scorer.n_features, self.dataplane.settings.max_batch_rows
            )
            outputs = await self.dataplane.infer(model, infer_request)
            return protocol.infer_response(model.name, model.version, infer_request, outputs)


class Undecodable:
    """What a request's bytes that do not parse as its message become: grpc.aio answers a
    deserializer's exception with UNKNOWN and a traceback in the log, so the deserializer hands
    this to the handler instead, which refuses it as the client's mistake it is."""

    def __init__(self, message_type: type[Message]) -> None:
        self.error = invalid(
            f"the request is not a valid {message_type.DESCRIPTOR.full_name} message"
        )


def _decoder(message_type: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    def decode(data: bytes) -> Message | Undecodable:
        try:
            return message_type.FromString(data)
        except DecodeError:
            return Undecodable(message_type)

    return decode


def _answering(handler: Handler) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]:
    """The handler as grpc.aio calls it: errors end the call with the status of their kind."""

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
        try:
            if isinstance(request, Undecodable):
                raise request.error
            return await handler(request)
        except ProtocolError as exc:
            error = exc
        except Exception:
            log.exception("gRPC %s failed", handler.__name__)
            error = ProtocolError(ErrorKind.INTERNAL, "internal server error")
        await context.abort(error.kind.grpc_code, error.message)
        raise AssertionError("abort returned")  # pragma: no cover: abort always raises

    return call


def inference_handler(routes: GrpcRoutes) -> grpc.GenericRpcHandler[Any, Any]:
    """The service's method table; message types come from the .proto's service descriptor."""
    handlers = routes.handlers()
    declared = {method.name for method in SERVICE.methods}
    if set(handlers) != declared:
        raise RuntimeError(f"GrpcRoutes answers {sorted(handlers)}, the .proto declares {declared}")
    methods = {
        method.name: grpc.unary_unary_rpc_method_handler(
            _answering(handlers[method.name]),
            request_deserializer=_decoder(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in SERVICE.methods
    }
    return grpc.method_handlers_generic_handler(SERVICE.full_name, methods)


# Room in a message for everything but the tensor's elements: names, datatype, shape, parameters.
_MESSAGE_OVERHEAD_BYTES = 64 * 1024
# The most an element takes in a message: 8 raw bytes, up to 10 as a typed varint.
_ELEMENT_BYTES = 10


def max_message_bytes(settings: ModelSettings, n_features: int) -> int:
    """The largest ModelInferRequest the server reads: what a batch of MAX_BATCH_ROWS rows can
    take, and never more than MAX_BODY_BYTES. gRPC holds a whole message before a handler sees
    it, so this, not the in-flight bound, is what bounds the memory of each call of a burst; how
    many calls it holds, only the streams of a connection and the connections bound."""
    batch = settings.max_batch_rows * n_features * _ELEMENT_BYTES + _MESSAGE_OVERHEAD_BYTES
    return min(settings.max_body_bytes, batch)


class GrpcServer:
    """The gRPC server: started once the model is loaded, stopped before it is unloaded."""

    def __init__(self, dataplane: DataPlane, settings: ModelSettings) -> None:
        self.settings = settings
        self.dataplane = dataplane
        assert dataplane.model is not None, "the gRPC server starts once the model is loaded"
        max_message = max_message_bytes(settings, dataplane.model.scorer.n_features)
        self.server = grpc.aio.server(
            options=[
                # Larger messages end RESOURCE_EXHAUSTED before they are read.
                ("grpc.max_receive_message_length", max_message),
                # An answer is at most one tensor per output for MAX_BATCH_ROWS rows, far below
                # this; the limit stops anything else from growing one unbounded.
                ("grpc.max_send_message_length", settings.max_body_bytes),
                # Calls on one connection; beyond the in-flight bound they would be refused
                # anyway, so a client is held back by flow control instead.
                ("grpc.max_concurrent_streams", settings.max_concurrent_requests),
                # gRPC turns SO_REUSEPORT on by default: a second server on a taken port would
                # share it silently instead of failing.
                ("grpc.so_reuseport", 0),
                *connection_options(settings),
            ]
        )
        self.server.add_generic_rpc_handlers((inference_handler(GrpcRoutes(dataplane)),))
        # grpc-stubs types only the thread-based servicer, not this asyncio one.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._updates: set[asyncio.Task[None]] = set()
        dataplane.drain_listeners.append(self._drain_started)

    async def start(self) -> int:
        host, port = self.settings.host, self.settings.grpc_port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen for gRPC on {address}: {exc}") from None
        if bound == 0:
            raise RuntimeError(f"cannot listen for gRPC on {address}")
        await self.server.start()
        # The overall status ("") answers liveness probes; the service's own name, readiness.
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._set_readiness()
        log.info("gRPC (%s) listening on %s", SERVICE.full_name, address)
        return bound

    async def _set_readiness(self) -> None:
        # Read when it runs: the drain only ever starts, so whichever update runs last is right.
        ready = not self.dataplane.draining
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(SERVICE.full_name, status)

    def _drain_started(self) -> None:
        """The readiness status turns NOT_SERVING with /v2/health/ready and ServerReady, so that
        gRPC clients that check it stop sending here; liveness ("") stays SERVING."""
        task = asyncio.get_running_loop().create_task(self._set_readiness())
        self._updates.add(task)
        task.add_done_callback(self._updates.discard)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
