"""The operators' gate: a gRPC server interceptor in front of every `Publishing` RPC.

It reads the bearer token from the `authorization` metadata, finds its principal
(registry.Credentials.operator), checks the RPC's least role (roles.py), and runs the handler
with the principal in a context variable, where `current_principal()` finds it (the audit
actor, the self-approval and forced-retry checks). Health and reflection stay open: probes and
`grpcurl list` need no secret, and the schema is public anyway. The WorkerGateway authenticates
devices in its Hello (gateway.py), not here.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from coordinator.access.records import Role
from coordinator.access.registry import Credentials, Principal
from coordinator.access.roles import PUBLISHING_SERVICE, needed_role
from coordinator.errors import CoordinatorError, PermissionDenied
from coordinator.validation import actor_name as typed_actor

_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "postroom_principal", default=None
)
Ctx = grpc.aio.ServicerContext[Any, Any]


def current_principal() -> Principal | None:
    """The caller of the RPC being handled; None where no interceptor runs (bare test servers)."""
    return _PRINCIPAL.get()


def actor_name(value: str) -> str:
    """Who the audit log names: the caller's token identity; the typed `actor` only when the
    coordinator runs open (loopback, no tokens), where nobody proves who they are."""
    typed = typed_actor(value)  # checked even when unused: a bad field is still refused
    principal = current_principal()
    return principal.actor if principal is not None and principal.authenticated else typed


def require_role(role: Role, what: str) -> None:
    """A check finer than the table's (e.g. a forced retry needs an approver)."""
    principal = current_principal()
    if principal is not None and not principal.role.allows(role):
        raise PermissionDenied(f"{what} needs role {role.value}; you are {principal.role.value}")


def _authorization(context: Ctx) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # not subscriptable at run time
    _Interceptor = grpc.aio.ServerInterceptor


class OperatorAuth(_Interceptor):
    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        # The guarded handler of each Publishing method, made on its first call: the services
        # are registered before the server starts, so a method's handler never changes, and
        # building it again for every call cost more than the check it wraps.
        self._guarded: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def _admit(self, method: str, context: Ctx) -> Principal:
        try:
            principal = self.credentials.operator(_authorization(context))
            needed = needed_role(method)
            if not principal.role.allows(needed):
                who = principal.actor.removeprefix("user:")
                raise PermissionDenied(
                    f"{method} needs role {needed.value} or higher; token {principal.token_id} "
                    f"({who}) is {principal.role.value}"
                )
        except CoordinatorError as exc:
            await context.abort(exc.status_code, str(exc))
            raise  # abort() raises; this keeps type checkers honest
        return principal

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        guarded = self._guarded.get(handler_call_details.method)
        if guarded is not None:
            return guarded
        found = await continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        if found is None or service != PUBLISHING_SERVICE:
            return found
        guarded = self._guard(method, found)
        self._guarded[handler_call_details.method] = guarded
        return guarded

    def _guard(
        self, method: str, found: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """`found` with the admission check (token, least role) in front of it."""
        # grpc-stubs types the behaviours as sync functions; under grpc.aio they are coroutine
        # and async-generator functions.
        handler: Any = found
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: Ctx) -> Any:
                _PRINCIPAL.set(await self._admit(method, context))
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream_inner = handler.unary_stream

            async def stream(request: Any, context: Ctx) -> AsyncIterator[Any]:
                _PRINCIPAL.set(await self._admit(method, context))
                result = stream_inner(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:  # a handler that writes with context.write() and returns
                    await result

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        # Publishing has no client-streaming RPC; should one appear, refuse it rather than pass
        # it through unchecked.
        async def refuse(request: Any, context: Ctx) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method}: not served")

        return grpc.unary_unary_rpc_method_handler(refuse)
