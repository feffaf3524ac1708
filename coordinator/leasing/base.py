"""The lease core's state and the checked transitions every part of it uses.

LeaseCore (core.py) is one object split along its seams: this base holds the state and the
transition helpers; AttemptOutcomes (outcomes.py) ends attempts (results, retries, recovery);
OperatorActions (operator.py) are the operators' commands and the confirmation timeout;
ManualActions (manual.py) records what a person did by hand; Intake (intake.py) loads, adds and
settles posts; Scheduling (scheduling.py) takes in, schedules, cancels and deletes a post's
jobs; core.py has sessions, worker messages, time and dispatch. Only LeaseCore is instantiated.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable

from coordinator.domain import (
    AuditEvent,
    DeviceRecord,
    Job,
    JobStatus,
    Post,
    PostStatus,
    Run,
    Target,
)
from coordinator.errors import NotFound
from coordinator.gates import GateBook
from coordinator.leasing import outbound as o
from coordinator.leasing.copies import snapshot
from coordinator.leasing.effects import Effects
from coordinator.leasing.postbook import PostBook
from coordinator.leasing.queue import ReadyQueue
from coordinator.leasing.scope import ShardScope
from coordinator.leasing.state import SYSTEM, Lease, LeaseConfig, Session
from coordinator.retry import (
    RetryPolicies,
)
from coordinator.store.base import JobWrite
from coordinator.transitions import check_job


class CoreBase(abc.ABC):
    def __init__(
        self,
        *,
        config: LeaseConfig,
        gates: GateBook,
        retry: RetryPolicies,
        new_id: Callable[[str], str],
        rand: Callable[[], float],
        scope: ShardScope | None = None,
        derive_post_status: bool = True,
    ) -> None:
        """`scope`: the shards whose jobs this core holds (default: all of them).
        `derive_post_status` False: the store derives posts' statuses from all their jobs, in
        every shard, inside each batch; this core holds only some of them, so it writes none."""
        self.config = config
        self.gates = gates
        self.retry = retry
        self._new_id = new_id
        self._rand = rand
        self.scope = scope or ShardScope()
        self.jobs: dict[str, Job] = {}  # every job of every open post (in the scope's shards)
        # posts with at least one unfinished job
        self.book = PostBook(derive_status=derive_post_status)
        self.sessions: dict[str, Session] = {}
        self.leases: dict[str, Lease] = {}
        self.devices: dict[str, DeviceRecord] = {}
        self.queue = ReadyQueue()
        self.force_gate: set[str] = set()  # jobs an operator retried with --force
        # job -> (epoch, device) of the run last granted a commit permit: only that device may
        # report a late success for that epoch (a forged epoch from another stream is refused).
        self._committed_by: dict[str, tuple[int, str]] = {}
        # When dispatch() last ran: a job due by then and still queued waits for a free slot (an
        # event), not for the timer, which would otherwise spin on its past due time.
        self._dispatched_at = float("-inf")
        # (last_heartbeat, session id) per heartbeat, a min-heap cleaned lazily: its first live
        # entry is the oldest session's, so next_wakeup() is O(log n), not O(sessions), per call.
        self._beats: list[tuple[float, str]] = []

    @property
    def posts(self) -> dict[str, Post]:
        """Posts with at least one unfinished job (owned by the PostBook)."""
        return self.book.posts

    @property
    def post_jobs(self) -> dict[str, set[str]]:
        return self.book.post_jobs

    def track(self, job: Job) -> None:
        self.jobs[job.id] = job
        self.book.track(job)

    def _new_run(self, job: Job, now: float) -> Run:
        """The run of the job's current attempt under its current lease, on its device."""
        return Run(
            id=self._new_id("r"),
            job_id=job.id,
            attempt=job.attempt,
            device_id=job.device_id,
            lease_epoch=job.lease_epoch,
            started_at=now,
        )

    def _held(self, job: Job) -> bool:
        """A job whose content no longer matches the post's approval is never handed out, nor
        one of a cancelled post, unless it is in doubt: then it may still go out to look."""
        post = self.posts.get(job.post_id)
        if post is None:
            return True
        if post.status is PostStatus.CANCELLED:
            return not job.verify_first
        return post.approved_hash != job.content_hash

    def _post_cancelled(self, job: Job) -> bool:
        post = self.posts.get(job.post_id)
        return post is not None and post.status is PostStatus.CANCELLED

    def _lease_of(self, session_id: str, job_id: str, epoch: int) -> Lease | None:
        lease = self.leases.get(job_id)
        if lease is None or lease.epoch != epoch or lease.session_id != session_id:
            return None
        return lease

    def _drop(self, fx: Effects, session_id: str, job_id: str, epoch: int, reason: str) -> None:
        fx.send(session_id, o.Drop(job_id, epoch, reason))

    def _stale_reason(self, job_id: str, epoch: int) -> str:
        lease = self.leases.get(job_id)
        if job_id not in self.jobs:
            return f"job {job_id} is not leased to you (unknown or finished)"
        if lease is None:
            return f"job {job_id} is {self.jobs[job_id].status.value}; your lease is gone"
        return f"stale lease epoch {epoch}; the job's current epoch is {lease.epoch}"

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        return job

    # ---- transitions ---------------------------------------------------------------------

    def _actor(self, session_id: str | None) -> str:
        session = self.sessions.get(session_id or "")
        return f"device:{session.device_id}" if session else SYSTEM

    def _write(
        self, fx: Effects, job: Job, expected: Iterable[JobStatus], epoch: int, now: float
    ) -> None:
        job.updated_at = now
        copy = snapshot(job)  # read-only from here: one copy serves both
        fx.batch.job_writes.append(JobWrite(copy, frozenset(expected), epoch))
        fx.changed_jobs[job.id] = copy
        self.book.touch(job.post_id)

    def _move(
        self,
        fx: Effects,
        job: Job,
        new: JobStatus,
        now: float,
        *,
        actor: str = SYSTEM,
        action: str = "",
        details: dict[str, object] | None = None,
        execution_time_ms: int = 0,
    ) -> None:
        """One checked transition: table check, compare-and-set write, audit."""
        old = job.status
        check_job(job.id, old, new)
        job.status = new
        self._write(fx, job, {old}, job.lease_epoch, now)
        fx.batch.audits.append(
            AuditEvent(
                action or f"JOB_{new.value}",
                job.id,
                actor,
                now,
                {"from": old.value, "to": new.value, **(details or {})},
                execution_time_ms,
            )
        )

    def _end_lease(self, job: Job) -> Lease | None:
        job.lease_expires_at = None  # device_id stays: the last device that ran it
        lease = self.leases.pop(job.id, None)
        if lease is not None:
            if lease.session_id is not None and lease.session_id in self.sessions:
                self.sessions[lease.session_id].jobs.discard(job.id)
            self.gates.lease_ended(job.target, job.id)
        return lease

    def _full_accounts(self, session: Session) -> set[Target]:
        """The session's (platform, account)s holding per_account jobs already: whatever their
        state (claimed, running, awaiting confirmation, committing). Only for sessions with a
        bound, so the common case (0) costs nothing; O(the session's jobs) otherwise."""
        counts: dict[Target, int] = {}
        for job_id in session.jobs:
            job = self.jobs.get(job_id)
            if job is not None:
                counts[job.target] = counts.get(job.target, 0) + 1
        for job_id, epoch in list(session.lingering.items()):
            lease = self.leases.get(job_id)
            if lease is None or lease.epoch != epoch or lease.session_id is not None:
                del session.lingering[job_id]  # ended, rerun or resumed: no longer lingering
            else:
                target = self.jobs[job_id].target
                counts[target] = counts.get(target, 0) + 1
        return {t for t, n in counts.items() if n >= session.per_account}

    @abc.abstractmethod
    def dispatch(self, now: float) -> Effects:
        """Hand due jobs to sessions with free slots (core.py)."""


def run_row(run: Run) -> Run:
    """A copy of the run without logs/screenshots (those are appended as their own rows)."""
    copy = snapshot(run)
    copy.logs, copy.screenshots = [], []
    return copy
