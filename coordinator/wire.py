"""Registering the coordinator's gRPC services so that bytes that are not the method's message
get INVALID_ARGUMENT, not grpc's UNKNOWN with a Python error in it.

The generated `add_*Servicer_to_server` functions parse requests with `FromString`; a parse
error then escapes into grpc.aio, which answers `UNKNOWN "Unexpected DecodeError"`. Here every
method of a service is registered with a parser that returns a `Garbage` value instead: unary and
server-streaming handlers are answered INVALID_ARGUMENT before the servicer runs; a streaming
request's handler (WorkerGateway.Connect) sees the `Garbage` item in its iterator and ends the
stream with INVALID_ARGUMENT itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message

from postroom.v1 import publishing_pb2, worker_gateway_pb2


class Garbage:
    """A request that did not parse as the message its method takes."""

    def __init__(self, type_name: str, error: str) -> None:
        self.message = (
            f"the request is not a valid {type_name} ({error}); send the method's message "
            "(see `grpcurl ... describe`)"
        )


def _parser(cls: type[Message]) -> Callable[[bytes], Message | Garbage]:
    name = cls.DESCRIPTOR.full_name

    def parse(data: bytes) -> Message | Garbage:
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError) as exc:
            return Garbage(name, str(exc) or exc.__class__.__name__)

    return parse


def _unary(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Garbage):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await fn(request, context)

    return handler


def _server_stream(fn: Callable[[Any, Any], AsyncIterator[Any]]) -> Callable[[Any, Any], Any]:
    async def handler(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        if isinstance(request, Garbage):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        async for item in fn(request, context):
            yield item

    return handler


def _handler(servicer: object, method: MethodDescriptor) -> grpc.RpcMethodHandler[Any, Any]:
    fn = getattr(servicer, method.name)
    parse = _parser(message_factory.GetMessageClass(method.input_type))
    serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
    if method.client_streaming and method.server_streaming:
        return grpc.stream_stream_rpc_method_handler(
            fn, request_deserializer=parse, response_serializer=serialize
        )
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler(
            fn, request_deserializer=parse, response_serializer=serialize
        )
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _server_stream(fn), request_deserializer=parse, response_serializer=serialize
        )
    return grpc.unary_unary_rpc_method_handler(
        _unary(fn), request_deserializer=parse, response_serializer=serialize
    )


def add_service(server: grpc.aio.Server, file: FileDescriptor, name: str, servicer: object) -> None:
    """Register every method of service `name` (declared in `file`) on `server`, as the
    generated add_*_to_server would, but with tolerant request parsing (module docstring)."""
    service = file.services_by_name[name]
    handlers = {m.name: _handler(servicer, m) for m in service.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name,
                                                                          handlers),))  # fmt: skip
    # As the generated code does (grpc-stubs do not know this method yet).
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]


def add_publishing(server: grpc.aio.Server, servicer: object) -> None:
    add_service(server, publishing_pb2.DESCRIPTOR, "Publishing", servicer)


def add_worker_gateway(server: grpc.aio.Server, servicer: object) -> None:
    add_service(server, worker_gateway_pb2.DESCRIPTOR, "WorkerGateway", servicer)
