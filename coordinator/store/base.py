"""The narrow store interface. Two real backends (SQLite now, PostgreSQL later) and a fake.

Reads return fresh copies; the caller owns them. Every write goes through `apply(batch)`, which is
atomic: either the whole batch lands or none of it. Job and post updates in a batch are
compare-and-set: the stored row must still have one of `expected_statuses` (and, for jobs, the
`expected_epoch`), else the batch is rolled back and ConcurrentUpdate names the row that moved.
Batches are how the lease actor group-commits many protocol events in one transaction.

Post tasks (PostgreSQL only, several coordinators): what one coordinator asks the owner of a
shard to do about a post (create the jobs of its targets there, cancel them...). A batch inserts
them for any shard and deletes, once done, those of shards it holds (store/shards.py: Fence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from coordinator.access.records import DeviceEnrollment, OperatorToken
from coordinator.domain import (
    AuditEvent,
    DeviceRecord,
    GateRecord,
    Job,
    JobStatus,
    Post,
    PostStatus,
    Run,
    ScreenshotRecord,
    StepLogEntry,
)
from coordinator.errors import StoreError

# (created_at, id) of the last row a page showed: the next page starts after it.
Cursor = tuple[float, str]


@dataclass(frozen=True, slots=True)
class JobFilter:
    status: JobStatus | None = None
    platform: str = ""
    account: str = ""
    post_id: str = ""
    device_id: str = ""


@dataclass(slots=True)
class JobWrite:
    """Replace the stored job with `job`, if it is still in expected_statuses at expected_epoch."""

    job: Job
    expected_statuses: frozenset[JobStatus]
    expected_epoch: int


@dataclass(slots=True)
class PostWrite:
    """Replace the stored post with `post`, if it is still in one of expected_statuses."""

    post: Post
    expected_statuses: frozenset[PostStatus]


@dataclass(frozen=True, slots=True)
class PostTask:
    """Work on a post for the owner of `shard`. kind: "intake" (jobs of its targets there should
    exist), "schedule", "cancel", "refresh" (content or approval changed), "delete". `args` must
    be JSON-able. `id` and `created_at` are the store's (0 when new: the server's clock then)."""

    shard: int
    post_id: str
    kind: str
    args: Mapping[str, Any] = field(default_factory=dict)
    id: int = 0
    created_at: float = 0.0


@dataclass(slots=True)
class WriteBatch:
    new_posts: list[Post] = field(default_factory=list)
    post_writes: list[PostWrite] = field(default_factory=list)
    # Inserted; a clash on idempotency_key (or id) raises ConcurrentUpdate.
    new_jobs: list[Job] = field(default_factory=list)
    job_writes: list[JobWrite] = field(default_factory=list)
    # Inserted, or replaced by id (logs and screenshots of a run are appended separately).
    runs: list[Run] = field(default_factory=list)
    logs: list[tuple[str, StepLogEntry]] = field(default_factory=list)  # (run_id, entry)
    screenshots: list[tuple[str, ScreenshotRecord]] = field(default_factory=list)
    audits: list[AuditEvent] = field(default_factory=list)
    devices: list[DeviceRecord] = field(default_factory=list)  # upsert by id
    gates: list[GateRecord] = field(default_factory=list)  # upsert by target
    operator_tokens: list[OperatorToken] = field(default_factory=list)  # upsert by id
    enrollments: list[DeviceEnrollment] = field(default_factory=list)  # upsert by name
    # Posts removed with their jobs, runs, step logs and screenshot rows (DeletePost); applied
    # after every other write of the batch. Audit entries are never removed.
    deleted_posts: list[str] = field(default_factory=list)
    # Post tasks (PostgreSQL only): inserted, each shard notified at commit; done ones deleted
    # by id (as pending_post_tasks read them: their shard must be held).
    post_tasks: list[PostTask] = field(default_factory=list)
    done_post_tasks: list[PostTask] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(
            (
                self.new_posts,
                self.post_writes,
                self.new_jobs,
                self.job_writes,
                self.runs,
                self.logs,
                self.screenshots,
                self.audits,
                self.devices,
                self.gates,
                self.operator_tokens,
                self.enrollments,
                self.deleted_posts,
                self.post_tasks,
                self.done_post_tasks,
            )
        )

    def extend(self, other: WriteBatch) -> None:
        self.new_posts += other.new_posts
        self.post_writes += other.post_writes
        self.new_jobs += other.new_jobs
        self.job_writes += other.job_writes
        self.runs += other.runs
        self.logs += other.logs
        self.screenshots += other.screenshots
        self.audits += other.audits
        self.devices += other.devices
        self.gates += other.gates
        self.operator_tokens += other.operator_tokens
        self.enrollments += other.enrollments
        self.deleted_posts += other.deleted_posts
        self.post_tasks += other.post_tasks
        self.done_post_tasks += other.done_post_tasks

    @property
    def has_post_tasks(self) -> bool:
        return bool(self.post_tasks or self.done_post_tasks)


def refuse_post_tasks(batch: WriteBatch) -> None:
    """What a store of one coordinator (SQLite, memory) says to a batch with post tasks."""
    if batch.has_post_tasks:
        raise StoreError("post tasks need PostgreSQL (several coordinators)")


class Store(Protocol):
    async def open(self) -> None:
        """Connect and run pending migrations."""
        ...

    async def close(self) -> None: ...

    async def apply(self, batch: WriteBatch) -> None:
        """Atomically write the batch (see module docstring); audit events get their seq here."""
        ...

    async def get_post(self, post_id: str) -> Post:
        """Raises NotFound."""
        ...

    async def list_posts(
        self, *, status: PostStatus | None, limit: int, offset: int, before: Cursor | None = None
    ) -> list[Post]:
        """Newest first (created_at desc, id desc); with `before`, only posts after that one in
        this order (a cursor: posts created meanwhile do not shift the page)."""
        ...

    async def get_job(self, job_id: str) -> Job:
        """Raises NotFound."""
        ...

    async def get_job_by_key(self, idempotency_key: str) -> Job | None: ...

    async def jobs_for_post(self, post_id: str) -> list[Job]:
        """Oldest first."""
        ...

    async def jobs_for_posts(self, post_ids: Sequence[str]) -> list[Job]:
        """The jobs of all these posts, oldest first (one read for a page of posts)."""
        ...

    async def list_jobs(
        self, flt: JobFilter, *, limit: int, offset: int, before: Cursor | None = None
    ) -> list[Job]:
        """Newest first (created_at desc, id desc); `before` as for list_posts."""
        ...

    async def load_active_jobs(self) -> list[Job]:
        """Every job not SUCCEEDED/FAILED/CANCELLED: what the lease actor loads on start-up."""
        ...

    async def get_runs(self, job_id: str) -> list[Run]:
        """Runs of a job, oldest first, each with its logs and screenshots in order."""
        ...

    async def list_audit(
        self, *, since: float | None, subject_id: str, action: str, after_seq: int, limit: int
    ) -> list[AuditEvent]:
        """Oldest first (seq asc)."""
        ...

    async def last_audit_seq(self) -> int:
        """The seq of the newest audit event; 0 when there is none."""
        ...

    async def list_devices(self) -> list[DeviceRecord]: ...

    async def list_gates(self) -> list[GateRecord]: ...

    async def count_jobs(self) -> Mapping[tuple[JobStatus, str], int]:
        """Number of jobs per (status, platform): seeds the postroom_jobs gauge."""
        ...

    async def count_commits_since(self, platform: str, account: str, since: float) -> int:
        """Runs of that target granted a commit permit at or after `since` (rebuilds quotas)."""
        ...

    async def list_operator_tokens(self) -> list[OperatorToken]:
        """Every operator token, revoked ones too, oldest first."""
        ...

    async def list_enrollments(self) -> list[DeviceEnrollment]:
        """Every device enrollment, revoked ones too, by name."""
        ...
