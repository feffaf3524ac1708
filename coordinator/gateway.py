"""`postroom.v1.WorkerGateway`: one bidirectional stream per worker, a thin shell around the actor.

Per stream: the handler validates Hello, registers an outbox with the actor and yields from it
(the one writer of the stream); a reader task turns each WorkerMessage into an actor event. A
stream that ends without Goodbye means the worker was lost (toolchain.md: a SIGKILLed peer looks
like a clean EOF). Protocol violations end only that stream; its jobs are recovered like any lost
session's, so a hostile worker cannot touch another worker's jobs.

A Goodbye with `reconnecting` (a coordinator fanning the worker's stream out to the shard
owners says it when it ends the stream for a reason not the worker's: cluster/fanout.py) makes
the stream's end a detached one: the session ends but its leases are kept, unrenewed, for the
worker's next stream to resume by epoch (LeaseCore.session_lost(detached=True)); the timer
recovers any not resumed at its deadline. A hostile worker sending it keeps its leases only to
their deadlines, as it would by going silent; a protocol violation still ends it as a loss.

A quiet heartbeat (its session holds no lease and it reports none: an idle worker's) is answered
here, with the ack the actor would send, once the stream's Welcome went out; the actor takes in
that it was heard before its next batch (Coordinator.heard, LeaseCore.heard). An idle fleet's
heartbeats then cost no actor turn each (bench item 4). Any other heartbeat goes through the
actor, which renews the stream's leases and reconciles its `active` list.

Every message is checked on arrival (coordinator/worker_input.py): garbage and floods end the
stream with INVALID_ARGUMENT / RESOURCE_EXHAUSTED, odd-but-honest values are made safe and taken.
Screenshots are written to disk chunk by chunk as they arrive (coordinator/assets.py), so memory
per session stays at about one chunk whatever the screenshots' sizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio
import grpc

from coordinator import worker_input
from coordinator.access import devices
from coordinator.actor import Coordinator
from coordinator.assets import AssetStore, Incoming, sniff_content_type
from coordinator.convert import coordinator_message_pb, job_report_from_pb, kind_from_pb
from coordinator.domain import ScreenshotRecord, Target
from coordinator.errors import CoordinatorError
from coordinator.leasing import commands as c
from coordinator.wire import Garbage
from coordinator.worker_input import (
    MAX_UPLOADS_PER_SESSION,
    GatewayLimits,
    RateLimiter,
    Violation,
    check_message,
    cut,
)
from postroom.coalesce import Coalescer
from postroom.v1 import worker_gateway_pb2 as wg
from postroom.v1 import worker_gateway_pb2_grpc as wg_grpc

log = logging.getLogger("postroom.coordinator.gateway")
Ctx = grpc.aio.ServicerContext[wg.WorkerMessage, wg.CoordinatorMessage]

HELLO_TIMEOUT_S = 10.0
SCREENSHOT_LABELS = frozenset({"before_confirm", "after_publish", "on_failure"})
ProtocolViolation = Violation  # the stream broke the protocol: end it with this status


@dataclass(slots=True)
class _Upload:
    job_id: str
    epoch: int
    label: str
    content_type: str
    sha256: str
    total_size: int
    file: Incoming


class WorkerGatewayService(wg_grpc.WorkerGatewayServicer):
    def __init__(
        self,
        coordinator: Coordinator,
        assets: AssetStore,
        *,
        limits: GatewayLimits | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        refusal: Callable[[], str | None] | None = None,
    ) -> None:
        """`refusal`: why a stream is refused now (a standby coordinator: cluster/role.py)."""
        self.coordinator = coordinator
        self._refusal = refusal
        self.core = coordinator.core
        self.assets = assets
        self.limits = limits or GatewayLimits()
        self._monotonic = monotonic  # for message rates: wall time, whatever the lease clock

    async def Connect(
        self,
        request_iterator: AsyncIterator[wg.WorkerMessage],
        context: Ctx,
    ) -> AsyncIterator[wg.CoordinatorMessage]:
        try:
            first = await asyncio.wait_for(anext(request_iterator), HELLO_TIMEOUT_S)
        except (StopAsyncIteration, TimeoutError):
            first = None
        if self._refusal is not None and (why := self._refusal()) is not None:
            # After the Hello: aborting while the client still writes it can reach the client
            # as INTERNAL instead of this answer.
            await context.abort(grpc.StatusCode.UNAVAILABLE, why)
        if first is None:
            return
        opened = await self._open(first, context)
        if opened is None:
            return
        session_id = opened.session_id
        batches = isinstance(first, wg.WorkerMessage) and first.hello.accepts_batches
        outbox = self.coordinator.open_outbox(session_id)
        await self.coordinator.post(opened)
        limits = self.limits
        rate = RateLimiter(limits.max_messages_per_s, limits.burst_messages, self._monotonic)
        state = _StreamState(rate)
        reader = asyncio.create_task(self._read(session_id, request_iterator, state))
        try:
            async with outbox:
                # What the actor queued meanwhile (one commit's Assigns, acks and grants for
                # this stream) goes out in one write to a worker that takes batches.
                pending = Coalescer(outbox, wg.CoordinatorMessage.ByteSize)
                while True:
                    try:
                        msgs = await pending.next_batch()
                    except anyio.EndOfStream:
                        break
                    if not state.welcomed:
                        state.welcomed = any(m.HasField("welcome") for m in msgs)
                    if len(msgs) > 1 and batches:
                        yield wg.CoordinatorMessage(batch=wg.CoordinatorBatch(messages=msgs))
                    else:
                        for msg in msgs:
                            yield msg
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.coordinator.close_outbox(session_id)
            for upload in state.uploads.values():  # unfinished: their bytes go
                upload.file.discard()
            state.uploads.clear()
            await self._ended(opened, state, context)

    async def _open(self, first: wg.WorkerMessage | Garbage, context: Ctx) -> c.OpenStream | None:
        """The stream's opening, from its Hello: checked, and its identity proved; None once
        the stream is aborted with what to fix."""
        if isinstance(first, Garbage):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, first.message)
            return None
        hello = self._validate_hello(first)
        if isinstance(hello, ProtocolViolation):
            await context.abort(hello.code, str(hello))
            return None
        capabilities = tuple(Target(c.platform, c.account or "*") for c in hello.capabilities)
        try:  # who it is (its device token), and that it may serve what it claims
            enrollment = devices.identify(
                self.coordinator.credentials,
                device_id=hello.device_id,
                token=hello.token,
                capabilities=capabilities,
                context=context,
            )
        except CoordinatorError as exc:
            log.warning("refused a Hello of device %r: %s", hello.device_id[:80], exc)
            await context.abort(exc.status_code, str(exc))
            return None
        return c.OpenStream(
            f"s-{uuid.uuid4().hex[:12]}",
            device_id=hello.device_id,
            kind=kind_from_pb(hello.kind),
            capabilities=capabilities,
            slots=hello.slots,
            held=tuple((h.job_id, h.lease_epoch) for h in hello.held_jobs),
            version=hello.version,
            per_account_slots=hello.per_account_slots,
            enrollment=enrollment,
        )

    async def _ended(self, opened: c.OpenStream, state: _StreamState, context: Ctx) -> None:
        """The stream is over: the actor hears it, and the worker hears why (a violation, its
        identity revoked or replaced), if it is not an ordinary end."""
        reason = state.end_reason or "stream closed"
        lost = c.StreamLost(opened.session_id, reason, detached=state.detached)
        with anyio.CancelScope(shield=True), contextlib.suppress(anyio.ClosedResourceError):
            await self.coordinator.post(lost)
        if state.violation is not None:
            await context.abort(state.violation.code, str(state.violation))
        ended = devices.end_status(
            self.coordinator.credentials,
            self.core,
            enrollment=opened.enrollment,
            device_id=opened.device_id,
            session_id=opened.session_id,
        )
        if ended is not None:  # revoked, a new token, or replaced by a proven twin
            await context.abort(*ended)

    def _validate_hello(self, first: wg.WorkerMessage) -> wg.Hello | ProtocolViolation:
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if first.WhichOneof("msg") != "hello":
            return ProtocolViolation(invalid, "the first message of a stream must be Hello")
        hello = first.hello
        if not hello.device_id.strip():
            return ProtocolViolation(invalid, "Hello.device_id is empty: start the worker with "
                                     "--device-id NAME")  # fmt: skip
        if hello.slots < 1:
            return ProtocolViolation(invalid, "Hello.slots must be at least 1 (--concurrency)")
        if not hello.capabilities:
            return ProtocolViolation(invalid, "Hello.capabilities is empty: pass --platform "
                                     "PLATFORM[:ACCOUNT] at least once")  # fmt: skip
        try:
            worker_input.check_hello(hello)
        except Violation as exc:
            return exc
        return hello

    async def _read(
        self, session_id: str, messages: AsyncIterator[wg.WorkerMessage], state: _StreamState
    ) -> None:
        try:
            async for msg in messages:
                if isinstance(msg, Garbage):
                    raise Violation(grpc.StatusCode.INVALID_ARGUMENT, msg.message)
                for one in worker_input.unbatch(msg):
                    state.rate.take(worker_input.cost(one))
                    await self._message(session_id, one, state)
            if not state.end_reason:
                state.end_reason = "stream ended without goodbye (worker lost)"
        except Violation as exc:
            state.violation = exc
            state.end_reason = f"protocol violation: {exc}"
            log.warning("session %s ended: %s", session_id, exc)
        except (grpc.aio.AioRpcError, anyio.ClosedResourceError, anyio.EndOfStream) as exc:
            state.end_reason = f"stream broke: {exc.__class__.__name__}"
        except Exception as exc:  # a bug: this stream ends, the coordinator goes on
            log.exception("session %s: reading its stream failed", session_id)
            state.end_reason = f"stream reader failed: {exc.__class__.__name__}"
        finally:
            # Ending the outbox ends the response stream, and with it the handler.
            self.coordinator.close_outbox(session_id)

    async def _message(self, session_id: str, msg: wg.WorkerMessage, state: _StreamState) -> None:
        """Hand one message to the actor (after Goodbye too: the worker still reports its jobs)."""
        post = self.coordinator.post
        kind = check_message(msg)
        if kind == "heartbeat":
            beat = msg.heartbeat
            if not beat.active and state.welcomed and self._quiet_heartbeat(session_id, beat.seq):
                return
            held = tuple((h.job_id, h.lease_epoch) for h in beat.active)
            await post(c.Heartbeat(session_id, beat.seq, held))
        elif kind == "ack":
            await post(c.Ack(session_id, msg.ack.job_id, msg.ack.lease_epoch))
        elif kind == "log":
            entry = worker_input.log_entry(msg.log, self.coordinator.clock.now())
            await post(c.Log(session_id, msg.log.job_id, msg.log.lease_epoch, entry))
        elif kind == "screenshot":
            await self._chunk(session_id, msg.screenshot, state)
        elif kind == "commit_request":
            req = msg.commit_request
            bound_s = max(0, req.commit_bound_ms) / 1000
            await post(c.CommitRequest(session_id, req.job_id, req.lease_epoch, bound_s))
        elif kind == "awaiting_confirm":
            ac = msg.awaiting_confirm
            await post(c.AwaitingConfirm(session_id, ac.job_id, ac.lease_epoch))
        elif kind == "result":
            report = job_report_from_pb(worker_input.job_result(msg.result))
            await post(c.Result(session_id, report))
        elif kind == "login_check":
            answer = worker_input.login_check_result(msg.login_check)
            self.coordinator.login_check_answered(answer)
        elif kind == "goodbye":
            reason = cut(msg.goodbye.reason, worker_input.MAX_SHORT_TEXT_CHARS) or "draining"
            state.end_reason = f"worker said goodbye: {reason}"
            # Reconnecting: it dials again at once; its stream's end leaves its leases to it.
            state.reconnecting = state.reconnecting or msg.goodbye.reconnecting
            await post(c.Goodbye(session_id))
        elif kind == "hello":
            raise Violation(
                grpc.StatusCode.FAILED_PRECONDITION,
                "Hello may only be the first message of a stream",
            )
        elif kind == "batch":
            raise Violation(grpc.StatusCode.INVALID_ARGUMENT, "a batch inside a batch: send "
                            "WorkerMessage.batch only at the top level")  # fmt: skip
        else:  # a kind newer than this coordinator: a newer worker's, harmless to skip
            log.debug("session %s: skipped a message of unknown kind", session_id)

    def _quiet_heartbeat(self, session_id: str, seq: int) -> bool:
        """Answer a heartbeat that changes nothing (no lease held, none reported) here, without
        the actor (LeaseCore.quiet_heartbeat_ack); the actor takes in that it was heard. Only
        once the Welcome went out, so no ack overtakes it. False: the actor must decide it."""
        now = self.coordinator.clock.now()
        ack = self.core.quiet_heartbeat_ack(session_id, seq, now)
        if ack is None:
            return False
        self.coordinator.heard[session_id] = now  # taken in before the actor's next batch
        # A full outbox (a worker that does not read): the actor's path closes the stream.
        return self.coordinator.send_now(session_id, coordinator_message_pb(ack))

    async def _chunk(self, session_id: str, chunk: wg.ScreenshotChunk, state: _StreamState) -> None:
        limits = self.core.config

        async def refuse(error: str) -> None:
            upload = state.uploads.pop(chunk.upload_id, None)
            if upload is not None:
                await anyio.to_thread.run_sync(upload.file.discard)
            ack = wg.ScreenshotAck(
                job_id=chunk.job_id, upload_id=chunk.upload_id, ok=False, error=error
            )
            self.coordinator.send_now(session_id, wg.CoordinatorMessage(screenshot_ack=ack))

        if len(chunk.data) > limits.max_chunk_bytes:
            return await refuse(
                f"RESOURCE_EXHAUSTED: chunk of {len(chunk.data)} bytes; the limit is "
                f"{limits.max_chunk_bytes}"
            )
        if not 0 <= chunk.total_size <= limits.max_asset_bytes:
            return await refuse(
                f"RESOURCE_EXHAUSTED: screenshot of {chunk.total_size} bytes; the limit is "
                f"{limits.max_asset_bytes}"
            )
        if not self.core.lease_is_current(session_id, chunk.job_id, chunk.lease_epoch):
            return await refuse("FAILED_PRECONDITION: you do not hold this job at this epoch")
        upload = state.uploads.get(chunk.upload_id)
        if upload is None:
            error = self._new_upload_error(chunk, state)
            if error:
                return await refuse(error)
            label = chunk.label if chunk.label in SCREENSHOT_LABELS else "on_failure"
            content_type = cut(chunk.content_type, worker_input.MAX_SHORT_TEXT_CHARS)
            incoming = await anyio.to_thread.run_sync(self.assets.begin)
            upload = _Upload(chunk.job_id, chunk.lease_epoch, label, content_type,
                             chunk.sha256.lower(), chunk.total_size, incoming)  # fmt: skip
            state.uploads[chunk.upload_id] = upload
        if chunk.offset != upload.file.size:
            return await refuse(f"INVALID_ARGUMENT: chunk offset {chunk.offset}, expected "
                                f"{upload.file.size}")  # fmt: skip
        if upload.file.size + len(chunk.data) > upload.total_size:
            return await refuse(f"INVALID_ARGUMENT: more bytes than the {upload.total_size} "
                                "announced in total_size")  # fmt: skip
        await anyio.to_thread.run_sync(upload.file.write, chunk.data)
        if not chunk.last:
            return None
        error = _incomplete(upload)
        if error:
            return await refuse(error)
        del state.uploads[chunk.upload_id]
        asset_id = await anyio.to_thread.run_sync(upload.file.finish)
        record = ScreenshotRecord(
            asset_id=asset_id,
            label=upload.label,
            size_bytes=upload.file.size,
            content_type=upload.content_type or sniff_content_type(upload.file.head),
            at=self.coordinator.clock.now(),
        )
        # Its ack comes from the actor, after the row's commit: the worker deletes its copy then.
        await self.coordinator.post(
            c.Screenshot(session_id, upload.job_id, upload.epoch, chunk.upload_id, record)
        )
        return None

    def _new_upload_error(self, chunk: wg.ScreenshotChunk, state: _StreamState) -> str:
        if chunk.offset != 0:
            return "INVALID_ARGUMENT: the first chunk of an upload must have offset 0"
        if not _is_sha256(chunk.sha256):
            return "INVALID_ARGUMENT: sha256 must be the image's sha256 in 64 hex digits"
        if len(state.uploads) >= MAX_UPLOADS_PER_SESSION:
            return "RESOURCE_EXHAUSTED: too many screenshot uploads in progress"
        open_bytes = sum(u.total_size for u in state.uploads.values()) + chunk.total_size
        limit = self.limits.max_upload_bytes_per_session
        if open_bytes > limit:
            return (
                f"RESOURCE_EXHAUSTED: {open_bytes} bytes of unfinished uploads on this stream; "
                f"at most {limit}: finish one before starting another"
            )
        return ""


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


@dataclass(slots=True)
class _StreamState:
    rate: RateLimiter
    end_reason: str = ""
    violation: Violation | None = None
    uploads: dict[str, _Upload] = field(default_factory=dict)
    reconnecting: bool = False  # a Goodbye said the worker dials again at once
    welcomed: bool = False  # the Welcome went out: quiet heartbeats may be answered here

    @property
    def detached(self) -> bool:
        """The session ends but the worker lives on: its leases stay for its next stream."""
        return self.reconnecting and self.violation is None


def _incomplete(upload: _Upload) -> str:
    """Why an upload's last chunk does not complete it (empty: it does)."""
    if upload.file.size != upload.total_size:
        return f"INVALID_ARGUMENT: {upload.file.size} bytes, announced {upload.total_size}"
    digest = upload.file.sha256()
    if digest != upload.sha256:
        return (
            f"INVALID_ARGUMENT: sha256 mismatch: got {digest}, announced "
            f"{upload.sha256 or '(none)'}"
        )
    return ""
