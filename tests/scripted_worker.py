"""A scripted worker: drives `WorkerGateway.Connect` step by step on a real grpc.aio channel.

    async with ScriptedWorker(address, "dev-1", capabilities=[("sandbox", "*")], slots=2) as w:
        welcome = await w.hello()
        assign = (await w.next("assign")).assign
        await w.ack(assign)
        assert isinstance(await w.commit(assign), wg.CommitGrant)
        assert (await w.succeed(assign, "p1", "https://example/p1")).accepted

Every message the coordinator sends is kept in `received` (in order) and in an inbox; `next(kind)`
takes the oldest message of that oneof kind from the inbox (waiting with a deadline), so messages
of other kinds are never lost. `kill()` ends the call abruptly without Goodbye, as a SIGKILLed
worker looks to the coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType

import grpc

from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg
from postroom.v1 import worker_gateway_pb2_grpc

DEFAULT_TIMEOUT_S = 5.0
JobRef = wg.Assign | wg.HeldJob
Call = grpc.aio.StreamStreamCall[wg.WorkerMessage, wg.CoordinatorMessage]


class StreamEnded(Exception):
    """The coordinator ended the stream before the awaited message arrived."""

    def __init__(self, code: grpc.StatusCode | None, details: str) -> None:
        super().__init__(f"stream ended ({code}): {details}")
        self.code = code
        self.details = details


class ScriptedWorker:
    def __init__(
        self,
        address: str,
        device_id: str,
        *,
        capabilities: Sequence[tuple[str, str]] = (("sandbox", "*"),),
        slots: int = 2,
        token: str = "",
        kind: pb.WorkerKind.ValueType = pb.WORKER_KIND_API,
        credentials: grpc.ChannelCredentials | None = None,
        per_account_slots: int = 0,
        batches: bool = False,
    ) -> None:
        """`token`: the device token its Hello carries; `credentials`: dial with TLS;
        `per_account_slots`: jobs of one account at once (0: no bound beyond slots);
        `batches`: its Hello says it takes CoordinatorMessage.batch (unpacked on arrival, each
        wire message also kept in `wire`)."""
        self.address = address
        self.device_id = device_id
        self.capabilities = list(capabilities)
        self.slots = slots
        self.per_account_slots = per_account_slots
        self.token = token
        self.kind = kind
        self.credentials = credentials
        self.batches = batches
        self.received: list[wg.CoordinatorMessage] = []
        self.wire: list[wg.CoordinatorMessage] = []  # as read, batches not unpacked
        self.welcome: wg.Welcome | None = None
        self._inbox: list[wg.CoordinatorMessage] = []
        self._arrived = asyncio.Event()
        self._ended = False
        self._end_code: grpc.StatusCode | None = None
        self._end_details = ""
        self._seq = 0
        self.held: dict[str, int] = {}  # job id -> lease epoch
        self._channel: grpc.aio.Channel | None = None
        self._call: Call | None = None
        self._reader: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> ScriptedWorker:
        if self.credentials is None:
            self._channel = grpc.aio.insecure_channel(self.address)
        else:
            self._channel = grpc.aio.secure_channel(self.address, self.credentials)
        stub = worker_gateway_pb2_grpc.WorkerGatewayStub(self._channel)
        self._call = stub.Connect(None)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.kill()

    async def _read(self) -> None:
        call = self._live_call()
        try:
            while True:
                msg = await call.read()
                if not isinstance(msg, wg.CoordinatorMessage):  # grpc.aio.EOF
                    self._end_code = await call.code()
                    self._end_details = await call.details() or ""
                    break
                self.wire.append(msg)
                batch = msg.batch.messages if msg.WhichOneof("msg") == "batch" else [msg]
                for one in batch:
                    self.received.append(one)
                    self._inbox.append(one)
                    self._track(one)
                self._wake()
        except grpc.aio.AioRpcError as exc:
            self._end_code, self._end_details = exc.code(), exc.details() or ""
        except asyncio.CancelledError:  # kill(): our own call.cancel(); nobody cancels this task
            self._end_code, self._end_details = grpc.StatusCode.CANCELLED, "killed"
        finally:
            self._ended = True
            self._wake()

    def _track(self, msg: wg.CoordinatorMessage) -> None:
        """What this worker holds, reported in every heartbeat (as the real worker does)."""
        kind = msg.WhichOneof("msg")
        if kind == "assign":
            self.held[msg.assign.job_id] = msg.assign.lease_epoch
        elif kind == "welcome":
            self.held.update({h.job_id: h.lease_epoch for h in msg.welcome.resumed})
        elif kind in ("result_ack", "drop", "cancel"):
            ref = getattr(msg, kind)
            if self.held.get(ref.job_id) == ref.lease_epoch:
                del self.held[ref.job_id]

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = asyncio.Event()

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def end_status(self) -> tuple[grpc.StatusCode | None, str]:
        """(code, details) the stream ended with; (None, "") while it is open."""
        return self._end_code, self._end_details

    async def wait_ended(
        self,
        timeout: float = DEFAULT_TIMEOUT_S,  # noqa: ASYNC109 (the deadline is the point)
    ) -> tuple[grpc.StatusCode | None, str]:
        """Wait until the coordinator ends the stream; returns its status."""
        async with asyncio.timeout(timeout):
            while not self._ended:
                await self._arrived.wait()
        return self.end_status

    # ---- receiving ---------------------------------------------------------------------------

    async def take(
        self,
        kinds: Iterable[str],
        *,
        job_id: str | None = None,
        where: Callable[[wg.CoordinatorMessage], bool] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,  # noqa: ASYNC109
    ) -> wg.CoordinatorMessage:
        """The oldest inbox message of one of `kinds` (about `job_id`, matching `where`)."""
        wanted = set(kinds)
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self._inbox):
                kind = msg.WhichOneof("msg")
                if kind not in wanted:
                    continue
                if job_id is not None and getattr(getattr(msg, kind), "job_id", None) != job_id:
                    continue
                if where is not None and not where(msg):
                    continue
                del self._inbox[i]
                return msg
            if self._ended:
                raise StreamEnded(self._end_code, self._end_details)
            left = deadline - time.monotonic()
            if left <= 0:
                inbox = [m.WhichOneof("msg") for m in self._inbox]
                raise TimeoutError(f"no {sorted(wanted)} within {timeout}s; inbox holds {inbox}")
            arrived = self._arrived
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await arrived.wait()

    async def next(
        self,
        kind: str,
        timeout: float = DEFAULT_TIMEOUT_S,  # noqa: ASYNC109
        *,
        job_id: str | None = None,
    ) -> wg.CoordinatorMessage:
        """Wait for the next message of this oneof kind ("assign", "drop", "cancel", ...)."""
        return await self.take([kind], job_id=job_id, timeout=timeout)

    def pending(self, kind: str) -> list[wg.CoordinatorMessage]:
        """Inbox messages of `kind` not taken yet (not removed)."""
        return [m for m in self._inbox if m.WhichOneof("msg") == kind]

    async def sync(self) -> wg.HeartbeatAck:
        """A heartbeat round trip: every message the coordinator sent before it has arrived."""
        return await self.heartbeat()

    # ---- sending -----------------------------------------------------------------------------

    def _live_call(self) -> Call:
        assert self._call is not None, "use `async with ScriptedWorker(...)`"
        return self._call

    async def send(self, msg: wg.WorkerMessage) -> None:
        await self._live_call().write(msg)

    async def hello(
        self, held: Sequence[JobRef] = (), *, device_id: str | None = None
    ) -> wg.Welcome:
        """Send Hello (with held jobs from before a reconnect) and wait for Welcome."""
        held_jobs = [
            h
            if isinstance(h, wg.HeldJob)
            else wg.HeldJob(job_id=h.job_id, lease_epoch=h.lease_epoch)
            for h in held
        ]
        hello = wg.Hello(
            device_id=self.device_id if device_id is None else device_id,
            token=self.token,
            kind=self.kind,
            capabilities=[pb.Target(platform=p, account=a) for p, a in self.capabilities],
            slots=self.slots,
            per_account_slots=self.per_account_slots,
            held_jobs=held_jobs,
            version="scripted-worker",
            accepts_batches=self.batches,
        )
        await self.send(wg.WorkerMessage(hello=hello))
        self.welcome = (await self.next("welcome")).welcome
        return self.welcome

    async def heartbeat(self) -> wg.HeartbeatAck:
        self._seq += 1
        seq = self._seq
        active = [wg.HeldJob(job_id=j, lease_epoch=e) for j, e in sorted(self.held.items())]
        await self.send(wg.WorkerMessage(heartbeat=wg.Heartbeat(seq=seq, active=active)))
        msg = await self.take(["heartbeat_ack"], where=lambda m: m.heartbeat_ack.seq == seq)
        return msg.heartbeat_ack

    async def ack(self, assign: JobRef) -> None:
        ack = wg.AssignAck(job_id=assign.job_id, lease_epoch=assign.lease_epoch)
        await self.send(wg.WorkerMessage(ack=ack))

    async def log(
        self, assign: JobRef, step: str, msg: str, level: pb.LogLevel.ValueType = pb.LOG_LEVEL_INFO
    ) -> None:
        entry = wg.JobLog(
            job_id=assign.job_id,
            lease_epoch=assign.lease_epoch,
            step=step,
            level=level,
            message=msg,
        )
        await self.send(wg.WorkerMessage(log=entry))

    async def commit(self, assign: JobRef) -> wg.CommitGrant | wg.CommitDeny:
        req = wg.CommitRequest(job_id=assign.job_id, lease_epoch=assign.lease_epoch)
        await self.send(wg.WorkerMessage(commit_request=req))
        msg = await self.take(["commit_grant", "commit_deny"], job_id=assign.job_id)
        return msg.commit_grant if msg.HasField("commit_grant") else msg.commit_deny

    async def result(self, result: wg.JobResult) -> wg.ResultAck:
        await self.send(wg.WorkerMessage(result=result))
        msg = await self.take(
            ["result_ack"],
            job_id=result.job_id,
            where=lambda m: m.result_ack.lease_epoch == result.lease_epoch,
        )
        return msg.result_ack

    async def succeed(self, assign: JobRef, post_id: str, url: str) -> wg.ResultAck:
        return await self.result(
            wg.JobResult(
                job_id=assign.job_id,
                lease_epoch=assign.lease_epoch,
                success=True,
                platform_post_id=post_id,
                url=url,
            )
        )

    async def fail(
        self,
        assign: JobRef,
        error_class: pb.ErrorClass.ValueType,
        msg: str,
        *,
        retry_at: float | None = None,
    ) -> wg.ResultAck:
        return await self.result(
            wg.JobResult(
                job_id=assign.job_id,
                lease_epoch=assign.lease_epoch,
                success=False,
                error_class=error_class,
                error_message=msg,
                retry_at_unix_ms=int(retry_at * 1000) if retry_at is not None else 0,
            )
        )

    async def screenshot(
        self,
        assign: JobRef,
        data: bytes,
        *,
        chunk: int = 64 * 1024,
        label: str = "after_publish",
        content_type: str = "image/png",
        sha256: str | None = None,
    ) -> wg.ScreenshotAck:
        """Upload `data` in chunks of `chunk` bytes; returns the coordinator's ScreenshotAck."""
        upload_id = uuid.uuid4().hex
        digest = sha256 if sha256 is not None else hashlib.sha256(data).hexdigest()
        offsets = list(range(0, len(data), chunk)) or [0]
        for offset in offsets:
            part = data[offset : offset + chunk]
            sc = wg.ScreenshotChunk(
                job_id=assign.job_id,
                lease_epoch=assign.lease_epoch,
                upload_id=upload_id,
                label=label,
                content_type=content_type,
                sha256=digest,
                total_size=len(data),
                offset=offset,
                data=part,
                last=offset == offsets[-1],
            )
            await self.send(wg.WorkerMessage(screenshot=sc))
        msg = await self.take(
            ["screenshot_ack"], where=lambda m: m.screenshot_ack.upload_id == upload_id
        )
        return msg.screenshot_ack

    async def goodbye(self, reason: str = "draining", *, reconnecting: bool = False) -> None:
        """Say goodbye and close our side; the coordinator then ends the stream. `reconnecting`:
        this worker dials again at once (its leases are kept for it)."""
        goodbye = wg.Goodbye(reason=reason, reconnecting=reconnecting)
        await self.send(wg.WorkerMessage(goodbye=goodbye))
        await self._live_call().done_writing()

    async def kill(self) -> None:
        """End the call abruptly, without Goodbye (as a SIGKILLed worker process looks)."""
        if self._call is not None:
            self._call.cancel()
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
        if self._reader is not None:
            await self._reader
            self._reader = None
