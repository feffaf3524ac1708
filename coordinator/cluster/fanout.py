"""Placement "spread": one worker stream reaches every coordinator that owns shards.

With placement "spread" each coordinator's core holds only the jobs of its own shards, but a
worker has ONE stream (worker_gateway.proto), to whichever coordinator it dialled (A). So on A,
`FanOutWorkers` (a gRPC server interceptor, like relay.py's) proxies `WorkerGateway.Connect` to
every owner (`owners()`: the distinct advertised addresses of the live shard holders, A's own
first): one upstream Connect per owner, A's own included, served by A's real gateway because the
upstream call carries `x-postroom-forwarded` (a forwarded stream is never fanned out again). The
worker cannot tell, but for one extra hop. Unlike relay.py it parses the messages, to route them:

- Hello: to every upstream, with the worker's token and metadata as they came (each owner
  authenticates the worker itself) and all its held jobs (each owner keeps the ones it leased).
  Slots are split: upstream i gets slots // n, the first slots % n one more, at least 1 each.
  A worker takes every Assign and runs at most `slots` at once, queueing the rest (leased,
  WAITING_SLOT), so the sum never exceeding `slots` means no job waits on a slot another owner
  filled; only a worker with fewer slots than owners is over-assigned (by owners - slots jobs at
  most, which wait renewed by heartbeats). per_account_slots goes unchanged: one account is one
  shard, one owner. A split is fixed for the stream's life (slots are only said in Hello).
- Welcome: every upstream's is awaited (within `welcome_timeout_s`); the worker gets one:
  the first upstream's session id; the smallest heartbeat interval, lease TTL and chunk / asset
  limits any upstream asked for (the coordinators share their config, and the smallest satisfies
  every owner); resumed = the union of all upstreams' resumed; accepts_batches only if every
  upstream accepts batches.
- Upstream -> worker: passed on, after noting job_id -> upstream (Assign, resumed) and
  request_id -> upstream (LoginCheck). A HeartbeatAck reaches the worker once EVERY upstream
  has acknowledged that heartbeat, with the earliest lease deadline of theirs (a lease is renewed
  on the worker's side only when it is renewed on every owner). A Goodbye is passed on once.
- Worker -> upstreams: a Heartbeat to every upstream, its active list filtered to that upstream's
  jobs (an owner recovers a lease the worker no longer reports); a message about a job (ack, log,
  screenshot chunk, commit request, awaiting confirm, result) to the job's upstream (an unknown
  job: the first upstream, whose gateway answers it as it would directly); a LoginCheckResult to
  the upstream that asked; a WorkerBatch split per upstream, order kept within each; Goodbye and
  the worker's half-close to every upstream.
- Ending, crash-only: any upstream ends (or cannot be reached), or the set of owners changes
  (checked at each worker heartbeat: a new owner would otherwise never reach this worker), and
  the whole stream ends: the worker's with that upstream's status as it gave it (UNAVAILABLE when
  it broke), every other upstream cancelled. The worker reconnects and resumes its held jobs
  (every owner keeps their leases through their grace). The worker hanging up cancels every
  upstream: each owner sees the stream lost, as it would have directly.

Routing is a pure object (fanout_routing.py's `Routes`: messages in, messages out per
upstream); `FanOutWorkers` is the I/O around it, dialling through `OwnerChannels` (one channel
per owner). Wiring (spread, in relay.py's place):
`FanOutWorkers(role.owner_addresses, OwnerChannels(peer_tls(...)).channel)`.

Not fanned out: a stream that was forwarded once, and any stream while no owner is known (A's
gateway answers it). Like the relay, this does not work under mutual TLS (an owner checks the
worker's client certificate, which A cannot present): main.py does not install it then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from coordinator.cluster.fanout_routing import Routes
from coordinator.cluster.forward import (
    DEFAULT_MAX_FORWARDED_MESSAGE_BYTES,
    FORWARDED_HEADER,
    forwarded_metadata,
    metadata_pairs,
    pass_back_error,
    pass_initial_metadata,
    remaining_timeout,
)
from postroom.tls import ClientTls, aio_channel
from postroom.v1 import worker_gateway_pb2 as wg

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]]
    Call = grpc.aio.StreamStreamCall[bytes, bytes]
else:  # not subscriptable at run time
    _Interceptor = grpc.aio.ServerInterceptor
    Call = grpc.aio.StreamStreamCall

Ctx = grpc.aio.ServicerContext[Any, Any]
FANNED_OUT_METHODS = frozenset({"/postroom.v1.WorkerGateway/Connect"})
# How long the worker's Hello may take to arrive, as the gateway's HELLO_TIMEOUT_S.
DEFAULT_HELLO_TIMEOUT_S = 10.0
# How long every owner has to answer the Hello with its Welcome.
DEFAULT_WELCOME_TIMEOUT_S = 15.0
# Upstream messages read ahead of the worker's stream (then the upstreams wait: flow control).
DEFAULT_MAILBOX = 64
# How an error names an upstream that does not answer (pass_back_error's `who`).
_WHO = "the shard owner"

log = logging.getLogger("postroom.coordinator")


class FanOutError(Exception):
    """The stream cannot go on: `code` and `details` for the worker."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass(frozen=True, slots=True)
class _FromUpstream:
    upstream: int
    message: bytes | None  # None: it ended (`error` None: with OK)
    error: grpc.aio.AioRpcError | None = None


def _was_forwarded(details: grpc.HandlerCallDetails) -> bool:
    return any(key == FORWARDED_HEADER for key, _ in details.invocation_metadata or ())


def _parse_worker(raw: bytes) -> wg.WorkerMessage:
    try:
        return wg.WorkerMessage.FromString(raw)
    except DecodeError as exc:
        raise FanOutError(
            grpc.StatusCode.INVALID_ARGUMENT, f"undecodable WorkerMessage: {exc}"
        ) from exc


def _parse_coordinator(raw: bytes, address: str) -> wg.CoordinatorMessage:
    try:
        return wg.CoordinatorMessage.FromString(raw)
    except DecodeError as exc:
        raise FanOutError(
            grpc.StatusCode.INTERNAL, f"undecodable message from the coordinator at {address}"
        ) from exc


class OwnerChannels:
    """One channel per owner's address, kept until `close()`: a fanned-out stream holds a call
    to every owner at once, so ForwardToActive.channel (one cached channel, older ones retired
    and closed) would close live legs. Owners are few (the live coordinators)."""

    def __init__(
        self,
        tls: ClientTls,
        *,
        channel_options: Sequence[tuple[str, int | str]] = (
            ("grpc.max_receive_message_length", DEFAULT_MAX_FORWARDED_MESSAGE_BYTES),
            ("grpc.max_send_message_length", DEFAULT_MAX_FORWARDED_MESSAGE_BYTES),
        ),
    ) -> None:
        self._tls = tls
        self._options = tuple(channel_options)
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = aio_channel(address, self._tls, options=self._options)
        return self._channels[address]

    async def close(self) -> None:
        """Close every channel (the server has stopped)."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)


class FanOutWorkers(_Interceptor):
    """Fan each worker stream out to every address of `owners()` (own first).

    `channel(address)`: a channel to that coordinator, open as long as streams may use it
    (OwnerChannels.channel: one per address, with the peer TLS of this coordinator)."""

    def __init__(
        self,
        owners: Callable[[], Sequence[str]],
        channel: Callable[[str], Awaitable[grpc.aio.Channel]],
        *,
        methods: frozenset[str] = FANNED_OUT_METHODS,
        hello_timeout_s: float = DEFAULT_HELLO_TIMEOUT_S,
        welcome_timeout_s: float = DEFAULT_WELCOME_TIMEOUT_S,
    ) -> None:
        self._owners = owners
        self._channel = channel
        self._methods = methods
        self._hello_timeout_s = hello_timeout_s
        self._welcome_timeout_s = welcome_timeout_s
        self.fanned_out = 0  # streams fanned out so far (tests, logs)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        found = await continuation(handler_call_details)
        method = handler_call_details.method
        if (
            found is None
            or method not in self._methods
            or not self._owners()  # the gateway answers (refuses) it
            or _was_forwarded(handler_call_details)  # an owner's leg of a fanned-out stream
        ):
            return found
        return grpc.stream_stream_rpc_method_handler(self._fan_out(method))

    def _fan_out(self, method: str) -> Callable[[AsyncIterator[bytes], Ctx], AsyncIterator[bytes]]:
        async def fan_out(requests: AsyncIterator[bytes], context: Ctx) -> AsyncIterator[bytes]:
            addresses = list(dict.fromkeys(self._owners()))
            if not addresses:  # lost between the interceptor and here
                await context.abort(grpc.StatusCode.UNAVAILABLE, "no coordinator owns shards yet")
            self.fanned_out += 1
            stream = _Stream(self, method, addresses, requests, context)
            try:
                async for message in stream.run():
                    yield message
            except FanOutError as exc:
                log.debug("fanned-out worker stream ended: %s", exc.details)
                await context.abort(exc.code, exc.details)

        return fan_out


class _Stream:
    """One fanned-out worker stream: its upstream calls, the tasks that read them, its routes."""

    def __init__(
        self,
        fan: FanOutWorkers,
        method: str,
        addresses: list[str],
        requests: AsyncIterator[bytes],
        context: Ctx,
    ) -> None:
        self._fan = fan
        self._method = method
        self._addresses = addresses
        self._requests = requests
        self._context = context
        self._routes = Routes(len(addresses))
        self._calls: list[Call] = []
        self._mailbox: asyncio.Queue[_FromUpstream | FanOutError] = asyncio.Queue(DEFAULT_MAILBOX)
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> AsyncIterator[bytes]:
        try:
            async for message in self._serve():
                yield message
        finally:
            # The worker hung up, an upstream ended, or we are done: end every other side.
            for task in self._tasks:
                task.cancel()
            for call in self._calls:
                call.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _serve(self) -> AsyncIterator[bytes]:
        try:
            first = await asyncio.wait_for(anext(self._requests), self._fan._hello_timeout_s)
        except (StopAsyncIteration, TimeoutError):
            return  # no Hello: nothing to fan out (the gateway does the same)
        hello = _parse_worker(first)
        if hello.WhichOneof("msg") != "hello":
            raise FanOutError(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message of a stream must be Hello"
            )
        early = await self._open(self._routes.hellos(hello.hello))
        welcome = self._routes.welcome([w for w, _ in early])
        yield wg.CoordinatorMessage(welcome=welcome).SerializeToString()
        for i, (_, rest) in enumerate(early):
            for message in rest:
                for out in self._routes.from_upstream(i, message):
                    yield out
        for i in range(len(self._calls)):
            self._tasks.append(asyncio.create_task(self._read_upstream(i)))
        self._tasks.append(asyncio.create_task(self._read_worker()))
        while True:
            event = await self._mailbox.get()
            if isinstance(event, FanOutError):
                raise event
            if event.message is not None:
                msg = _parse_coordinator(event.message, self._addresses[event.upstream])
                for out in self._routes.from_upstream(event.upstream, msg):
                    yield out
                continue
            address = self._addresses[event.upstream]
            if event.error is not None:
                log.debug("fanned-out stream: %s ended: %s", address, event.error.code().name)
                await pass_back_error(self._context, event.error, address, who=_WHO)
                raise event.error  # abort() raises; this keeps type checkers honest
            call = self._calls[event.upstream]
            self._context.set_trailing_metadata(metadata_pairs(await call.trailing_metadata()))
            return

    async def _open(
        self, hellos: list[wg.WorkerMessage]
    ) -> list[tuple[wg.Welcome, list[wg.CoordinatorMessage]]]:
        """Open every upstream with its Hello; each one's Welcome and what came with it (a
        gateway may send its first Assigns in the Welcome's batch)."""
        metadata = forwarded_metadata(self._context)
        timeout = remaining_timeout(self._context)
        for address in self._addresses:
            channel = await self._fan._channel(address)
            # No request iterator: this stream writes to each upstream itself (it routes).
            call: Call = channel.stream_stream(self._method, None, None)(
                None, metadata=metadata, timeout=timeout
            )
            self._calls.append(call)
        welcomes = []
        try:
            async with asyncio.timeout(self._fan._welcome_timeout_s):
                for call, hello in zip(self._calls, hellos, strict=True):
                    await self._write(call, hello.SerializeToString())
                for i, call in enumerate(self._calls):
                    welcomes.append(await self._welcome(i, call))
        except TimeoutError:
            waiting = ", ".join(self._addresses[len(welcomes) :])
            raise FanOutError(
                grpc.StatusCode.UNAVAILABLE,
                f"no Welcome from the coordinator(s) at {waiting} within "
                f"{self._fan._welcome_timeout_s:g} s: retry in a few seconds",
            ) from None
        return welcomes

    async def _write(self, call: Call, message: bytes) -> None:
        # It ended (or could not be reached): its reader says how.
        with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
            await call.write(message)

    async def _welcome(self, i: int, call: Call) -> tuple[wg.Welcome, list[wg.CoordinatorMessage]]:
        address = self._addresses[i]
        try:
            raw = await call.read()
            if not isinstance(raw, bytes):  # grpc.aio.EOF
                raise FanOutError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the coordinator at {address} ended the stream without a Welcome: "
                    "retry in a few seconds",
                )
            if i == 0:
                await pass_initial_metadata(self._context, call)
        except grpc.aio.AioRpcError as exc:
            # Its refusal, as it gave it.
            await pass_back_error(self._context, exc, address, who=_WHO)
            raise
        msg = _parse_coordinator(raw, address)
        inner = list(msg.batch.messages) if msg.WhichOneof("msg") == "batch" else [msg]
        if not inner or inner[0].WhichOneof("msg") != "welcome":
            raise FanOutError(
                grpc.StatusCode.INTERNAL, f"the coordinator at {address} did not send Welcome first"
            )
        return inner[0].welcome, inner[1:]

    async def _read_upstream(self, i: int) -> None:
        call = self._calls[i]
        try:
            while isinstance(raw := await call.read(), bytes):  # else grpc.aio.EOF
                await self._mailbox.put(_FromUpstream(i, raw))
        except grpc.aio.AioRpcError as exc:
            await self._mailbox.put(_FromUpstream(i, None, exc))
            return
        except Exception as exc:  # a bug: this stream ends, the coordinator goes on
            log.exception("fanned-out stream: reading %s failed", self._addresses[i])
            await self._mailbox.put(FanOutError(grpc.StatusCode.INTERNAL, repr(exc)))
            return
        await self._mailbox.put(_FromUpstream(i, None))

    async def _read_worker(self) -> None:
        """The worker's messages to their upstreams (the one writer of every upstream call);
        its half-close to all of them."""
        owners = set(self._addresses)
        try:
            async for raw in self._requests:
                msg = _parse_worker(raw)
                if msg.WhichOneof("msg") == "heartbeat" and set(self._fan._owners()) != owners:
                    now = ", ".join(self._fan._owners()) or "none"
                    raise FanOutError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"the coordinators owning shards changed (now: {now}): reconnect",
                    )
                for i, out in self._routes.from_worker(msg):
                    await self._write(self._calls[i], out)
        except FanOutError as exc:
            await self._mailbox.put(exc)
            return
        except grpc.aio.AioRpcError:
            return  # the worker's side broke: the handler is being cancelled
        except Exception as exc:  # a bug: this stream ends, the coordinator goes on
            log.exception("fanned-out stream: routing the worker's messages failed")
            await self._mailbox.put(FanOutError(grpc.StatusCode.INTERNAL, repr(exc)))
            return
        for call in self._calls:
            with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
                await call.done_writing()  # each owner sees the worker's end of stream
