"""Row <-> dataclass mapping for the SQL backends.

`*_params` turn a domain value into the dict of named parameters its queries bind (keys are the
column names); `*_from_row` build a fresh value back from a row read by column name. Tuples,
lists and mappings travel as JSON text, booleans as 0/1, enums as their values.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from coordinator.domain import (
    AuditEvent,
    DeviceRecord,
    ErrorClass,
    GateRecord,
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

Params = dict[str, Any]


class Row(Protocol):
    """What sqlite3.Row (and asyncpg's Record) offer: a column by name."""

    def __getitem__(self, key: str, /) -> Any: ...


# One encoder each, made once: json.dumps() with options builds a JSONEncoder on every call
# (a third of its cost for the small values stored several times per job).
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# What AuditEvent.details_json() writes (json.dumps(..., sort_keys=True, default=str)).
_AUDIT_DETAILS = json.JSONEncoder(sort_keys=True, default=str)


def dumps(value: Any) -> str:
    # Compact and stable: these are stored once per write on the hot path.
    return _COMPACT.encode(value)


def _list_json(values: tuple[str, ...]) -> str:
    return _COMPACT.encode(list(values)) if values else "[]"


def targets_json(targets: tuple[Target, ...]) -> str:
    return dumps([{"platform": t.platform, "account": t.account} for t in targets])


def targets_from_json(text: str) -> tuple[Target, ...]:
    return tuple(Target(t["platform"], t["account"]) for t in json.loads(text))


def _error_class(value: str | None) -> ErrorClass | None:
    return None if value is None else ErrorClass(value)


def post_params(post: Post) -> Params:
    return {
        "id": post.id,
        "text": post.text,
        "media": _list_json(post.media),
        "targets": targets_json(post.targets),
        "scheduled_at": post.scheduled_at,
        "status": post.status.value,
        "content_hash": post.content_hash,
        "created_at": post.created_at,
        "updated_at": post.updated_at,
        "approved_hash": post.approved_hash,
        "approved_by": post.approved_by,
        "max_attempts": post.max_attempts,
        "require_confirm": int(post.require_confirm),
    }


def post_from_row(row: Row) -> Post:
    return Post(
        id=row["id"],
        text=row["text"],
        media=tuple(json.loads(row["media"])),
        targets=targets_from_json(row["targets"]),
        scheduled_at=row["scheduled_at"],
        status=PostStatus(row["status"]),
        content_hash=row["content_hash"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        approved_hash=row["approved_hash"],
        approved_by=row["approved_by"],
        max_attempts=row["max_attempts"],
        require_confirm=bool(row["require_confirm"]),
    )


def job_params(job: Job) -> Params:
    return {
        "id": job.id,
        "post_id": job.post_id,
        "platform": job.platform,
        "account": job.account,
        "status": job.status.value,
        "idempotency_key": job.idempotency_key,
        "platform_key": job.platform_key,
        "content_hash": job.content_hash,
        "text": job.text,
        "media": _list_json(job.media),
        "scheduled_at": job.scheduled_at,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "not_before": job.not_before,
        "max_attempts": job.max_attempts,
        "attempt": job.attempt,
        "rate_limited_count": job.rate_limited_count,
        "lease_epoch": job.lease_epoch,
        "device_id": job.device_id,
        "lease_expires_at": job.lease_expires_at,
        "committed_epoch": job.committed_epoch,
        "verify_first": int(job.verify_first),
        "require_confirm": int(job.require_confirm),
        "last_error_class": None if job.last_error_class is None else job.last_error_class.value,
        "last_error": job.last_error,
        "result_post_id": job.result_post_id,
        "result_url": job.result_url,
        "resolved_by": job.resolved_by,
        "lost_looks": job.lost_looks,
    }


def job_from_row(row: Row) -> Job:
    return Job(
        id=row["id"],
        post_id=row["post_id"],
        platform=row["platform"],
        account=row["account"],
        status=JobStatus(row["status"]),
        idempotency_key=row["idempotency_key"],
        platform_key=row["platform_key"],
        content_hash=row["content_hash"],
        text=row["text"],
        media=tuple(json.loads(row["media"])),
        scheduled_at=row["scheduled_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        not_before=row["not_before"],
        max_attempts=row["max_attempts"],
        attempt=row["attempt"],
        rate_limited_count=row["rate_limited_count"],
        lease_epoch=row["lease_epoch"],
        device_id=row["device_id"],
        lease_expires_at=row["lease_expires_at"],
        committed_epoch=row["committed_epoch"],
        verify_first=bool(row["verify_first"]),
        require_confirm=bool(row["require_confirm"]),
        last_error_class=_error_class(row["last_error_class"]),
        last_error=row["last_error"],
        result_post_id=row["result_post_id"],
        result_url=row["result_url"],
        resolved_by=row["resolved_by"],
        lost_looks=row["lost_looks"],
    )


def run_params(run: Run) -> Params:
    """The run's own columns; its logs and screenshots are separate rows."""
    return {
        "id": run.id,
        "job_id": run.job_id,
        "attempt": run.attempt,
        "device_id": run.device_id,
        "lease_epoch": run.lease_epoch,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "outcome": run.outcome,
        "error_class": None if run.error_class is None else run.error_class.value,
        "error": run.error,
        "committed": int(run.committed),
        "failed_step": run.failed_step,
    }


def run_from_row(row: Row) -> Run:
    return Run(
        id=row["id"],
        job_id=row["job_id"],
        attempt=row["attempt"],
        device_id=row["device_id"],
        lease_epoch=row["lease_epoch"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        outcome=row["outcome"],
        error_class=_error_class(row["error_class"]),
        error=row["error"],
        committed=bool(row["committed"]),
        failed_step=row["failed_step"],
    )


def log_params(run_id: str, entry: StepLogEntry) -> Params:
    return {
        "run_id": run_id,
        "step": entry.step,
        "level": entry.level,
        "message": entry.message,
        "at": entry.at,
    }


def log_from_row(row: Row) -> StepLogEntry:
    return StepLogEntry(step=row["step"], level=row["level"], message=row["message"], at=row["at"])


def screenshot_params(run_id: str, shot: ScreenshotRecord) -> Params:
    return {
        "run_id": run_id,
        "asset_id": shot.asset_id,
        "label": shot.label,
        "size_bytes": shot.size_bytes,
        "content_type": shot.content_type,
        "at": shot.at,
    }


def screenshot_from_row(row: Row) -> ScreenshotRecord:
    return ScreenshotRecord(
        asset_id=row["asset_id"],
        label=row["label"],
        size_bytes=row["size_bytes"],
        content_type=row["content_type"],
        at=row["at"],
    )


def audit_params(event: AuditEvent) -> Params:
    """Without seq: the store assigns it."""
    return {
        "at": event.at,
        "action": event.action,
        "subject_id": event.subject_id,
        "actor": event.actor,
        "details_json": _AUDIT_DETAILS.encode(dict(event.details)),
        "execution_time_ms": event.execution_time_ms,
    }


def audit_from_row(row: Row) -> AuditEvent:
    return AuditEvent(
        action=row["action"],
        subject_id=row["subject_id"],
        actor=row["actor"],
        at=row["at"],
        details=json.loads(row["details_json"]),
        execution_time_ms=row["execution_time_ms"],
        seq=row["seq"],
    )


def device_params(device: DeviceRecord) -> Params:
    logins = [
        {
            "platform": t.platform,
            "account": t.account,
            "state": state.value,
            "checked_at": checked_at,
            "message": message,
        }
        for t, (state, checked_at, message) in sorted(device.logins.items())
    ]
    return {
        "id": device.id,
        "kind": device.kind.value,
        "capabilities": targets_json(device.capabilities),
        "slots": device.slots,
        "last_seen_at": device.last_seen_at,
        "version": device.version,
        "logins": dumps(logins),
        "per_account_slots": device.per_account_slots,
    }


def device_from_row(row: Row) -> DeviceRecord:
    logins = {
        Target(e["platform"], e["account"]): (LoginState(e["state"]), e["checked_at"], e["message"])
        for e in json.loads(row["logins"])
    }
    return DeviceRecord(
        id=row["id"],
        kind=WorkerKind(row["kind"]),
        capabilities=targets_from_json(row["capabilities"]),
        slots=row["slots"],
        last_seen_at=row["last_seen_at"],
        version=row["version"],
        logins=logins,
        per_account_slots=row["per_account_slots"],
    )


def gate_params(gate: GateRecord) -> Params:
    return {
        "platform": gate.target.platform,
        "account": gate.target.account,
        "closed_until": gate.closed_until,
        "reason": gate.reason,
        "hits": gate.hits,
    }


def gate_from_row(row: Row) -> GateRecord:
    return GateRecord(
        target=Target(row["platform"], row["account"]),
        closed_until=row["closed_until"],
        reason=row["reason"],
        hits=row["hits"],
    )
