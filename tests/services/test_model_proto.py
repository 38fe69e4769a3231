"""The committed gRPC stubs are what the .proto generates, and the .proto is the protocol's:
every message and field it declares matches, by number and type, the one in tritonclient's
own descriptors (a client built from the upstream definition)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc
from tritonclient.grpc import service_pb2 as upstream

from harness.services import MODEL_SRC

PROTO = "mlstack_model/proto/open_inference.proto"
GENERATED = ("open_inference_pb2.py", "open_inference_pb2.pyi")
Fields = dict[int, tuple[str, int, int, str]]


def _protoc(*args: str) -> None:
    status = protoc.main(["protoc", f"-I{MODEL_SRC}", *args, PROTO])
    assert status == 0, f"protoc failed ({status})"


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorProto:
    """Our .proto compiled to its descriptor (never imported: the process holds tritonclient's
    messages under the same names)."""
    out = tmp_path_factory.mktemp("descriptor") / "set.pb"
    _protoc(f"--descriptor_set_out={out}")
    (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return file


@pytest.fixture(scope="module")
def theirs() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto()
    upstream.DESCRIPTOR.CopyToProto(file)
    return file


def _messages(
    prefix: str, messages: list[descriptor_pb2.DescriptorProto]
) -> Iterator[tuple[str, Fields]]:
    for message in messages:
        name = f"{prefix}.{message.name}"
        yield name, {f.number: (f.name, f.type, f.label, f.type_name) for f in message.field}
        yield from _messages(name, list(message.nested_type))


def test_committed_stubs_are_what_the_proto_generates(tmp_path: Path) -> None:
    _protoc(f"--python_out={tmp_path}", f"--pyi_out={tmp_path}")
    committed = MODEL_SRC / "mlstack_model" / "proto"
    for name in GENERATED:
        fresh = (tmp_path / "mlstack_model" / "proto" / name).read_text()
        assert (committed / name).read_text() == fresh, f"{name} is stale: run `make model-proto`"


def test_every_message_matches_the_protocol_field_by_field(
    ours: descriptor_pb2.FileDescriptorProto, theirs: descriptor_pb2.FileDescriptorProto
) -> None:
    assert ours.package == theirs.package == "inference"
    reference = dict(_messages("", list(theirs.message_type)))
    declared = dict(_messages("", list(ours.message_type)))
    assert len(declared) > 20
    for name, fields in declared.items():
        assert name in reference, name
        # Upstream has grown fields of its own; every field we declare must be its twin.
        assert {number: reference[name].get(number) for number in fields} == fields, name


def test_the_service_declares_the_protocol_methods(
    ours: descriptor_pb2.FileDescriptorProto, theirs: descriptor_pb2.FileDescriptorProto
) -> None:
    (service,) = ours.service
    reference = next(s for s in theirs.service if s.name == service.name)
    assert service.name == "GRPCInferenceService"
    twins = {m.name: (m.input_type, m.output_type) for m in reference.method}
    methods = {m.name: (m.input_type, m.output_type) for m in service.method}
    assert set(methods) == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    }
    assert {name: twins[name] for name in methods} == methods
