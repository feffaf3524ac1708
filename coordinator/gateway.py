"""`postroom.v1.WorkerGateway`: one bidirectional stream per worker, a thin shell around the actor.

Per stream: the handler validates Hello, registers an outbox with the actor and yields from it
(the one writer of the stream); a reader task turns each WorkerMessage into an actor event. A
stream that ends without Goodbye means the worker was lost (toolchain.md: a SIGKILLed peer looks
like a clean EOF). Protocol violations end only that stream; its jobs are recovered like any lost
session's, so a hostile worker cannot touch another worker's jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial

import anyio
import grpc

from coordinator.access import devices
from coordinator.actor import Coordinator
from coordinator.assets import AssetStore, sniff_content_type
from coordinator.convert import kind_from_pb, level_from_pb
from coordinator.domain import KNOWN_PLATFORMS, ScreenshotRecord, StepLogEntry, Target
from coordinator.errors import CoordinatorError
from postroom.v1 import worker_gateway_pb2 as wg
from postroom.v1 import worker_gateway_pb2_grpc as wg_grpc

log = logging.getLogger("postroom.coordinator.gateway")

HELLO_TIMEOUT_S = 10.0
MAX_UPLOADS_PER_SESSION = 8
SCREENSHOT_LABELS = frozenset({"before_confirm", "after_publish", "on_failure"})


@dataclass(slots=True)
class _Upload:
    job_id: str
    epoch: int
    label: str
    content_type: str
    sha256: str
    total_size: int
    data: bytearray = field(default_factory=bytearray)


class ProtocolViolation(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class WorkerGatewayService(wg_grpc.WorkerGatewayServicer):
    def __init__(self, coordinator: Coordinator, assets: AssetStore) -> None:
        self.coordinator = coordinator
        self.core = coordinator.core
        self.assets = assets

    async def Connect(
        self,
        request_iterator: AsyncIterator[wg.WorkerMessage],
        context: grpc.aio.ServicerContext[wg.WorkerMessage, wg.CoordinatorMessage],
    ) -> AsyncIterator[wg.CoordinatorMessage]:
        try:
            first = await asyncio.wait_for(anext(request_iterator), HELLO_TIMEOUT_S)
        except (StopAsyncIteration, TimeoutError):
            return
        hello = self._validate_hello(first)
        if isinstance(hello, ProtocolViolation):
            await context.abort(hello.code, str(hello))
            return
        capabilities = tuple(Target(c.platform, c.account or "*") for c in hello.capabilities)
        credentials = self.coordinator.credentials
        try:  # who it is (its device token), and that it may serve what it claims
            enrollment = devices.identify(
                credentials,
                device_id=hello.device_id,
                token=hello.token,
                capabilities=capabilities,
                context=context,
            )
        except CoordinatorError as exc:
            log.warning("refused a Hello of device %r: %s", hello.device_id[:80], exc)
            await context.abort(exc.status_code, str(exc))
            return
        session_id = f"s-{uuid.uuid4().hex[:12]}"
        outbox = self.coordinator.open_outbox(session_id)
        await self.coordinator.post(
            partial(
                devices.open_checked,
                self.core,
                credentials,
                enrollment,
                session_id,
                device_id=hello.device_id,
                kind=kind_from_pb(hello.kind),
                capabilities=capabilities,
                slots=hello.slots,
                held=[(h.job_id, h.lease_epoch) for h in hello.held_jobs],
                version=hello.version,
            )
        )
        state = _StreamState()
        reader = asyncio.create_task(self._read(session_id, request_iterator, state))
        try:
            async with outbox:
                async for msg in outbox:
                    yield msg
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.coordinator.close_outbox(session_id)
            reason = state.end_reason or "stream closed"
            with anyio.CancelScope(shield=True), contextlib.suppress(anyio.ClosedResourceError):
                await self.coordinator.post(
                    partial(self.core.session_lost, session_id, reason=reason)
                )
            if state.violation is not None:
                await context.abort(state.violation.code, str(state.violation))
            ended = devices.end_status(
                credentials,
                self.core,
                enrollment=enrollment,
                device_id=hello.device_id,
                session_id=session_id,
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
        for cap in hello.capabilities:
            if cap.platform not in KNOWN_PLATFORMS:
                return ProtocolViolation(
                    invalid,
                    f"unknown platform {cap.platform!r} in Hello.capabilities; known: "
                    + ", ".join(sorted(KNOWN_PLATFORMS)),
                )
        return hello

    async def _read(
        self, session_id: str, messages: AsyncIterator[wg.WorkerMessage], state: _StreamState
    ) -> None:
        post = self.coordinator.post
        core = self.core
        try:
            async for msg in messages:
                kind = msg.WhichOneof("msg")
                if kind == "heartbeat":
                    held = [(h.job_id, h.lease_epoch) for h in msg.heartbeat.active]
                    await post(partial(core.heartbeat, session_id, msg.heartbeat.seq, active=held))
                elif kind == "ack":
                    await post(partial(core.ack, session_id, msg.ack.job_id, msg.ack.lease_epoch))
                elif kind == "log":
                    entry = StepLogEntry(
                        step=msg.log.step[:100],
                        level=level_from_pb(msg.log.level),
                        message=msg.log.message[:4000],
                        at=msg.log.at_unix_ms / 1000 if msg.log.at_unix_ms else 0.0,
                    )
                    await post(
                        partial(core.log, session_id, msg.log.job_id, msg.log.lease_epoch, entry)
                    )
                elif kind == "screenshot":
                    await self._chunk(session_id, msg.screenshot, state)
                elif kind == "commit_request":
                    req = msg.commit_request
                    await post(
                        partial(core.commit_request, session_id, req.job_id, req.lease_epoch)
                    )
                elif kind == "awaiting_confirm":
                    ac = msg.awaiting_confirm
                    await post(
                        partial(core.awaiting_confirm, session_id, ac.job_id, ac.lease_epoch)
                    )
                elif kind == "result":
                    await post(partial(core.result, session_id, msg.result))
                elif kind == "login_check":
                    self.coordinator.login_check_answered(msg.login_check)
                elif kind == "goodbye":
                    state.end_reason = f"worker said goodbye: {msg.goodbye.reason or 'draining'}"
                    await post(partial(core.goodbye, session_id))
                elif kind == "hello":
                    state.violation = ProtocolViolation(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "Hello may only be the first message of a stream",
                    )
                    break
            if not state.end_reason:
                state.end_reason = "stream ended without goodbye (worker lost)"
        except (grpc.aio.AioRpcError, anyio.ClosedResourceError, anyio.EndOfStream) as exc:
            state.end_reason = f"stream broke: {exc.__class__.__name__}"
        finally:
            # Ending the outbox ends the response stream, and with it the handler.
            self.coordinator.close_outbox(session_id)

    async def _chunk(self, session_id: str, chunk: wg.ScreenshotChunk, state: _StreamState) -> None:
        limits = self.core.config

        def refuse(error: str) -> None:
            state.uploads.pop(chunk.upload_id, None)
            ack = wg.ScreenshotAck(
                job_id=chunk.job_id, upload_id=chunk.upload_id, ok=False, error=error
            )
            self.coordinator.send_now(session_id, wg.CoordinatorMessage(screenshot_ack=ack))

        if len(chunk.data) > limits.max_chunk_bytes:
            return refuse(
                f"RESOURCE_EXHAUSTED: chunk of {len(chunk.data)} bytes; the limit is "
                f"{limits.max_chunk_bytes}"
            )
        if chunk.total_size > limits.max_asset_bytes:
            return refuse(
                f"RESOURCE_EXHAUSTED: screenshot of {chunk.total_size} bytes; the limit is "
                f"{limits.max_asset_bytes}"
            )
        if not self.core.lease_is_current(session_id, chunk.job_id, chunk.lease_epoch):
            return refuse("FAILED_PRECONDITION: you do not hold this job at this epoch")
        upload = state.uploads.get(chunk.upload_id)
        if upload is None:
            if chunk.offset != 0:
                return refuse("INVALID_ARGUMENT: the first chunk of an upload must have offset 0")
            if len(state.uploads) >= MAX_UPLOADS_PER_SESSION:
                return refuse("RESOURCE_EXHAUSTED: too many screenshot uploads in progress")
            label = chunk.label if chunk.label in SCREENSHOT_LABELS else "on_failure"
            upload = _Upload(chunk.job_id, chunk.lease_epoch, label, chunk.content_type,
                             chunk.sha256.lower(), chunk.total_size)  # fmt: skip
            state.uploads[chunk.upload_id] = upload
        if chunk.offset != len(upload.data):
            return refuse(f"INVALID_ARGUMENT: chunk offset {chunk.offset}, expected "
                          f"{len(upload.data)}")  # fmt: skip
        upload.data += chunk.data
        if len(upload.data) > limits.max_asset_bytes:
            return refuse(f"RESOURCE_EXHAUSTED: screenshot over {limits.max_asset_bytes} bytes")
        if not chunk.last:
            return None
        del state.uploads[chunk.upload_id]
        data = bytes(upload.data)
        digest = hashlib.sha256(data).hexdigest()
        if digest != upload.sha256:
            return refuse(f"INVALID_ARGUMENT: sha256 mismatch: got {digest}, announced "
                          f"{upload.sha256 or '(none)'}")  # fmt: skip
        asset_id = await anyio.to_thread.run_sync(self.assets.put, data)
        record = ScreenshotRecord(
            asset_id=asset_id,
            label=upload.label,
            size_bytes=len(data),
            content_type=upload.content_type or sniff_content_type(data[:16]),
            at=self.coordinator.clock.now(),
        )
        await self.coordinator.post(
            partial(self.core.screenshot, session_id, upload.job_id, upload.epoch, record)
        )
        ack = wg.ScreenshotAck(job_id=upload.job_id, upload_id=chunk.upload_id, ok=True,
                               asset_id=asset_id)  # fmt: skip
        self.coordinator.send_now(session_id, wg.CoordinatorMessage(screenshot_ack=ack))
        return None


@dataclass(slots=True)
class _StreamState:
    end_reason: str = ""
    violation: ProtocolViolation | None = None
    uploads: dict[str, _Upload] = field(default_factory=dict)
