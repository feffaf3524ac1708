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
- Owners that do not answer: a stream opens legs only to the owners not marked down whose
  connection is up (fanout_owners.py's `LiveOwners`: an owner whose connection is refused or does
  not come up within `connect_timeout_s` is marked down, for every stream, until it is no longer
  an owner or `owner_down_s` has passed), its slots split among those; none left: UNAVAILABLE.
- Ending: any upstream ends (or breaks before its Welcome, or sends none in time), or the set of
  owners not marked down changes (checked at each worker heartbeat: a new owner would otherwise
  never reach this worker), and the whole stream ends: the worker's with that upstream's status as
  it gave it (UNAVAILABLE when it broke). The worker is alive and reconnects at once, so first
  every other upstream still open hears `Goodbye(reconnecting=True)` and the half-close, and is
  awaited to its end (within `detach_timeout_s`; what it sends meanwhile still reaches the worker
  once it has its Welcome): its owner keeps the worker's leases, unrenewed, for the reconnect to
  resume by epoch, instead of recovering them as a lost worker's (gateway.py). Awaiting the end
  orders the owner's end of the old session before the reconnect's Hello. An upstream still open
  after the wait is cancelled. The worker hanging up (a real loss) cancels every upstream at once:
  each owner sees the stream lost, as it would have directly; so does a worker's undecodable
  message. When the coordinator fanning out dies, its owners see only lost legs (nobody is left to
  say goodbye): they recover that worker's uncommitted leases at once, as for a lost worker.

Routing is a pure object (fanout_routing.py's `Routes`: messages in, messages out per
upstream); `FanOutWorkers` is the I/O around it, dialling through `OwnerChannels` (one channel
per owner). Wiring (spread, in relay.py's place): `FanOutWorkers(role.owner_addresses,
OwnerChannels(peer_tls(...)).channel, owner_down_s=2 * ownership TTL)`.

Not fanned out: a stream that was forwarded once, and any stream while no owner is known (A's
gateway answers it). Like the relay, this does not work under mutual TLS (an owner checks the
worker's client certificate, which A cannot present): main.py does not install it then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from coordinator.cluster.fanout_owners import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_OWNER_DOWN_S,
    LiveOwners,
)
from coordinator.cluster.fanout_owners import OwnerChannels as OwnerChannels  # main.py's
from coordinator.cluster.fanout_routing import Routes
from coordinator.cluster.forward import (
    Ctx,
    ServerInterceptor,
    forwarded_metadata,
    metadata_pairs,
    pass_back_error,
    pass_initial_metadata,
    remaining_timeout,
    was_forwarded_call,
)
from postroom.v1 import worker_gateway_pb2 as wg

if TYPE_CHECKING:
    from coordinator.cluster.forward import Continuation

    Call = grpc.aio.StreamStreamCall[bytes, bytes]
else:  # not subscriptable at run time
    Call = grpc.aio.StreamStreamCall
FANNED_OUT_METHODS = frozenset({"/postroom.v1.WorkerGateway/Connect"})
# How long the worker's Hello may take to arrive, as the gateway's HELLO_TIMEOUT_S.
DEFAULT_HELLO_TIMEOUT_S = 10.0
# How long every owner has to answer the Hello with its Welcome.
DEFAULT_WELCOME_TIMEOUT_S = 15.0
# Upstream messages read ahead of the worker's stream (then the upstreams wait: flow control).
DEFAULT_MAILBOX = 64
# How long the other upstreams get, when the stream ends for the cluster's reasons, to take the
# worker's Goodbye(reconnecting) and end their side (then they are cancelled).
DEFAULT_DETACH_TIMEOUT_S = 2.0
# How an error names an upstream that does not answer (pass_back_error's `who`).
_WHO = "the shard owner"
# An owner ending the stream with one of these ended it for the worker's own doing (refused it,
# or it broke the protocol): the worker will not come back at once, its other owners see it lost.
_WORKERS_DOING = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)

log = logging.getLogger("postroom.coordinator")


class FanOutError(Exception):
    """The stream cannot go on: `code` and `details` for the worker. `workers_fault`: the
    worker broke the protocol (its owners see its stream lost, not a reconnect)."""

    def __init__(self, code: grpc.StatusCode, details: str, *, workers_fault: bool = False) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.workers_fault = workers_fault


class _LegFailed(Exception):
    """Upstream `upstream` ended with `error` before its Welcome."""

    def __init__(self, upstream: int, error: grpc.aio.AioRpcError) -> None:
        super().__init__(upstream)
        self.upstream = upstream
        self.error = error


@dataclass(frozen=True, slots=True)
class _FromUpstream:
    upstream: int
    message: bytes | None  # None: it ended (`error` None: with OK)
    error: grpc.aio.AioRpcError | None = None


def _parse_worker(raw: bytes) -> wg.WorkerMessage:
    try:
        return wg.WorkerMessage.FromString(raw)
    except DecodeError as exc:
        raise FanOutError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"undecodable WorkerMessage: {exc}",
            workers_fault=True,
        ) from exc


def _parse_coordinator(raw: bytes, address: str) -> wg.CoordinatorMessage:
    try:
        return wg.CoordinatorMessage.FromString(raw)
    except DecodeError as exc:
        raise FanOutError(
            grpc.StatusCode.INTERNAL, f"undecodable message from the coordinator at {address}"
        ) from exc


class FanOutWorkers(ServerInterceptor):
    """Fan each worker stream out to every address of `owners()` (own first).

    `channel(address)`: a channel to that coordinator, open as long as streams may use it
    (OwnerChannels.channel: one per address, with the peer TLS of this coordinator). An owner
    a leg cannot be opened to is left out for up to `owner_down_s` (fanout_owners.py)."""

    def __init__(
        self,
        owners: Callable[[], Sequence[str]],
        channel: Callable[[str], Awaitable[grpc.aio.Channel]],
        *,
        methods: frozenset[str] = FANNED_OUT_METHODS,
        hello_timeout_s: float = DEFAULT_HELLO_TIMEOUT_S,
        welcome_timeout_s: float = DEFAULT_WELCOME_TIMEOUT_S,
        detach_timeout_s: float = DEFAULT_DETACH_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        owner_down_s: float = DEFAULT_OWNER_DOWN_S,
        monotonic: Callable[[], float] = time.monotonic,  # the down marks' clock
    ) -> None:
        self._owners = owners
        self.owners = LiveOwners(
            owners,
            channel,
            connect_timeout_s=connect_timeout_s,
            down_s=owner_down_s,
            monotonic=monotonic,
        )
        self._channel = channel
        self._methods = methods
        self._hello_timeout_s = hello_timeout_s
        self._welcome_timeout_s = welcome_timeout_s
        self._detach_timeout_s = detach_timeout_s
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
            or was_forwarded_call(handler_call_details)  # an owner's leg of a fanned-out stream
        ):
            return found
        return grpc.stream_stream_rpc_method_handler(self._fan_out(method))

    def _fan_out(self, method: str) -> Callable[[AsyncIterator[bytes], Ctx], AsyncIterator[bytes]]:
        async def fan_out(requests: AsyncIterator[bytes], context: Ctx) -> AsyncIterator[bytes]:
            addresses = await self.owners.reachable()
            if not addresses:
                owners = self.owners.all()
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the shard owner(s) at {', '.join(owners)} do not answer: retry in a few "
                    "seconds"
                    if owners
                    else "no coordinator owns shards yet",  # lost since the interceptor's look
                )
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
        self._readers: dict[int, asyncio.Task[None]] = {}  # upstream -> its reader
        self._worker_reader: asyncio.Task[None] | None = None
        # One writer to the upstreams at a time (the worker's messages, or the goodbyes), and
        # once their writing is over (the worker's half-close, or the goodbyes) no more.
        self._writing = asyncio.Lock()
        self._writing_over = False
        self._ended: set[int] = set()  # upstreams whose end was read
        self._welcomed = False  # the worker has its Welcome

    async def run(self) -> AsyncIterator[bytes]:
        try:
            async for message in self._serve():
                yield message
        finally:
            # The worker hung up, an upstream ended, or we are done: end every other side.
            tasks = list(self._readers.values())
            if self._worker_reader is not None:
                tasks.append(self._worker_reader)
            for task in tasks:
                task.cancel()
            for call in self._calls:
                call.cancel()
            for task in tasks:
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
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message of a stream must be Hello",
                workers_fault=True,
            )
        try:
            early = await self._open(self._routes.hellos(hello.hello))
        except _LegFailed as exc:
            await self._leg_ended(exc.upstream, exc.error)
            raise exc.error from None  # _leg_ended aborted: this keeps type checkers honest
        except FanOutError as exc:  # no Welcome in time, or not one first
            async for _ in self._detach(exc.details):
                pass  # not welcomed: nothing goes to the worker
            raise
        welcome = self._routes.welcome([w for w, _ in early])
        yield wg.CoordinatorMessage(welcome=welcome).SerializeToString()
        self._welcomed = True
        for i, (_, rest) in enumerate(early):
            for message in rest:
                for out in self._routes.from_upstream(i, message):
                    yield out
        for i in range(len(self._calls)):
            self._read(i)
        self._worker_reader = asyncio.create_task(self._read_worker())
        while True:
            event = await self._mailbox.get()
            if isinstance(event, FanOutError):
                if not event.workers_fault:
                    async for out in self._detach(event.details):
                        yield out
                raise event
            if event.message is not None:
                try:
                    msg = _parse_coordinator(event.message, self._addresses[event.upstream])
                except FanOutError as exc:
                    async for out in self._detach(exc.details):
                        yield out
                    raise
                for out in self._routes.from_upstream(event.upstream, msg):
                    yield out
                continue
            self._ended.add(event.upstream)
            address = self._addresses[event.upstream]
            if event.error is None or event.error.code() not in _WORKERS_DOING:
                why = f"the shard owner at {address} ended the stream"
                async for out in self._detach(why):
                    yield out
            if event.error is not None:
                log.debug("fanned-out stream: %s ended: %s", address, event.error.code().name)
                await pass_back_error(self._context, event.error, address, who=_WHO)
                raise event.error  # abort() raises; this keeps type checkers honest
            call = self._calls[event.upstream]
            self._context.set_trailing_metadata(metadata_pairs(await call.trailing_metadata()))
            return

    async def _leg_ended(self, i: int, error: grpc.aio.AioRpcError) -> None:
        """Upstream `i` ended before its Welcome: the others detached unless the worker brought it
        on itself (a refusal), then the worker hears its status as it gave it."""
        self._ended.add(i)
        if error.code() not in _WORKERS_DOING:
            async for _ in self._detach(
                f"the shard owner at {self._addresses[i]} ended the stream"
            ):
                pass  # not welcomed: nothing goes to the worker
        await pass_back_error(self._context, error, self._addresses[i], who=_WHO)

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
                self._ended.add(i)
                raise FanOutError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the coordinator at {address} ended the stream without a Welcome: "
                    "retry in a few seconds",
                )
            if i == 0:
                await pass_initial_metadata(self._context, call)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                await self._fan.owners.failed_open(address)  # the reconnect skips it if down
            raise _LegFailed(i, exc) from exc  # its refusal, passed back as it gave it
        msg = _parse_coordinator(raw, address)
        inner = list(msg.batch.messages) if msg.WhichOneof("msg") == "batch" else [msg]
        if not inner or inner[0].WhichOneof("msg") != "welcome":
            raise FanOutError(
                grpc.StatusCode.INTERNAL, f"the coordinator at {address} did not send Welcome first"
            )
        return inner[0].welcome, inner[1:]

    def _read(self, i: int) -> None:
        """Start reading upstream `i` into the mailbox (once)."""
        if i not in self._readers:
            self._readers[i] = asyncio.create_task(self._read_upstream(i))

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
        """The worker's messages to their upstreams (the one writer of every upstream call but
        for the goodbyes of `_detach`); its half-close to all of them."""
        owners = set(self._addresses)
        try:
            async for raw in self._requests:
                msg = _parse_worker(raw)
                if msg.WhichOneof("msg") == "heartbeat" and set(self._fan.owners.now()) != owners:
                    now = ", ".join(self._fan.owners.now()) or "none"
                    raise FanOutError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"the coordinators owning shards changed (now: {now}): reconnect",
                    )
                async with self._writing:
                    if self._writing_over:
                        continue  # the upstreams heard their goodbye: the stream is ending
                    for i, out in self._routes.from_worker(msg):
                        await self._write(self._calls[i], out)
        except FanOutError as exc:
            await self._mailbox.put(exc)
            return
        except (grpc.aio.AioRpcError, grpc.aio.AbortError):
            return  # the worker's side broke, or its stream was ended: the handler is ending
        except Exception as exc:  # a bug: this stream ends, the coordinator goes on
            log.exception("fanned-out stream: routing the worker's messages failed")
            await self._mailbox.put(FanOutError(grpc.StatusCode.INTERNAL, repr(exc)))
            return
        async with self._writing:
            if self._writing_over:
                return
            self._writing_over = True
            for call in self._calls:
                with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
                    await call.done_writing()  # each owner sees the worker's end of stream

    async def _detach(self, why: str) -> AsyncIterator[bytes]:
        """The stream ends for the cluster's reasons and the worker dials again at once: every
        upstream still open hears Goodbye(reconnecting) and the half-close (its owner keeps the
        worker's leases for the reconnect to resume), then is read to its end, so that end is
        ordered before the reconnect's Hello. What it sends meanwhile goes on to the worker if it
        has its Welcome (an Assign that raced the goodbye is then the worker's to resume). Within
        detach_timeout_s; the caller's end cancels whatever is still open. Nothing when the
        worker had half-closed (its own end: every upstream heard it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._fan._detach_timeout_s
        goodbye = wg.WorkerMessage(goodbye=wg.Goodbye(reason=why[:200], reconnecting=True))
        raw = goodbye.SerializeToString()
        live: list[int] = []
        try:
            async with asyncio.timeout_at(deadline), self._writing:
                if self._writing_over:
                    return
                self._writing_over = True
                live = [
                    i for i, c in enumerate(self._calls) if i not in self._ended and not c.done()
                ]
                for i in live:
                    await self._write(self._calls[i], raw)
                    with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
                        await self._calls[i].done_writing()
        except TimeoutError:
            log.debug("fanned-out stream: the goodbyes were not written in time")
            return
        for i in live:
            self._read(i)
        waiting = set(live)
        while waiting and (left := deadline - loop.time()) > 0:
            try:
                event = await asyncio.wait_for(self._mailbox.get(), left)
            except TimeoutError:
                break
            if isinstance(event, FanOutError):
                continue  # already ending
            if event.message is None:
                self._ended.add(event.upstream)
                waiting.discard(event.upstream)
            elif self._welcomed:
                try:
                    msg = _parse_coordinator(event.message, self._addresses[event.upstream])
                except FanOutError:
                    continue
                for out in self._routes.from_upstream(event.upstream, msg):
                    yield out
        if waiting:
            log.debug("fanned-out stream: %d upstream(s) did not end in time", len(waiting))
