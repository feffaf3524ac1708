"""What the worker remembers about one leased job, and the messages it builds from that. Pure:
no I/O."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from enum import Enum

import anyio

from postroom.v1 import types_pb2
from postroom.v1 import worker_gateway_pb2 as wg
from worker.adapters.base import JobSpec, Published
from worker.config import DEFAULT_MAX_CHUNK_BYTES
from worker.errors import AdapterError, NotFoundOnVerify, RateLimited, Transient, UiChanged

PNG = "image/png"


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """From Welcome; 0 = not announced."""

    max_chunk_bytes: int = 0
    max_asset_bytes: int = 0


class JobPhase(Enum):
    WAITING_SLOT = "waiting_slot"  # leased, waiting for a free slot (coordinator over-assigned)
    RUNNING = "running"  # acknowledged; verify / prepare
    AWAITING_CONFIRM = "awaiting_confirm"  # AwaitingConfirm sent, waiting for ConfirmJob
    AWAITING_PERMIT = "awaiting_permit"  # CommitRequest sent, waiting for CommitGrant/Deny
    COMMITTING = "committing"  # permit granted: the irreversible call and what follows it
    REPORTED = "reported"  # JobResult sent, waiting for ResultAck; no task runs any more


# Phases in which a task still runs, and so must stop by itself before an unrenewed deadline.
ACTIVE_PHASES = frozenset(JobPhase) - {JobPhase.REPORTED}


@dataclass(frozen=True, slots=True)
class Upload:
    """A proof screenshot kept until its ScreenshotAck (re-sent after a reconnect)."""

    upload_id: str
    label: str
    data: bytes
    sha256: str

    @classmethod
    def of(cls, label: str, data: bytes) -> Upload:
        return cls(uuid.uuid4().hex, label, data, hashlib.sha256(data).hexdigest())


@dataclass(eq=False, kw_only=True)
class RunningJob:
    """One leased job as the worker holds it.

    One writer: `worker.job_runner.JobRunner` creates every `RunningJob`, and only its methods
    assign these fields or set these events, whether a coordinator message (`JobRunner.apply`) or
    the job's own task (through `worker.job_task.JobControl`) asks for the change. Everything else,
    the job's task included, only reads them.
    """

    spec: JobSpec
    epoch: int
    deadline: float  # lease deadline, Unix seconds; renewed by HeartbeatAck / CommitGrant
    traceparent: str = ""
    phase: JobPhase = JobPhase.WAITING_SLOT
    step: str = ""  # the step running now (failed_step when it fails)
    committed: bool = False  # the commit permit was granted
    # When the commit must have ended (the bound told the coordinator, on the worker's clock,
    # counted from before the CommitRequest left); 0.0: no permit asked yet.
    commit_ends_at: float = 0.0
    started_at: float = 0.0
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    # Made when first asked for (confirmation()): most jobs never wait for an operator.
    confirmed: anyio.Event | None = None
    permit: anyio.Event = field(default_factory=anyio.Event)
    permit_granted: bool = False
    deny_reason: str = ""
    # The last message that moved the job's state at the coordinator; repeated after a resume.
    last_state_msg: wg.WorkerMessage | None = None
    uploads: dict[str, Upload] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    def confirmation(self) -> anyio.Event:
        """The event an operator's ConfirmJob sets (made by the runner, when first needed)."""
        if self.confirmed is None:
            self.confirmed = anyio.Event()
        return self.confirmed

    def held(self) -> wg.HeldJob:
        return wg.HeldJob(job_id=self.job_id, lease_epoch=self.epoch, committed=self.committed)

    def ack(self) -> wg.WorkerMessage:
        return wg.WorkerMessage(ack=wg.AssignAck(job_id=self.job_id, lease_epoch=self.epoch))

    def awaiting_confirm(self) -> wg.WorkerMessage:
        msg = wg.AwaitingConfirm(job_id=self.job_id, lease_epoch=self.epoch)
        return wg.WorkerMessage(awaiting_confirm=msg)

    def commit_request(self, bound_s: float = 0.0) -> wg.WorkerMessage:
        bound_ms = round(bound_s * 1000)
        msg = wg.CommitRequest(job_id=self.job_id, lease_epoch=self.epoch, commit_bound_ms=bound_ms)
        return wg.WorkerMessage(commit_request=msg)

    def log(
        self, step: str, level: types_pb2.LogLevel.ValueType, message: str, at: float
    ) -> wg.WorkerMessage:
        line = wg.JobLog(
            job_id=self.job_id,
            lease_epoch=self.epoch,
            step=step,
            level=level,
            message=message,
            at_unix_ms=int(at * 1000),
        )
        return wg.WorkerMessage(log=line)

    def success(self, published: Published, *, found_existing: bool, now: float) -> wg.JobResult:
        return wg.JobResult(
            job_id=self.job_id,
            lease_epoch=self.epoch,
            success=True,
            platform_post_id=published.post_id,
            url=published.url,
            found_existing=found_existing,
            execution_time_ms=self._elapsed_ms(now),
        )

    def failure(self, exc: AdapterError, *, step: str, now: float) -> wg.JobResult:
        result = wg.JobResult(
            job_id=self.job_id,
            lease_epoch=self.epoch,
            success=False,
            error_class=exc.error_class,
            error_message=exc.message,
            failed_step=exc.failed_step or step,
            execution_time_ms=self._elapsed_ms(now),
            http_status=exc.http_status or 0,
        )
        if isinstance(exc, RateLimited):
            result.retry_at_unix_ms = int(exc.retry_at * 1000)
            result.quota_cap = exc.quota_cap
        if isinstance(exc, UiChanged):
            result.selector = exc.selector
        if isinstance(exc, NotFoundOnVerify):
            result.verified_absent = True
        elif isinstance(exc, Transient) and exc.not_created:
            result.not_created = True
        return result

    def _elapsed_ms(self, now: float) -> int:
        return max(0, int((now - self.started_at) * 1000)) if self.started_at else 0


def spec_from_assign(a: wg.Assign) -> JobSpec:
    return JobSpec(
        job_id=a.job_id,
        platform=a.platform,
        account=a.account,
        text=a.text,
        media=tuple(a.media),
        content_hash=a.content_hash,
        platform_key=a.platform_key,
        attempt=a.attempt,
        verify_first=a.verify_first or a.verify_only,
        verify_only=a.verify_only,
        require_confirm=a.require_confirm,
        post_id=a.post_id,
    )


def screenshot_chunks(
    job: RunningJob, upload: Upload, *, max_chunk_bytes: int = 0
) -> list[wg.WorkerMessage]:
    """The ScreenshotChunk messages of one upload: each <= 256 KiB and <= `max_chunk_bytes`."""
    size = DEFAULT_MAX_CHUNK_BYTES
    if max_chunk_bytes > 0:
        size = min(size, max_chunk_bytes)
    data = upload.data
    offsets = range(0, len(data), size) if data else range(1)
    return [
        wg.WorkerMessage(
            screenshot=wg.ScreenshotChunk(
                job_id=job.job_id,
                lease_epoch=job.epoch,
                upload_id=upload.upload_id,
                label=upload.label,
                content_type=PNG,
                sha256=upload.sha256,
                total_size=len(data),
                offset=offset,
                data=data[offset : offset + size],
                last=offset + size >= len(data),
            )
        )
        for offset in offsets
    ]
