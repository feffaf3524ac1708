"""Operators may call any coordinator: a standby forwards their calls to the active one.

In cluster mode (several coordinators on one PostgreSQL, coordinator/cluster/) only the active
coordinator holds the state; a standby has loaded nothing and has no credentials. So while this
coordinator is not active, `ForwardToActive` (a gRPC server interceptor, installed before the
access interceptor) hands every call of every service but the ones below to the active
coordinator, byte for byte: the request bytes as they came (nothing is parsed here), the
caller's metadata (its `authorization` token: the active one checks it), its remaining deadline;
then the response bytes (or each message of a stream), the trailing metadata and the status code
and details exactly as the active one gave them. The caller cannot tell, except for the extra
hop's latency.

Not forwarded here: `postroom.v1.WorkerGateway` (a worker's stream is relayed by relay.py, or
refused naming the active one), health (each coordinator reports its own role) and server
reflection (the schema is the same everywhere).

No active coordinator known (a takeover is in progress): UNAVAILABLE, retry in a few seconds.
A call that was already forwarded once is not forwarded again (`x-postroom-forwarded`): two
coordinators that each believe the other is active answer UNAVAILABLE instead of ping-ponging.

TLS: a coordinator that serves TLS dials the active one with TLS too (`peer_tls`).

The passing on itself is `Forwarder`'s: one call to an explicit address, over one cached
channel per address. Placement "spread" (several active coordinators, each owning some shards)
routes each operator's call to the coordinator that must execute it with it (route.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from coordinator.access.options import SecurityOptions
from postroom.tls import ClientTls, aio_channel

if TYPE_CHECKING:
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]]
else:  # not subscriptable at run time
    ServerInterceptor = grpc.aio.ServerInterceptor

Ctx = grpc.aio.ServicerContext[Any, Any]
log = logging.getLogger("postroom.coordinator")

LOCAL_SERVICES = frozenset(
    {
        "postroom.v1.WorkerGateway",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
FORWARDED_HEADER = "x-postroom-forwarded"
NO_ACTIVE = "no active coordinator yet (a takeover is in progress); retry in a few seconds"
# The active coordinator's answers pass through whole; the caller's own channel bounds them.
DEFAULT_MAX_FORWARDED_MESSAGE_BYTES = 64 * 1024 * 1024
# Channels kept open to coordinators called lately (a cluster has a few); older ones retire.
DEFAULT_OPEN_CHANNELS = 8
# Retired channels kept open (their calls may still be ending) before closing.
DEFAULT_RETIRED_CHANNELS = 4
# How gRPC itself says that no connection could be made (not an answer of the active one).
_UNREACHABLE = "failed to connect to all addresses"
# Metadata the forwarding channel sets itself (pseudo-headers, transport headers).
_TRANSPORT_KEYS = frozenset({"user-agent", "te", "content-type"})


def peer_tls(security: SecurityOptions) -> ClientTls:
    """How a coordinator dials the active one: TLS when it serves TLS itself.

    The coordinators of one cluster share their CA: trusted is POSTROOM_CA if set, else the
    `--tls-client-ca` (mutual TLS), else the system's roots; under mutual TLS a coordinator
    presents its own certificate as its client certificate. The active's `--advertise` address
    must be a name its certificate covers. A plaintext coordinator dials in plaintext.
    """
    if security.tls_cert is None:
        return ClientTls(insecure_plaintext=True)
    mutual = security.tls_client_ca is not None
    return ClientTls.from_env(
        ca=security.tls_client_ca,
        cert=security.tls_cert if mutual else None,
        key=security.tls_key if mutual else None,
    )


def forwarded_metadata(context: Ctx) -> list[tuple[str, str | bytes]]:
    """The caller's metadata, minus what the transport sets, plus the one-hop marker."""
    kept: list[tuple[str, str | bytes]] = [
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if not key.startswith((":", "grpc-")) and key not in _TRANSPORT_KEYS
    ]
    kept.append((FORWARDED_HEADER, "1"))
    return kept


def was_forwarded(context: Ctx) -> bool:
    """Whether another coordinator passed this call on already (one hop at most)."""
    return any(key == FORWARDED_HEADER for key, _ in context.invocation_metadata() or ())


def was_forwarded_call(details: grpc.HandlerCallDetails) -> bool:
    """Whether the call `details` describes (seen by an interceptor) was forwarded once already."""
    return any(key == FORWARDED_HEADER for key, _ in details.invocation_metadata or ())


def remaining_timeout(context: Ctx) -> float | None:
    left = context.time_remaining()
    # grpc.aio gives a huge number (or None) when the caller set no deadline.
    return None if left is None or left > 1e8 else max(left, 0.0)


def metadata_pairs(metadata: Any) -> tuple[tuple[str, str | bytes], ...]:
    """grpc.aio.Metadata (or a tuple of pairs) as the tuple of pairs a context takes."""
    return tuple((key, value) for key, value in metadata or ())


async def pass_back_error(
    context: Ctx, exc: grpc.aio.AioRpcError, address: str, *, who: str = "the active coordinator"
) -> None:
    """The other coordinator's error status as it gave it (code, details, trailing metadata);
    or, when it could not be reached at all (gRPC's own words), which address did not answer and
    why. `who`: how the message names the coordinator called."""
    details = exc.details() or ""
    if exc.code() == grpc.StatusCode.UNAVAILABLE and details.startswith(_UNREACHABLE):
        details = (
            f"{who} at {address} does not answer ({details}); if it died, "
            "another takes over within the ownership TTL: retry in a few seconds"
        )
    await context.abort(exc.code(), details, metadata_pairs(exc.trailing_metadata()))


async def pass_initial_metadata(context: Ctx, call: grpc.aio.Call) -> None:
    initial = metadata_pairs(await call.initial_metadata())
    if initial:
        await context.send_initial_metadata(initial)


async def pass_messages_back(
    context: Ctx,
    call: grpc.aio.UnaryStreamCall[bytes, bytes] | grpc.aio.StreamStreamCall[bytes, bytes],
    address: str,
    *,
    who: str = "the active coordinator",
) -> AsyncGenerator[bytes]:
    """Each message of a stream called at `address` as it comes, with its initial and trailing
    metadata; or its error status (pass_back_error). Closed early, the call is cancelled."""
    try:
        await pass_initial_metadata(context, call)
        async for message in call:
            yield message
        context.set_trailing_metadata(metadata_pairs(await call.trailing_metadata()))
    except grpc.aio.AioRpcError as exc:
        log.debug("the stream from %s at %s ended: %s", who, address, exc.code().name)
        await pass_back_error(context, exc, address, who=who)
        raise
    finally:
        call.cancel()  # the caller hung up (or we are done): end the other side too


class Forwarder:
    """Operators' calls passed on byte for byte to a coordinator at an explicit address.

    One channel per address, cached (the most recently used DEFAULT_OPEN_CHANNELS stay open;
    an older one retires, then closes once DEFAULT_RETIRED_CHANNELS more have retired, so calls
    still running on it can end). The call carries the caller's metadata plus
    `x-postroom-forwarded` and its remaining deadline; the answer comes back with its initial
    and trailing metadata, or its status as the other coordinator gave it.
    """

    def __init__(
        self,
        *,
        tls: ClientTls,
        channel_options: Sequence[tuple[str, int | str]] = (
            ("grpc.max_receive_message_length", DEFAULT_MAX_FORWARDED_MESSAGE_BYTES),
            ("grpc.max_send_message_length", DEFAULT_MAX_FORWARDED_MESSAGE_BYTES),
        ),
    ) -> None:
        self._tls = tls
        self._options = tuple(channel_options)
        self._channels: dict[str, grpc.aio.Channel] = {}  # least recently used first
        self._retired: list[grpc.aio.Channel] = []

    async def channel(self, address: str) -> grpc.aio.Channel:
        """The cached channel to `address` (opened on first use)."""
        channel = self._channels.pop(address, None)
        if channel is None:
            channel = aio_channel(address, self._tls, options=self._options)
        self._channels[address] = channel
        while len(self._channels) > DEFAULT_OPEN_CHANNELS:
            self._retired.append(self._channels.pop(next(iter(self._channels))))
        while len(self._retired) > DEFAULT_RETIRED_CHANNELS:
            await self._retired.pop(0).close(None)
        return channel

    async def unary(
        self, method: str, request: bytes, context: Ctx, address: str, *, who: str
    ) -> bytes:
        """`method` called at `address` with the caller's request bytes; its answer's bytes."""
        channel = await self.channel(address)
        call = channel.unary_unary(method, None, None)(
            request, metadata=forwarded_metadata(context), timeout=remaining_timeout(context)
        )
        try:
            response: bytes = await call
            await pass_initial_metadata(context, call)
            context.set_trailing_metadata(metadata_pairs(await call.trailing_metadata()))
        except grpc.aio.AioRpcError as exc:
            await pass_back_error(context, exc, address, who=who)
            raise  # abort() raises; this keeps type checkers honest
        return response

    async def stream(
        self, method: str, request: bytes, context: Ctx, address: str, *, who: str
    ) -> AsyncGenerator[bytes]:
        """A server stream called at `address`: each of its messages' bytes as they come."""
        channel = await self.channel(address)
        call = channel.unary_stream(method, None, None)(
            request, metadata=forwarded_metadata(context), timeout=remaining_timeout(context)
        )
        async with contextlib.aclosing(pass_messages_back(context, call, address, who=who)) as got:
            async for message in got:
                yield message

    async def close(self) -> None:
        """Close every channel (the server has stopped)."""
        channels = [*self._retired, *self._channels.values()]
        self._channels, self._retired = {}, []
        for channel in channels:
            await channel.close(None)


class ForwardToActive(ServerInterceptor):
    """While `is_active()` is false, forward non-local calls to `active_address()`."""

    def __init__(
        self,
        *,
        is_active: Callable[[], bool],
        active_address: Callable[[], str | None],
        tls: ClientTls,
        local_services: frozenset[str] = LOCAL_SERVICES,
        channel_options: Sequence[tuple[str, int | str]] = (
            ("grpc.max_receive_message_length", DEFAULT_MAX_FORWARDED_MESSAGE_BYTES),
            ("grpc.max_send_message_length", DEFAULT_MAX_FORWARDED_MESSAGE_BYTES),
        ),
    ) -> None:
        self._is_active = is_active
        self._active_address = active_address
        self._local = local_services
        self._forwarder = Forwarder(tls=tls, channel_options=channel_options)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        found = await continuation(handler_call_details)
        method = handler_call_details.method
        service = method.lstrip("/").rpartition("/")[0]
        if found is None or service in self._local or self._is_active():
            return found
        shape: Any = found  # grpc-stubs types the behaviours as sync functions
        if shape.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(method))
        if shape.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._stream(method))

        async def refuse(request: Any, context: Ctx) -> Any:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{method}: a client-streaming call is not forwarded by a standby coordinator; "
                f"call the active one ({self._active_address() or 'none yet'})",
            )

        return grpc.unary_unary_rpc_method_handler(refuse)

    async def _target(self, context: Ctx) -> str:
        """The active coordinator's address, or abort UNAVAILABLE."""
        address = self._active_address()
        if address is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, NO_ACTIVE)
            raise AssertionError("abort() raises")
        if was_forwarded(context):
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"forwarded to a coordinator that is not active either (it believes {address} "
                "is); a takeover is in progress: retry in a few seconds",
            )
        return address

    async def channel(self, address: str) -> grpc.aio.Channel:
        """The cached channel to a coordinator (relay.py's streams use it too)."""
        return await self._forwarder.channel(address)

    def _unary(self, method: str) -> Callable[[bytes, Ctx], Awaitable[bytes]]:
        async def forward(request: bytes, context: Ctx) -> bytes:
            address = await self._target(context)
            who = "the active coordinator"
            return await self._forwarder.unary(method, request, context, address, who=who)

        return forward

    def _stream(self, method: str) -> Callable[[bytes, Ctx], AsyncIterator[bytes]]:
        async def forward(request: bytes, context: Ctx) -> AsyncIterator[bytes]:
            address = await self._target(context)
            who = "the active coordinator"
            upstream = self._forwarder.stream(method, request, context, address, who=who)
            async with contextlib.aclosing(upstream) as messages:
                async for message in messages:
                    yield message

        return forward

    async def close(self) -> None:
        """Close every channel (the server has stopped)."""
        await self._forwarder.close()
