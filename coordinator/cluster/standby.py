"""StandbyRefusal: operators' calls to a standby coordinator are refused, naming the active one.

A standby has loaded nothing (no posts, no tokens), so it cannot answer a Publishing call; it
says UNAVAILABLE with the active coordinator's address, as the gateway does to a worker. Health
and reflection stay open. (A forwarding interceptor, which passes the call on to the active
coordinator instead, can take this one's place: coordinator/cluster/forward.py.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from coordinator.access.roles import PUBLISHING_SERVICE
from coordinator.cluster.role import ClusterRole

Ctx = grpc.aio.ServicerContext[Any, Any]

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # not subscriptable at run time
    _Interceptor = grpc.aio.ServerInterceptor


class StandbyRefusal(_Interceptor):
    def __init__(self, role: ClusterRole) -> None:
        self.role = role

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        service = handler_call_details.method.lstrip("/").rpartition("/")[0]
        why = self.role.refusal()
        found = await continuation(handler_call_details)
        if service != PUBLISHING_SERVICE or why is None or found is None:
            return found

        async def refuse(request: Any, context: Ctx) -> Any:
            await context.abort(grpc.StatusCode.UNAVAILABLE, why)

        if found.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                refuse, request_deserializer=found.request_deserializer
            )
        return grpc.unary_unary_rpc_method_handler(
            refuse, request_deserializer=found.request_deserializer
        )
