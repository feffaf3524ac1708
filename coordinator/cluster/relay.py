"""Workers may connect to any coordinator: a standby relays a worker's stream to the active one.

A worker given one address (a DNS name or a load balancer in front of the coordinators, or a
config that names a standby) would otherwise never get work while that address is a standby:
the standby refused its stream naming the active, and the worker had nowhere else to go. So
while this coordinator is not active, `RelayWorkersToActive` (a gRPC server interceptor, beside
forward.py's `ForwardToActive`) hands `WorkerGateway.Connect` to the active coordinator as a
bidirectional stream proxy, byte for byte: each message of the worker as it came (nothing is
parsed here, the Hello and its token included: the active authenticates the worker as usual),
the worker's metadata and deadline; each message of the active, its initial and trailing
metadata, and its status as it gave it. The worker's half-close is passed on (the active sees its
end of stream after a Goodbye), and so is its hanging up (the call upstream is cancelled: the
active sees the stream lost, as it would have directly).

When the upstream ends (the active died or stepped down) the relayed stream ends with the same
status: UNAVAILABLE when the connection broke; the worker reconnects, through the same address,
to a coordinator that may be active by then (served locally) or relaying to the new active. A
relayed stream lives as long as its upstream: a standby that becomes active leaves its relayed
streams alone (their workers come back to it when the old active's side ends); new ones are
served locally.

Not relayed (the gateway's own refusal, naming the active, as before): while no active is known
(a takeover is in progress); a stream that was already forwarded once (`x-postroom-forwarded`:
two coordinators that each believe the other active do not ping-pong a worker); and under mutual
TLS, where the active checks the worker's client certificate, which a relay cannot present (the
coordinator does not install the relay then: main.py).

Health stays NOT_SERVING on a standby, WorkerGateway included: the relay is for workers that
were given one address; a load balancer should prefer the active coordinator.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from coordinator.cluster.forward import (
    Ctx,
    ServerInterceptor,
    forwarded_metadata,
    pass_messages_back,
    remaining_timeout,
    was_forwarded_call,
)
from coordinator.cluster.role import ClusterRole

if TYPE_CHECKING:
    from coordinator.cluster.forward import Continuation

RELAYED_METHODS = frozenset({"/postroom.v1.WorkerGateway/Connect"})


class RelayWorkersToActive(ServerInterceptor):
    """While `role` is a standby that knows the active, relay workers' streams to it.

    `channel(address)`: a channel to the active coordinator (ForwardToActive.channel: one cached
    channel, with the peer TLS of this coordinator)."""

    def __init__(
        self,
        role: ClusterRole,
        channel: Callable[[str], Awaitable[grpc.aio.Channel]],
        *,
        methods: frozenset[str] = RELAYED_METHODS,
    ) -> None:
        self._role = role
        self._channel = channel
        self._methods = methods
        self.relayed = 0  # streams relayed so far (tests, logs)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        found = await continuation(handler_call_details)
        method = handler_call_details.method
        if (
            found is None
            or method not in self._methods
            or self._role.is_active()
            or self._role.active_address() is None  # the gateway refuses: no active yet
            or was_forwarded_call(handler_call_details)  # the gateway refuses, naming its active
        ):
            return found
        return grpc.stream_stream_rpc_method_handler(self._relay(method))

    def _relay(self, method: str) -> Callable[[AsyncIterator[bytes], Ctx], AsyncIterator[bytes]]:
        async def relay(requests: AsyncIterator[bytes], context: Ctx) -> AsyncIterator[bytes]:
            address = self._role.active_address()
            if address is None:  # lost between the interceptor and here
                await context.abort(grpc.StatusCode.UNAVAILABLE, self._role.refusal() or "")
                return
            self.relayed += 1
            channel = await self._channel(address)
            # grpc consumes `requests` in a task of its own and half-closes at their end.
            call = channel.stream_stream(method, None, None)(
                requests, metadata=forwarded_metadata(context), timeout=remaining_timeout(context)
            )
            async with contextlib.aclosing(pass_messages_back(context, call, address)) as got:
                async for message in got:
                    yield message

        return relay
