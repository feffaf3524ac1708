"""Server reflection that keeps the .proto comments, so `grpcurl describe` shows the docs.

grpc_reflection serves each file with `FileDescriptor.CopyToProto`, which has no
source_code_info: the generated `_pb2` modules carry none. Here the wire contract is compiled once
at start-up (grpc_tools' protoc, in-process, ~30 ms) with `--include_source_info`, and those
file descriptors are served instead. Without `protos/` (an installed wheel) reflection still
works, only without comments.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

log = logging.getLogger("postroom.coordinator")
PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"


def sourced_descriptors(root: Path = PROTO_ROOT) -> dict[str, bytes]:
    """File name -> serialized FileDescriptorProto with comments; {} if it cannot be built."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.proto"))
    if not files:
        return {}
    include = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        args = ["protoc", f"-I{root}", f"-I{include}", "--include_source_info",
                "--include_imports", f"--descriptor_set_out={out}", *files]  # fmt: skip
        if protoc.main(args) != 0 or not out.exists():
            log.warning("could not compile %s for reflection; serving it without comments", root)
            return {}
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {f.name: f.SerializeToString() for f in fds.file}


class CommentedReflectionServicer(ReflectionServicer):  # type: ignore[misc]
    def __init__(self, service_names: Iterable[str], sourced: dict[str, bytes]) -> None:
        super().__init__(service_names)
        self._sourced = sourced

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        return self._swap(super()._file_by_filename(request, filename))

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        return self._swap(super()._file_containing_symbol(request, fully_qualified_name))

    def _swap(self, response: reflection_pb2.ServerReflectionResponse) -> Any:
        if not response.HasField("file_descriptor_response"):
            return response
        protos = response.file_descriptor_response.file_descriptor_proto
        for i, raw in enumerate(protos):
            name = descriptor_pb2.FileDescriptorProto.FromString(raw).name
            if name in self._sourced:
                protos[i] = self._sourced[name]
        return response


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    servicer = CommentedReflectionServicer(service_names, sourced_descriptors())
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
