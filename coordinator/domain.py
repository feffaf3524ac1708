"""The coordinator's domain: posts, jobs, runs, devices, audit events, as plain values.

Times are float seconds since the Unix epoch (what Clock.now() returns). Enums are StrEnums whose
values are what the store persists; the wire enums of postroom.v1 are mapped in convert.py.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import entry_points
from typing import Any

# Platforms the coordinator accepts targets for. Workers advertise which of these they serve.
# Besides the built-in ones: any an installed package adds through the `postroom.adapters`
# entry-point group (README: "Add a platform"), read from package metadata only (the coordinator
# never imports an adapter).
KNOWN_PLATFORMS: frozenset[str] = frozenset(
    {"sandbox", "x", "instagram", "facebook", "linkedin", "mastodon", "bluesky", "spirit"}
) | frozenset(ep.name.lower() for ep in entry_points(group="postroom.adapters"))
DEFAULT_MAX_ATTEMPTS = 3
# The sandbox's text limit (content_rules.py has each real platform's own).
MAX_TEXT_CHARS = 10_000
# No post is longer, whatever its targets or --text-limit say (Facebook's 63,206 fits; a request
# stays far under the gRPC message limit).
MAX_ANY_TEXT_CHARS = 100_000


class PostStatus(enum.StrEnum):
    DRAFT = "DRAFT"
    PENDING_APPROVAL = "PENDING_APPROVAL"
    APPROVED = "APPROVED"
    SCHEDULED = "SCHEDULED"
    PUBLISHING = "PUBLISHING"
    PUBLISHED = "PUBLISHED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class JobStatus(enum.StrEnum):
    QUEUED = "QUEUED"
    CLAIMED = "CLAIMED"
    RUNNING = "RUNNING"
    AWAITING_CONFIRM = "AWAITING_CONFIRM"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    NEEDS_LOGIN = "NEEDS_LOGIN"
    CANCELLED = "CANCELLED"


# A job in one of these holds a lease on a device.
LEASED_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.CLAIMED, JobStatus.RUNNING, JobStatus.AWAITING_CONFIRM}
)
TERMINAL_JOB_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)
# Jobs the coordinator keeps in memory (not terminal). FAILED jobs can be retried by an operator,
# which loads them back.
ACTIVE_JOB_STATUSES: frozenset[JobStatus] = frozenset(JobStatus) - TERMINAL_JOB_STATUSES


class ErrorClass(enum.StrEnum):
    RATE_LIMITED = "RATE_LIMITED"
    AUTH_REQUIRED = "AUTH_REQUIRED"
    INVALID_CONTENT = "INVALID_CONTENT"
    TRANSIENT = "TRANSIENT"
    UI_CHANGED = "UI_CHANGED"
    DUPLICATE = "DUPLICATE"


class LoginState(enum.StrEnum):
    UNKNOWN = "UNKNOWN"
    LOGGED_IN = "LOGGED_IN"
    NEEDS_LOGIN = "NEEDS_LOGIN"


class WorkerKind(enum.StrEnum):
    API = "api"
    BROWSER = "browser"


@dataclass(frozen=True, slots=True, order=True)
class Target:
    platform: str
    account: str

    def __str__(self) -> str:
        return f"{self.platform}:{self.account}"


@dataclass(slots=True)
class Post:
    id: str
    text: str
    media: tuple[str, ...]
    targets: tuple[Target, ...]
    scheduled_at: float | None
    status: PostStatus
    content_hash: str
    created_at: float
    updated_at: float
    approved_hash: str = ""
    approved_by: str = ""
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    require_confirm: bool = False


@dataclass(slots=True)
class Job:
    id: str
    post_id: str
    platform: str
    account: str
    status: JobStatus
    idempotency_key: str
    platform_key: str
    content_hash: str
    text: str
    media: tuple[str, ...]
    scheduled_at: float
    created_at: float
    updated_at: float
    not_before: float
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    attempt: int = 0
    rate_limited_count: int = 0
    # Attempts of a job in doubt (verify_first) whose lease ended before they came back, without
    # a permit of their own: they told nothing about the platform, so they do not count.
    lost_looks: int = 0
    lease_epoch: int = 0
    device_id: str = ""
    lease_expires_at: float | None = None
    # The lease epoch whose run was granted the commit permit (0: none). When the lease of that
    # epoch is lost, the job is in doubt and its next run must verify first.
    committed_epoch: int = 0
    verify_first: bool = False
    require_confirm: bool = False
    last_error_class: ErrorClass | None = None
    last_error: str = ""
    result_post_id: str = ""
    result_url: str = ""
    # Who recorded it as published by hand (ResolveJob); empty when postroom published it.
    resolved_by: str = ""

    @property
    def target(self) -> Target:
        return Target(self.platform, self.account)

    @property
    def counted_attempts(self) -> int:
        """Attempts that count against max_attempts (rate-limited ones and lost looks do not)."""
        return self.attempt - self.rate_limited_count - self.lost_looks


@dataclass(slots=True)
class StepLogEntry:
    step: str
    level: str  # "DEBUG" | "INFO" | "WARNING" | "ERROR"
    message: str
    at: float


@dataclass(slots=True)
class ScreenshotRecord:
    asset_id: str
    label: str
    size_bytes: int
    content_type: str
    at: float


@dataclass(slots=True)
class Run:
    id: str
    job_id: str
    attempt: int
    device_id: str
    lease_epoch: int
    started_at: float
    ended_at: float | None = None
    outcome: str = "running"
    error_class: ErrorClass | None = None
    error: str = ""
    committed: bool = False
    failed_step: str = ""
    logs: list[StepLogEntry] = field(default_factory=list)
    screenshots: list[ScreenshotRecord] = field(default_factory=list)


@dataclass(slots=True)
class AuditEvent:
    action: str
    subject_id: str
    actor: str
    at: float
    details: Mapping[str, Any] = field(default_factory=dict)
    execution_time_ms: int = 0
    seq: int = 0  # assigned by the store

    def details_json(self) -> str:
        return json.dumps(dict(self.details), sort_keys=True, default=str)


@dataclass(slots=True)
class DeviceRecord:
    id: str
    kind: WorkerKind
    capabilities: tuple[Target, ...]
    slots: int
    last_seen_at: float
    version: str = ""
    # Login badge per target: (state, checked_at, message).
    logins: dict[Target, tuple[LoginState, float, str]] = field(default_factory=dict)
    # Jobs of one (platform, account) it runs at once; 0: no bound beyond slots.
    per_account_slots: int = 0


@dataclass(slots=True)
class GateRecord:
    """Persisted part of a rate-limit gate (quota counters are rebuilt from the jobs)."""

    target: Target
    closed_until: float
    reason: str
    hits: int


def content_hash(text: str, media: Iterable[str]) -> str:
    """sha256 over the content an approver reviews; approval is bound to it."""
    payload = json.dumps({"text": text, "media": list(media)}, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def iso_utc(ts: float) -> str:
    # Clamped to what datetime holds: keys and summaries never fail on a stray time (the edge
    # refuses times outside 1970-2100; this keeps the core total for anything stored earlier).
    if not -62_135_596_800 <= ts <= 253_402_300_799:
        ts = -62_135_596_800 if ts < 0 else 253_402_300_799
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def idempotency_key(post_id: str, target: Target, scheduled_at: float) -> str:
    """design.md's "{post_id}:{platform}:{scheduled_at}", with the account beside the platform:
    a job is one per (post, platform, account), so two accounts on one platform need two keys."""
    return f"{post_id}:{target.platform}/{target.account}:{iso_utc(scheduled_at)}"


def platform_key(post_id: str, target: Target, content_hash_hex: str) -> str:
    """The key sent to the platform on every attempt and used to look the post up again.

    Derived from (post, platform, account, content hash) and stored with the job before the
    first send, so a re-run after a lost lease asks the platform with the very same key.
    """
    raw = f"{post_id}|{target.platform}|{target.account}|{content_hash_hex}"
    return "pr-" + hashlib.sha256(raw.encode()).hexdigest()[:32]
