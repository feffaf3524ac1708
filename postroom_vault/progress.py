"""Pure: a post's target states → the file's frontmatter and the audit lines due.

No I/O here, so the field's shapes (statuses, per-platform fields, audit lines) are testable
without a coordinator.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from postroom.v1 import types_pb2 as pb
from postroom_vault.document import utc_text

# The HTTP-like codes the field's files show for each error class.
ERROR_CODES = {
    pb.ERROR_CLASS_RATE_LIMITED: 429,
    pb.ERROR_CLASS_AUTH_REQUIRED: 401,
    pb.ERROR_CLASS_INVALID_CONTENT: 400,
    pb.ERROR_CLASS_TRANSIENT: 504,
    pb.ERROR_CLASS_UI_CHANGED: 422,
    pb.ERROR_CLASS_DUPLICATE: 409,
}
_TERMINAL_BAD = (pb.JOB_STATUS_FAILED, pb.JOB_STATUS_NEEDS_LOGIN, pb.JOB_STATUS_CANCELLED)


@dataclass(slots=True)
class Tracking:
    """What the bridge remembers about one file beyond its frontmatter (kept in `.postroom/`)."""

    file_id: str
    post_id: str = ""
    approved_at: str = ""
    started_ms: int = 0
    executed_at: str = ""
    first_round_audited: bool = False
    audited_attempts: dict[str, int] = field(default_factory=dict)
    finished: bool = False
    # When the platforms' results last changed: the file's `last_attempt_at`, and what
    # `retry_after` counts from (so an unchanged post rewrites nothing on later passes).
    signature: str = ""
    last_attempt_at: str = ""
    last_attempt_epoch: float = 0.0


@dataclass(slots=True)
class Outcome:
    status: str
    platforms: dict[str, dict[str, Any]]
    retry_count: int
    next_retry_at: str
    round_done: bool
    # Per waiting platform: when its retry may run (epoch seconds).
    retry_until: dict[str, float] = field(default_factory=dict)


def _epoch(ts: Any) -> float:
    return float(ts.seconds) + float(ts.nanos) / 1e9


def platform_result(state: pb.TargetState, now: float) -> dict[str, Any]:
    result: dict[str, Any] = {}
    status = state.job_status
    if status == pb.JOB_STATUS_SUCCEEDED:
        result = {"success": True, "post_id": state.result_post_id, "url": state.result_url}
    elif status in _TERMINAL_BAD or state.last_error:
        result = {"success": False, "error": state.last_error or "cancelled"}
        code = ERROR_CODES.get(state.last_error_class)
        if code is not None:
            result["error_code"] = code
        if status == pb.JOB_STATUS_QUEUED and state.HasField("not_before"):
            result["retry_after"] = max(0, math.ceil(_epoch(state.not_before) - now))
    if result and state.attempt > 1:
        result["retry_attempt"] = int(state.attempt)
    return result


def outcome(post: pb.Post, names: dict[tuple[str, str], str], now: float) -> Outcome:
    """The file's view of `post`; `names` maps each target to the vault's platform name."""
    platforms: dict[str, dict[str, Any]] = {}
    waiting: list[float] = []
    retry_until: dict[str, float] = {}
    in_flight = False
    for state in post.target_states:
        name = names.get((state.target.platform, state.target.account), state.target.platform)
        result = platform_result(state, now)
        platforms[name] = result
        if not result:
            in_flight = True
        elif result.get("success") is False and state.job_status == pb.JOB_STATUS_QUEUED:
            waiting.append(_epoch(state.not_before) if state.HasField("not_before") else now)
            retry_until[name] = waiting[-1]
        elif result.get("success") is False and state.job_status not in _TERMINAL_BAD:
            in_flight = True  # leased again for its retry
    results = list(platforms.values())
    retry_count = max((int(s.attempt) for s in post.target_states), default=0)
    if post.status == pb.POST_STATUS_CANCELLED:
        status = "cancelled"
    elif results and all(r.get("success") is True for r in results):
        status = "completed"
    elif in_flight and not any(results) and post.status == pb.POST_STATUS_SCHEDULED:
        status = "scheduled"
    elif in_flight:
        status = "publishing"
    elif waiting:
        status = "partial_failure"
    else:
        status = "failed" if results else "publishing"
    next_retry = ""
    if status == "partial_failure" and waiting:
        next_retry = utc_text(dt.datetime.fromtimestamp(max(min(waiting), now), dt.UTC))
    return Outcome(
        status=status,
        platforms=platforms,
        retry_count=retry_count,
        next_retry_at=next_retry,
        round_done=not in_flight and bool(results),
        retry_until=retry_until,
    )


def _signature(result: Outcome) -> str:
    return repr(
        sorted(
            (name, r.get("success"), r.get("retry_attempt", 1), r.get("error_code"))
            for name, r in result.platforms.items()
        )
    )


def apply(front: dict[str, Any], result: Outcome, track: Tracking, now: dt.datetime) -> None:
    """Write `result` into the frontmatter, in the shapes of the field's files."""
    stamp = utc_text(now)
    signature = _signature(result)
    if result.round_done and signature != track.signature:
        track.signature = signature
        track.last_attempt_at = stamp
        track.last_attempt_epoch = now.timestamp()
    attempt_at = track.last_attempt_epoch or now.timestamp()
    for name, r in result.platforms.items():
        if "retry_after" in r and name in result.retry_until:
            r["retry_after"] = max(0, math.ceil(result.retry_until[name] - attempt_at))
    front["status"] = result.status
    front["approved_at"] = track.approved_at or front.get("approved_at") or stamp
    front["platforms"] = result.platforms
    front["retry_count"] = result.retry_count
    for key in ("last_attempt_at", "executed_at", "completed_at", "next_retry_at"):
        front.pop(key, None)
    if result.status == "completed":
        front["executed_at"] = track.executed_at or stamp
        front["completed_at"] = stamp
    elif result.status in ("partial_failure", "failed", "cancelled"):
        if result.round_done:
            front["last_attempt_at"] = track.last_attempt_at or stamp
        if result.next_retry_at:
            front["next_retry_at"] = result.next_retry_at


def audit_lines(
    file_id: str,
    result: Outcome,
    track: Tracking,
    *,
    actor: str,
    now: dt.datetime,
    now_ms: int,
) -> list[dict[str, Any]]:
    """Audit lines due now (and marks them done in `track`): one `social_media_post` when the
    first round is over, one `social_media_post_retry` per platform and attempt after that."""
    lines: list[dict[str, Any]] = []
    elapsed = max(0, now_ms - track.started_ms)
    stamp = utc_text(now)
    if not track.first_round_audited:
        if not result.round_done:
            return lines
        track.first_round_audited = True
        track.executed_at = stamp
        for name, r in result.platforms.items():
            track.audited_attempts[name] = int(r.get("retry_attempt", 1))
        line: dict[str, Any] = {
            "timestamp": stamp,
            "action_type": "social_media_post",
            "action_id": file_id,
            "actor": actor,
            "platforms": list(result.platforms),
            "status": result.status,
        }
        for name, r in result.platforms.items():
            entry: dict[str, Any] = {"success": bool(r.get("success"))}
            for key in ("post_id", "error", "error_code"):
                if key in r:
                    entry[key] = r[key]
            line[name] = entry
        line["execution_time_ms"] = elapsed
        return [line]
    for name, r in result.platforms.items():
        attempt = int(r.get("retry_attempt", 1))
        settled = r.get("success") is True or (r and result.status in ("failed", "cancelled"))
        if not settled or attempt <= track.audited_attempts.get(name, 1):
            continue
        track.audited_attempts[name] = attempt
        retry: dict[str, Any] = {
            "timestamp": stamp,
            "action_type": "social_media_post_retry",
            "action_id": file_id,
            "actor": actor,
            "platform": name,
            "status": "success" if r.get("success") else "failed",
        }
        for key in ("post_id", "error", "error_code"):
            if key in r:
                retry[key] = r[key]
        retry["retry_attempt"] = attempt
        retry["execution_time_ms"] = elapsed
        lines.append(retry)
    return lines
