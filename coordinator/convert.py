"""Domain values <-> postroom.v1 wire messages. The one place that knows both shapes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from coordinator.domain import (
    AuditEvent,
    DeviceRecord,
    ErrorClass,
    Job,
    JobStatus,
    LoginState,
    Post,
    PostStatus,
    Run,
    ScreenshotRecord,
    StepLogEntry,
    Target,
    WorkerKind,
)
from coordinator.gates import GateView
from coordinator.leasing import outbound as o
from coordinator.leasing.commands import JobReport
from coordinator.poststatus import post_warnings
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

# What a protobuf Timestamp can hold: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_TIMESTAMP_MIN_S = -62_135_596_800
_TIMESTAMP_MAX_S = 253_402_300_799


def ts(value: float | None) -> Timestamp | None:
    if not value or math.isnan(value):
        return None
    # Clamped: a time stored before the edge checked the window (or any other stray value) is
    # shown at the edge of what a Timestamp holds rather than failing the whole answer.
    seconds = min(max(value, _TIMESTAMP_MIN_S), _TIMESTAMP_MAX_S)
    out = Timestamp()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def post_status_pb(status: PostStatus) -> pb.PostStatus.ValueType:
    return pb.PostStatus.Value(f"POST_STATUS_{status.value}")


def post_status_from_pb(value: int) -> PostStatus | None:
    if value == pb.POST_STATUS_UNSPECIFIED:
        return None
    return PostStatus(pb.PostStatus.Name(value).removeprefix("POST_STATUS_"))  # type: ignore[arg-type]


def job_status_pb(status: JobStatus) -> pb.JobStatus.ValueType:
    return pb.JobStatus.Value(f"JOB_STATUS_{status.value}")


def job_status_from_pb(value: int) -> JobStatus | None:
    if value == pb.JOB_STATUS_UNSPECIFIED:
        return None
    return JobStatus(pb.JobStatus.Name(value).removeprefix("JOB_STATUS_"))  # type: ignore[arg-type]


def error_class_pb(value: ErrorClass | None) -> pb.ErrorClass.ValueType:
    if value is None:
        return pb.ERROR_CLASS_UNSPECIFIED
    return pb.ErrorClass.Value(f"ERROR_CLASS_{value.value}")


def kind_pb(kind: WorkerKind) -> pb.WorkerKind.ValueType:
    return pb.WORKER_KIND_BROWSER if kind is WorkerKind.BROWSER else pb.WORKER_KIND_API


def kind_from_pb(value: int) -> WorkerKind:
    return WorkerKind.BROWSER if value == pb.WORKER_KIND_BROWSER else WorkerKind.API


def login_state_pb(state: LoginState) -> pb.LoginState.ValueType:
    return pb.LoginState.Value(f"LOGIN_STATE_{state.value}")


def login_state_from_pb(value: int) -> LoginState:
    if value == pb.LOGIN_STATE_LOGGED_IN:
        return LoginState.LOGGED_IN
    if value == pb.LOGIN_STATE_NEEDS_LOGIN:
        return LoginState.NEEDS_LOGIN
    return LoginState.UNKNOWN


_LEVELS = {"DEBUG": pb.LOG_LEVEL_DEBUG, "INFO": pb.LOG_LEVEL_INFO,
           "WARNING": pb.LOG_LEVEL_WARNING, "ERROR": pb.LOG_LEVEL_ERROR}  # fmt: skip


def level_pb(level: str) -> pb.LogLevel.ValueType:
    return _LEVELS.get(level, pb.LOG_LEVEL_INFO)


def level_from_pb(value: int) -> str:
    for name, v in _LEVELS.items():
        if v == value:
            return name
    return "INFO"


def target_pb(t: Target) -> pb.Target:
    return pb.Target(platform=t.platform, account=t.account)


def step_log_pb(entry: StepLogEntry) -> pb.StepLog:
    return pb.StepLog(
        step=entry.step, level=level_pb(entry.level), message=entry.message, at=ts(entry.at)
    )


def screenshot_pb(rec: ScreenshotRecord) -> pb.Screenshot:
    return pb.Screenshot(
        asset_id=rec.asset_id,
        label=rec.label,
        size_bytes=rec.size_bytes,
        content_type=rec.content_type,
        at=ts(rec.at),
    )


def run_pb(run: Run) -> pb.Run:
    return pb.Run(
        id=run.id,
        job_id=run.job_id,
        attempt=run.attempt,
        device_id=run.device_id,
        lease_epoch=run.lease_epoch,
        started_at=ts(run.started_at),
        ended_at=ts(run.ended_at),
        outcome=run.outcome,
        error_class=error_class_pb(run.error_class),
        error=run.error,
        committed=run.committed,
        failed_step=run.failed_step,
        logs=[step_log_pb(e) for e in run.logs],
        screenshots=[screenshot_pb(s) for s in run.screenshots],
    )


def job_pb(job: Job, runs: Sequence[Run] = ()) -> pb.Job:
    return pb.Job(
        id=job.id,
        post_id=job.post_id,
        platform=job.platform,
        account=job.account,
        status=job_status_pb(job.status),
        idempotency_key=job.idempotency_key,
        platform_key=job.platform_key,
        content_hash=job.content_hash,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        not_before=ts(job.not_before),
        lease_epoch=job.lease_epoch,
        device_id=job.device_id,
        lease_expires_at=ts(job.lease_expires_at),
        verify_first=job.verify_first,
        last_error_class=error_class_pb(job.last_error_class),
        last_error=job.last_error,
        result_post_id=job.result_post_id,
        result_url=job.result_url,
        rate_limited_count=job.rate_limited_count,
        created_at=ts(job.created_at),
        updated_at=ts(job.updated_at),
        scheduled_at=ts(job.scheduled_at),
        runs=[run_pb(r) for r in runs],
        resolved_by=job.resolved_by,
        lost_looks=job.lost_looks,
    )


def target_state_pb(job: Job) -> pb.TargetState:
    waiting = job.status in (JobStatus.QUEUED,)
    return pb.TargetState(
        target=target_pb(job.target),
        job_id=job.id,
        job_status=job_status_pb(job.status),
        attempt=job.attempt,
        not_before=ts(job.not_before) if waiting else None,
        last_error_class=error_class_pb(job.last_error_class),
        last_error=job.last_error,
        result_post_id=job.result_post_id,
        result_url=job.result_url,
    )


def post_pb(post: Post, jobs: Sequence[Job] = ()) -> pb.Post:
    # The newest job per target stands for it (older ones were superseded by a reschedule).
    latest: dict[Target, Job] = {}
    for job in sorted(jobs, key=lambda j: (j.created_at, j.id)):
        if job.status is not JobStatus.CANCELLED or job.target not in latest:
            latest[job.target] = job
    current = [latest[t] for t in post.targets if t in latest]
    warnings = post_warnings(current) if jobs else []
    if post.status is PostStatus.PENDING_APPROVAL and jobs:
        # It was scheduled before: an edit took its approval away and holds its jobs.
        warnings.append("edited after approval: approve again, then schedule")
    published = [j for j in current if j.status is JobStatus.SUCCEEDED]
    for job in published:
        where = f"{job.platform}:{job.account}" + (f" ({job.result_url})" if job.result_url else "")
        if post.status is PostStatus.CANCELLED:
            # Cancelling stops what has not run; it cannot unpublish what already went out.
            warnings.append(
                f"cancelled, but already published on {where}: delete it there if it must go"
            )
        elif job.content_hash != post.content_hash:
            # A published target is never published again, so an edit does not reach it.
            warnings.append(
                f"{where} shows an earlier version: it was published before the last edit "
                "and is never published again; edit or delete it on the platform"
            )
    return pb.Post(
        id=post.id,
        text=post.text,
        media=list(post.media),
        targets=[target_pb(t) for t in post.targets],
        scheduled_at=ts(post.scheduled_at),
        status=post_status_pb(post.status),
        content_hash=post.content_hash,
        approved_hash=post.approved_hash,
        approved_by=post.approved_by,
        warnings=warnings,
        target_states=[target_state_pb(j) for j in current],
        created_at=ts(post.created_at),
        updated_at=ts(post.updated_at),
        max_attempts=post.max_attempts,
        require_confirm=post.require_confirm,
    )


def device_pb(
    dev: DeviceRecord, *, online: bool, free_slots: int, job_ids: Sequence[str]
) -> pb.Device:
    return pb.Device(
        id=dev.id,
        kind=kind_pb(dev.kind),
        capabilities=[target_pb(t) for t in dev.capabilities],
        slots=dev.slots,
        per_account_slots=dev.per_account_slots,
        free_slots=free_slots,
        last_seen_at=ts(dev.last_seen_at),
        state=pb.DEVICE_STATE_ONLINE if online else pb.DEVICE_STATE_OFFLINE,
        logins=[
            pb.LoginBadge(
                target=target_pb(t), state=login_state_pb(state), checked_at=ts(at), message=msg
            )
            for t, (state, at, msg) in sorted(dev.logins.items())
        ],
        job_ids=list(job_ids),
    )


def audit_pb(ev: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        seq=ev.seq,
        at=ts(ev.at),
        action=ev.action,
        subject_id=ev.subject_id,
        actor=ev.actor,
        details_json=ev.details_json(),
        execution_time_ms=ev.execution_time_ms,
    )


def gate_pb(view: GateView) -> pb.RateLimitGate:
    return pb.RateLimitGate(
        target=target_pb(view.target),
        closed=view.closed,
        closed_until=ts(view.closed_until) if view.closed else None,
        reason=view.reason,
        hits=view.hits,
        quota_limit=view.quota_limit,
        quota_window_seconds=int(view.quota_window_s),
        quota_used=view.quota_used,
    )


def coordinator_message_pb(out: o.Outbound, traceparent: str = "") -> wg.CoordinatorMessage:
    """The wire message for what the core tells a worker; `traceparent` only for an Assign (its
    attempt's span, which the actor starts when the lease is committed). One dict lookup per
    message: this runs for every message the coordinator sends."""
    if type(out) is o.Assign:
        return wg.CoordinatorMessage(assign=_assign_pb(out, traceparent))
    return _TO_WIRE[type(out)](out)


def _heartbeat_ack(out: o.HeartbeatAck) -> wg.CoordinatorMessage:
    ack = wg.HeartbeatAck(seq=out.seq, lease_deadline_unix_ms=_ms(out.lease_deadline))
    return wg.CoordinatorMessage(heartbeat_ack=ack)


def _commit_grant(out: o.CommitGrant) -> wg.CoordinatorMessage:
    grant = wg.CommitGrant(
        job_id=out.job_id,
        lease_epoch=out.epoch,
        lease_deadline_unix_ms=_ms(out.lease_deadline),
    )
    return wg.CoordinatorMessage(commit_grant=grant)


def _result_ack(out: o.ResultAck) -> wg.CoordinatorMessage:
    # Spelled out: one per job result, where the generic converter below costs twice as much.
    ack = wg.ResultAck(
        job_id=out.job_id, lease_epoch=out.epoch, accepted=out.accepted, reason=out.reason
    )
    return wg.CoordinatorMessage(result_ack=ack)


def _about_a_job(
    value: type[Any], field: str, wire: Callable[..., Any]
) -> Callable[[Any], wg.CoordinatorMessage]:
    """The converter of a (rarer) value about one job: each of its fields goes to the wire
    field of the same name (`epoch` to lease_epoch), the message into CoordinatorMessage's
    `field`. The names are looked up once, here, not per message."""
    names = tuple(f.name for f in dataclasses.fields(value))
    wire_names = tuple("lease_epoch" if n == "epoch" else n for n in names)

    def convert(out: Any) -> wg.CoordinatorMessage:
        body = wire(**{w: getattr(out, n) for w, n in zip(wire_names, names, strict=True)})
        return wg.CoordinatorMessage(**{field: body})

    return convert


def _welcome(out: o.Welcome) -> wg.CoordinatorMessage:
    return wg.CoordinatorMessage(welcome=_welcome_pb(out))


_TO_WIRE: dict[type[Any], Callable[[Any], wg.CoordinatorMessage]] = {
    o.HeartbeatAck: _heartbeat_ack,
    o.CommitGrant: _commit_grant,
    o.Welcome: _welcome,
    o.ResultAck: _result_ack,
    o.CommitDeny: _about_a_job(o.CommitDeny, "commit_deny", wg.CommitDeny),
    o.Drop: _about_a_job(o.Drop, "drop", wg.Drop),
    o.Confirm: _about_a_job(o.Confirm, "confirm", wg.ConfirmJob),
    o.Cancel: _about_a_job(o.Cancel, "cancel", wg.CancelJob),
    o.ScreenshotAck: _about_a_job(o.ScreenshotAck, "screenshot_ack", wg.ScreenshotAck),
}


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _assign_pb(out: o.Assign, traceparent: str) -> wg.Assign:
    job = out.job
    return wg.Assign(
        job_id=job.id,
        lease_epoch=job.lease_epoch,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        lease_deadline_unix_ms=_ms(out.lease_deadline),
        post_id=job.post_id,
        platform=job.platform,
        account=job.account,
        text=job.text,
        media=list(job.media),
        content_hash=job.content_hash,
        platform_key=job.platform_key,
        verify_first=job.verify_first or out.verify_only,
        verify_only=out.verify_only,
        require_confirm=job.require_confirm,
        idempotency_key=job.idempotency_key,
        traceparent=traceparent,
    )


def _welcome_pb(out: o.Welcome) -> wg.Welcome:
    return wg.Welcome(
        session_id=out.session_id,
        heartbeat_interval_ms=_ms(out.heartbeat_interval_s),
        lease_ttl_ms=_ms(out.lease_ttl_s),
        resumed=[
            wg.HeldJob(job_id=h.job_id, lease_epoch=h.epoch, committed=h.committed)
            for h in out.resumed
        ],
        max_chunk_bytes=out.max_chunk_bytes,
        max_asset_bytes=out.max_asset_bytes,
        accepts_batches=True,  # WorkerMessage.batch (coordinator/gateway.py unpacks it)
    )


def error_class_from_pb(value: int) -> ErrorClass:
    # Unspecified, or a class newer than this coordinator: retryable, the safe default.
    return _ERROR_CLASSES.get(value, ErrorClass.TRANSIENT)


_ERROR_CLASSES: dict[int, ErrorClass] = {
    pb.ErrorClass.Value(f"ERROR_CLASS_{c.value}"): c for c in ErrorClass
}


def job_report_from_pb(r: wg.JobResult) -> JobReport:
    return JobReport(  # positional, in JobReport's order: one of these per result
        r.job_id,
        r.lease_epoch,
        r.success,
        r.platform_post_id,
        r.url,
        r.found_existing,
        _ERROR_CLASSES.get(r.error_class, ErrorClass.TRANSIENT),
        r.error_message,
        r.retry_at_unix_ms / 1000 if r.retry_at_unix_ms else None,
        r.quota_cap,
        r.not_created,
        r.verified_absent,
        r.failed_step,
        r.selector,
        r.execution_time_ms,
    )
