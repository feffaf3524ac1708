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

Routing is a pure object (`Routes`: messages in, messages out per upstream); `FanOutWorkers`
is the I/O around it, dialling through `OwnerChannels` (one channel per owner). Wiring (spread,
in relay.py's place): `FanOutWorkers(role.owner_addresses, OwnerChannels(peer_tls(...)).channel)`.

Not fanned out: a stream that was forwarded once, and any stream while no owner is known (A's
gateway answers it). Like the relay, this does not work under mutual TLS (an owner checks the
worker's client certificate, which A cannot present): main.py does not install it then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

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
# Heartbeats not yet acknowledged by every upstream, remembered (the worker keeps 32 too).
MAX_PENDING_HEARTBEATS = 32
# Upstream messages read ahead of the worker's stream (then the upstreams wait: flow control).
DEFAULT_MAILBOX = 64

# Worker messages about one job, by the oneof field, and where their job id is.
_JOB_MESSAGES = frozenset(
    {"ack", "log", "screenshot", "commit_request", "awaiting_confirm", "result"}
)

log = logging.getLogger("postroom.coordinator")


class FanOutError(Exception):
    """The stream cannot go on: `code` and `details` for the worker."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def split_slots(slots: int, upstreams: int) -> list[int]:
    """Each upstream's share of the worker's slots: even, the first ones take the remainder, at
    least 1 each (an owner refuses 0). A worker's invalid count (< 1) is left for the owners to
    refuse."""
    if slots < 1:
        return [slots] * upstreams
    return [
        max(1, slots // upstreams + (1 if i < slots % upstreams else 0)) for i in range(upstreams)
    ]


def _min_set(values: Sequence[int]) -> int:
    """The smallest value set (0 = unset, the worker's default) among the upstreams'."""
    set_values = [v for v in values if v > 0]
    return min(set_values) if set_values else 0


def _job_id(msg: wg.WorkerMessage, kind: str) -> str:
    inner: Any = getattr(msg, kind)
    job_id: str = inner.job_id
    return job_id


@dataclass(slots=True)
class _Beat:
    waiting: set[int]
    deadline_ms: int = 0


@dataclass(slots=True)
class Routes:
    """Where each message of one fanned-out stream goes (pure: no I/O). Upstream 0 is the
    first (the coordinator the worker dialled)."""

    upstreams: int
    worker_batches: bool = False  # the worker's Hello said it takes CoordinatorBatch
    # job_id -> (the upstream that leased it, under which epoch): the latest lease wins (a
    # shard handed over to another owner re-leases its jobs under a higher epoch).
    jobs: dict[str, tuple[int, int]] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)  # login check request_id -> upstream
    beats: dict[int, _Beat] = field(default_factory=dict)  # heartbeat seq -> acks awaited
    upstream_batches: list[bool] = field(default_factory=list)
    said_goodbye: bool = False  # a coordinator's Goodbye was passed on

    # ---- the opening ----------------------------------------------------------------------

    def hellos(self, hello: wg.Hello) -> list[wg.WorkerMessage]:
        """The Hello for each upstream: the worker's, with that upstream's share of slots."""
        self.worker_batches = hello.accepts_batches
        out = []
        for share in split_slots(hello.slots, self.upstreams):
            one = wg.Hello()
            one.CopyFrom(hello)
            one.slots = share
            out.append(wg.WorkerMessage(hello=one))
        return out

    def welcome(self, welcomes: Sequence[wg.Welcome]) -> wg.Welcome:
        """The one Welcome the worker gets, from every upstream's (in upstream order)."""
        resumed: list[wg.HeldJob] = []
        seen: set[tuple[str, int]] = set()
        for i, w in enumerate(welcomes):
            for held in w.resumed:
                self._leased(i, held.job_id, held.lease_epoch)
                if (held.job_id, held.lease_epoch) not in seen:
                    seen.add((held.job_id, held.lease_epoch))
                    resumed.append(held)
        self.upstream_batches = [w.accepts_batches for w in welcomes]
        return wg.Welcome(
            session_id=welcomes[0].session_id,
            heartbeat_interval_ms=_min_set([w.heartbeat_interval_ms for w in welcomes]),
            lease_ttl_ms=_min_set([w.lease_ttl_ms for w in welcomes]),
            resumed=resumed,
            max_chunk_bytes=_min_set([w.max_chunk_bytes for w in welcomes]),
            max_asset_bytes=_min_set([w.max_asset_bytes for w in welcomes]),
            accepts_batches=all(self.upstream_batches),
        )

    # ---- upstream -> worker ---------------------------------------------------------------

    def from_upstream(self, i: int, msg: wg.CoordinatorMessage) -> list[bytes]:
        """What upstream i's wire message becomes for the worker (serialized; maybe nothing)."""
        inner = msg.batch.messages if msg.WhichOneof("msg") == "batch" else (msg,)
        kept = [m for m in inner if self._keep(i, m)]
        if len(kept) > 1 and self.worker_batches:
            batch = wg.CoordinatorMessage(batch=wg.CoordinatorBatch(messages=kept))
            return [batch.SerializeToString()]
        return [m.SerializeToString() for m in kept]

    def _keep(self, i: int, msg: wg.CoordinatorMessage) -> bool:
        kind = msg.WhichOneof("msg")
        if kind == "assign":
            self._leased(i, msg.assign.job_id, msg.assign.lease_epoch)
        elif kind == "login_check":
            self.requests[msg.login_check.request_id] = i
        elif kind in ("result_ack", "drop"):
            # The worker forgets the job (unless about an older lease: it keeps the newer).
            about: Any = getattr(msg, kind)
            lease = self.jobs.get(about.job_id)
            if lease is not None and lease[0] == i and not 0 < about.lease_epoch < lease[1]:
                del self.jobs[about.job_id]
        elif kind == "heartbeat_ack":
            return self._acked(i, msg.heartbeat_ack)
        elif kind == "goodbye":
            if self.said_goodbye:
                return False
            self.said_goodbye = True
        return True

    def _leased(self, i: int, job_id: str, epoch: int) -> None:
        lease = self.jobs.get(job_id)
        if lease is None or epoch >= lease[1]:
            self.jobs[job_id] = (i, epoch)

    def upstream_of(self, job_id: str) -> int:
        """The upstream that leased the job; the first for a job none did."""
        lease = self.jobs.get(job_id)
        return 0 if lease is None else lease[0]

    def _acked(self, i: int, ack: wg.HeartbeatAck) -> bool:
        """Upstream i acknowledged a heartbeat; True (with `ack` now the merged one) once every
        upstream has."""
        beat = self.beats.get(ack.seq)
        if beat is None or i not in beat.waiting:
            return False
        beat.waiting.discard(i)
        if ack.lease_deadline_unix_ms > 0:
            beat.deadline_ms = min(
                d for d in (beat.deadline_ms, ack.lease_deadline_unix_ms) if d > 0
            )
        if beat.waiting:
            return False
        del self.beats[ack.seq]
        ack.lease_deadline_unix_ms = beat.deadline_ms
        return True

    # ---- worker -> upstreams --------------------------------------------------------------

    def from_worker(self, msg: wg.WorkerMessage) -> list[tuple[int, bytes]]:
        """What the worker's wire message becomes for each upstream, in upstream order."""
        if msg.WhichOneof("msg") == "batch":
            parts: dict[int, list[wg.WorkerMessage]] = {}
            for one in msg.batch.messages:
                for i, routed in self._route(one):
                    parts.setdefault(i, []).append(routed)
            out = []
            for i in sorted(parts):
                msgs = parts[i]
                if len(msgs) > 1 and self.upstream_batches[i]:
                    whole = wg.WorkerMessage(batch=wg.WorkerBatch(messages=msgs))
                    out.append((i, whole.SerializeToString()))
                else:
                    out += [(i, m.SerializeToString()) for m in msgs]
            return out
        return [(i, m.SerializeToString()) for i, m in self._route(msg)]

    def _route(self, msg: wg.WorkerMessage) -> list[tuple[int, wg.WorkerMessage]]:
        kind = msg.WhichOneof("msg")
        if kind == "heartbeat":
            return self._heartbeats(msg.heartbeat)
        if kind == "goodbye":
            return [(i, msg) for i in range(self.upstreams)]
        if kind in _JOB_MESSAGES:
            return [(self.upstream_of(_job_id(msg, kind)), msg)]
        if kind == "login_check":
            return [(self.requests.pop(msg.login_check.request_id, 0), msg)]
        # A second Hello, a nested batch, a kind newer than this coordinator: the first
        # upstream's gateway answers it as it would directly.
        return [(0, msg)]

    def _heartbeats(self, beat: wg.Heartbeat) -> list[tuple[int, wg.WorkerMessage]]:
        self.beats[beat.seq] = _Beat(set(range(self.upstreams)))
        while len(self.beats) > MAX_PENDING_HEARTBEATS:
            del self.beats[min(self.beats)]
        active: list[list[wg.HeldJob]] = [[] for _ in range(self.upstreams)]
        for held in beat.active:
            active[self.upstream_of(held.job_id)].append(held)
        return [
            (i, wg.WorkerMessage(heartbeat=wg.Heartbeat(seq=beat.seq, active=jobs)))
            for i, jobs in enumerate(active)
        ]


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
                await pass_back_error(self._context, event.error, address)
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
            await pass_back_error(self._context, exc, address)  # its refusal, as it gave it
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
