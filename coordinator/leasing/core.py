"""The lease protocol core: sessions, leases, fencing epochs, commit permits, results, recovery.

Pure state machine: every method takes the current time, mutates only this object's state and
returns Effects (a write batch plus messages to send, in that order). It never touches a socket,
the database or the clock, so the protocol is unit- and property-tested without gRPC
(tests/test_lease_core_props.py). One LeaseCore is owned by the coordinator's actor.

Invariants it keeps:
- a job has at most one live lease (one session, one epoch); every lease bumps lease_epoch;
- a message whose (job_id, lease_epoch) is not the job's current lease is refused (Drop/Deny);
- a commit permit is granted only to the current lease with enough time left, and is written
  (committed_epoch) before it is sent; a lease lost after its permit makes the job verify_first;
- a lease lost before its permit is requeued at once (the worker cannot commit without a permit).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from coordinator.domain import (
    LEASED_STATUSES,
    TERMINAL_JOB_STATUSES,
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
    iso_utc,
)
from coordinator.errors import FailedPrecondition, NotFound
from coordinator.gates import GateBook
from coordinator.leasing.effects import (
    AttemptEnded,
    AttemptStarted,
    CommitDecided,
    Dispatched,
    Effects,
    LeaseExpired,
    RateLimitHit,
)
from coordinator.leasing.queue import ReadyQueue
from coordinator.poststatus import derive_post_status
from coordinator.retry import (
    Fail,
    Failure,
    NeedsLogin,
    RetryAt,
    RetryPolicies,
    decide,
    decide_lease_lost,
)
from coordinator.store.base import JobWrite, PostWrite
from coordinator.transitions import check_job
from postroom.v1 import types_pb2
from postroom.v1 import worker_gateway_pb2 as wg

SYSTEM = "system"
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
DEFAULT_LEASE_TTL_S = 15.0
DEFAULT_EXPIRY_MARGIN_S = 1.0
DEFAULT_COMMIT_MIN_LEFT_S = 2.0
DEFAULT_CLAIM_TIMEOUT_S = 300.0
DEFAULT_RUN_TIMEOUT_S = 600.0
DEFAULT_MAX_CHUNK_BYTES = 256 * 1024
DEFAULT_MAX_ASSET_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    # Reassign only this long after a deadline, so a worker that stops itself at its deadline
    # is surely stopped.
    expiry_margin_s: float = DEFAULT_EXPIRY_MARGIN_S
    commit_min_left_s: float = DEFAULT_COMMIT_MIN_LEFT_S
    # Stuck recovery (the field's defaults): claimed but never started; running far too long.
    claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S
    run_timeout_s: float = DEFAULT_RUN_TIMEOUT_S
    # Leases of a coordinator that restarted are kept this long for their workers to reconnect.
    restart_grace_s: float = DEFAULT_LEASE_TTL_S
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES
    max_asset_bytes: int = DEFAULT_MAX_ASSET_BYTES


@dataclass(slots=True)
class Session:
    id: str
    device_id: str
    kind: WorkerKind
    capabilities: tuple[Target, ...]
    slots: int
    last_heartbeat: float
    jobs: set[str] = field(default_factory=set)
    draining: bool = False

    @property
    def free_slots(self) -> int:
        return 0 if self.draining else max(0, self.slots - len(self.jobs))

    def serves(self, target: Target) -> bool:
        return any(
            c.platform == target.platform and c.account in (target.account, "*")
            for c in self.capabilities
        )


@dataclass(slots=True)
class Lease:
    job_id: str
    epoch: int
    session_id: str | None  # None: orphaned (stream lost after commit, or coordinator restart)
    deadline: float
    run: Run
    confirmed: bool = False
    verify_only: bool = False  # this attempt may look for the post, never publish it


class LeaseCore:
    def __init__(
        self,
        *,
        config: LeaseConfig,
        gates: GateBook,
        retry: RetryPolicies,
        new_id: Callable[[str], str],
        rand: Callable[[], float],
    ) -> None:
        self.config = config
        self.gates = gates
        self.retry = retry
        self._new_id = new_id
        self._rand = rand
        self.jobs: dict[str, Job] = {}  # every job of every open post
        self.posts: dict[str, Post] = {}  # posts with at least one unfinished job
        self.post_jobs: dict[str, set[str]] = {}
        self.sessions: dict[str, Session] = {}
        self.leases: dict[str, Lease] = {}
        self.devices: dict[str, DeviceRecord] = {}
        self.queue = ReadyQueue()
        self.force_gate: set[str] = set()  # jobs an operator retried with --force
        self._results_since_summary: dict[str, dict[Target, Job]] = {}
        self._summary_round: dict[str, int] = {}
        self._round_started: dict[str, float] = {}
        self._dirty_posts: set[str] = set()
        # job -> (epoch, device) of the run last granted a commit permit: only that device may
        # report a late success for that epoch (a forged epoch from another stream is refused).
        self._committed_by: dict[str, tuple[int, str]] = {}
        # When dispatch() last ran: a job due by then and still queued waits for a free slot (an
        # event), not for the timer, which would otherwise spin on its past due time.
        self._dispatched_at = float("-inf")
        # (last_heartbeat, session id) per heartbeat, a min-heap cleaned lazily: its first live
        # entry is the oldest session's, so next_wakeup() is O(log n), not O(sessions), per call.
        self._beats: list[tuple[float, str]] = []

    # ---- loading and adding work ---------------------------------------------------------

    def load(
        self,
        posts: Iterable[Post],
        jobs: Iterable[Job],
        now: float,
        runs: Mapping[str, Run] | None = None,
    ) -> None:
        """Start-up: take over the open posts and their jobs. Leases of the previous process stay
        valid for restart_grace_s so their workers can reconnect and resume them by epoch.
        `runs` (job id -> its latest stored run) lets a resumed lease go on with the run the
        previous process started, instead of leaving that one "running" forever."""
        for post in posts:
            self.posts[post.id] = post
            self.post_jobs.setdefault(post.id, set())
        for job in jobs:
            self.track(job)
            if job.committed_epoch and job.committed_epoch == job.lease_epoch:
                self._committed_by[job.id] = (job.committed_epoch, job.device_id)
            if job.status in LEASED_STATUSES:
                run = Run(
                    id=self._new_id("r"),
                    job_id=job.id,
                    attempt=job.attempt,
                    device_id=job.device_id,
                    lease_epoch=job.lease_epoch,
                    started_at=now,
                    committed=job.committed_epoch == job.lease_epoch,
                )
                prev = (runs or {}).get(job.id)
                if prev is not None and prev.lease_epoch == job.lease_epoch:
                    run.id, run.started_at = prev.id, prev.started_at
                deadline = max(job.lease_expires_at or 0.0, now + self.config.restart_grace_s)
                self.leases[job.id] = Lease(job.id, job.lease_epoch, None, deadline, run)
                self.gates.lease_started(job.target, job.id)
            elif job.status is JobStatus.QUEUED:
                self.queue.push(job)

    def track(self, job: Job) -> None:
        self.jobs[job.id] = job
        self.post_jobs.setdefault(job.post_id, set()).add(job.id)

    def add_post_jobs(self, post: Post, new_jobs: Iterable[Job], now: float) -> Effects:
        """Jobs created or requeued by scheduling (already written by the caller's batch)."""
        self.posts[post.id] = post
        self.post_jobs.setdefault(post.id, set())
        for job in new_jobs:
            self.track(job)
            if job.status is JobStatus.QUEUED:
                self.queue.push(job)
        self._dirty_posts.add(post.id)
        return self.dispatch(now)

    def update_post(self, post: Post) -> None:
        """The post's content or approval changed: held jobs follow the new approval."""
        if post.id in self.posts:
            self.posts[post.id] = post
            for job_id in self.post_jobs.get(post.id, ()):
                job = self.jobs[job_id]
                if job.status is JobStatus.QUEUED and not self._held(job):
                    self.queue.push(job)

    def _held(self, job: Job) -> bool:
        """A job whose content no longer matches the post's approval is never handed out."""
        post = self.posts.get(job.post_id)
        return post is None or post.approved_hash != job.content_hash

    # ---- sessions ------------------------------------------------------------------------

    def open_session(
        self,
        session_id: str,
        now: float,
        *,
        device_id: str,
        kind: WorkerKind,
        capabilities: tuple[Target, ...],
        slots: int,
        held: Iterable[tuple[str, int]],
        version: str,
    ) -> Effects:
        fx = Effects()
        for other in [s for s in self.sessions.values() if s.device_id == device_id]:
            # A device has one stream; a new Hello means the old one is dead.
            fx.extend(
                self.session_lost(
                    other.id, now, reason="superseded by a new stream", redispatch=False
                )
            )
            fx.close_sessions.append(other.id)
        session = Session(session_id, device_id, kind, capabilities, max(1, slots), now)
        self.sessions[session_id] = session
        heapq.heappush(self._beats, (now, session_id))
        resumed: list[wg.HeldJob] = []
        for job_id, epoch in held:
            lease = self.leases.get(job_id)
            job = self.jobs.get(job_id)
            if (
                lease is not None
                and job is not None
                and lease.epoch == epoch
                and job.device_id == device_id
                and (lease.session_id is None or lease.session_id not in self.sessions)
            ):
                lease.session_id = session_id
                lease.deadline = now + self.config.lease_ttl_s
                session.jobs.add(job_id)
                resumed.append(
                    wg.HeldJob(job_id=job_id, lease_epoch=epoch, committed=lease.run.committed)
                )
        device = self.devices.get(device_id)
        logins = device.logins if device else {}
        device = DeviceRecord(device_id, kind, capabilities, session.slots, now, version, logins)
        self.devices[device_id] = device
        fx.batch.devices.append(dataclasses.replace(device, logins=dict(logins)))
        fx.batch.audits.append(
            AuditEvent(
                "DEVICE_CONNECTED",
                device_id,
                f"device:{device_id}",
                now,
                {
                    "kind": kind.value,
                    "slots": session.slots,
                    "resumed": [h.job_id for h in resumed],
                },
            )
        )
        welcome = wg.Welcome(
            session_id=session_id,
            heartbeat_interval_ms=int(self.config.heartbeat_interval_s * 1000),
            lease_ttl_ms=int(self.config.lease_ttl_s * 1000),
            resumed=resumed,
            max_chunk_bytes=self.config.max_chunk_bytes,
            max_asset_bytes=self.config.max_asset_bytes,
        )
        fx.send(session_id, wg.CoordinatorMessage(welcome=welcome))
        fx.extend(self.dispatch(now))
        return fx

    def heartbeat(self, session_id: str, seq: int, now: float) -> Effects:
        fx = Effects()
        session = self.sessions.get(session_id)
        if session is None:
            return fx
        session.last_heartbeat = now
        heapq.heappush(self._beats, (now, session_id))
        deadline = now + self.config.lease_ttl_s
        for job_id in session.jobs:
            self.leases[job_id].deadline = deadline
        self.devices[session.device_id].last_seen_at = now
        ack = wg.HeartbeatAck(seq=seq, lease_deadline_unix_ms=int(deadline * 1000))
        fx.send(session_id, wg.CoordinatorMessage(heartbeat_ack=ack))
        return fx

    def goodbye(self, session_id: str, now: float) -> Effects:
        """The worker drains: no new leases; it finishes what it holds."""
        session = self.sessions.get(session_id)
        if session is not None:
            session.draining = True
            session.last_heartbeat = max(session.last_heartbeat, now)
            heapq.heappush(self._beats, (session.last_heartbeat, session_id))
        return Effects()

    def session_lost(
        self, session_id: str, now: float, *, reason: str, redispatch: bool = True
    ) -> Effects:
        """The stream ended (EOF, error, heartbeat silence, superseded). Leases before their
        commit permit are recovered at once; committed ones wait for their deadline (the worker
        may reconnect and report), then are rerun with verify_first."""
        fx = Effects()
        session = self.sessions.pop(session_id, None)
        if session is None:
            return fx
        for job_id in sorted(session.jobs):
            lease = self.leases[job_id]
            lease.session_id = None
            if not lease.run.committed:
                fx.extend(self._recover(job_id, now, reason=f"stream lost: {reason}"))
        device = self.devices.get(session.device_id)
        if device is not None:
            device.last_seen_at = now
            fx.batch.devices.append(dataclasses.replace(device, logins=dict(device.logins)))
        fx.batch.audits.append(
            AuditEvent(
                "DEVICE_DISCONNECTED",
                session.device_id,
                f"device:{session.device_id}",
                now,
                {"reason": reason, "held": sorted(session.jobs)},
            )
        )
        if redispatch:  # jobs recovered above go to another worker at once, not at the next tick
            fx.extend(self.dispatch(now))
        return fx

    # ---- per-job messages from a worker --------------------------------------------------

    def _lease_of(self, session_id: str, job_id: str, epoch: int) -> Lease | None:
        lease = self.leases.get(job_id)
        if lease is None or lease.epoch != epoch or lease.session_id != session_id:
            return None
        return lease

    def _drop(self, fx: Effects, session_id: str, job_id: str, epoch: int, reason: str) -> None:
        drop = wg.Drop(job_id=job_id, lease_epoch=epoch, reason=reason)
        fx.send(session_id, wg.CoordinatorMessage(drop=drop))

    def _stale_reason(self, job_id: str, epoch: int) -> str:
        lease = self.leases.get(job_id)
        if job_id not in self.jobs:
            return f"job {job_id} is not leased to you (unknown or finished)"
        if lease is None:
            return f"job {job_id} is {self.jobs[job_id].status.value}; your lease is gone"
        return f"stale lease epoch {epoch}; the job's current epoch is {lease.epoch}"

    def ack(self, session_id: str, job_id: str, epoch: int, now: float) -> Effects:
        fx = Effects()
        lease = self._lease_of(session_id, job_id, epoch)
        if lease is None:
            self._drop(fx, session_id, job_id, epoch, self._stale_reason(job_id, epoch))
            return fx
        job = self.jobs[job_id]
        if job.status is JobStatus.CLAIMED:
            self._move(fx, job, JobStatus.RUNNING, now)
        return fx

    def log(
        self, session_id: str, job_id: str, epoch: int, entry: StepLogEntry, now: float
    ) -> Effects:
        fx = Effects()
        if not entry.at:
            entry.at = now
        lease = self._lease_of(session_id, job_id, epoch)
        if lease is None:
            self._drop(fx, session_id, job_id, epoch, self._stale_reason(job_id, epoch))
            return fx
        lease.run.logs.append(entry)
        fx.batch.logs.append((lease.run.id, entry))
        fx.logs.append((job_id, lease.run.id, lease.run.attempt, entry))
        return fx

    def screenshot(
        self, session_id: str, job_id: str, epoch: int, rec: ScreenshotRecord, now: float
    ) -> Effects:
        fx = Effects()
        lease = self._lease_of(session_id, job_id, epoch)
        if lease is None:
            self._drop(fx, session_id, job_id, epoch, self._stale_reason(job_id, epoch))
            return fx
        lease.run.screenshots.append(rec)
        fx.batch.screenshots.append((lease.run.id, rec))
        return fx

    def lease_is_current(self, session_id: str, job_id: str, epoch: int) -> bool:
        return self._lease_of(session_id, job_id, epoch) is not None

    def commit_request(self, session_id: str, job_id: str, epoch: int, now: float) -> Effects:
        fx = Effects()
        lease = self._lease_of(session_id, job_id, epoch)
        job = self.jobs.get(job_id)
        reason = ""
        if lease is None or job is None:
            reason = self._stale_reason(job_id, epoch)
        elif session_id not in self.sessions:
            reason = "session is closed"
        elif job.status not in (JobStatus.CLAIMED, JobStatus.RUNNING):
            reason = f"job is {job.status.value}"
        elif lease.verify_only:
            reason = "this attempt may only look for the post (its attempts are used up)"
        elif job.require_confirm and not lease.confirmed:
            reason = "job requires an operator's confirmation first"
        elif self._held(job):
            reason = "the post changed since it was approved"
        elif lease.deadline - now < self.config.commit_min_left_s:
            reason = f"lease has {lease.deadline - now:.1f}s left; renew first"
        if reason or lease is None or job is None:
            deny = wg.CommitDeny(job_id=job_id, lease_epoch=epoch, reason=reason)
            fx.send(session_id, wg.CoordinatorMessage(commit_deny=deny))
            fx.signals.append(CommitDecided(False))
            fx.batch.audits.append(
                AuditEvent(
                    "JOB_COMMIT_DENIED",
                    job_id,
                    self._actor(session_id),
                    now,
                    {"epoch": epoch, "reason": reason},
                )
            )
            return fx
        job.committed_epoch = epoch
        self._committed_by[job_id] = (epoch, lease.run.device_id)
        job.verify_first = False  # this run verified (or did not need to) before asking
        lease.run.committed = True
        self.gates.lease_committed(job.target, job.id, now)
        self._write(fx, job, {job.status}, epoch, now)
        fx.batch.runs.append(_run_row(lease.run))
        fx.batch.audits.append(
            AuditEvent("JOB_COMMIT_GRANTED", job_id, self._actor(session_id), now, {"epoch": epoch})
        )
        grant = wg.CommitGrant(
            job_id=job_id, lease_epoch=epoch, lease_deadline_unix_ms=int(lease.deadline * 1000)
        )
        fx.send(session_id, wg.CoordinatorMessage(commit_grant=grant))
        fx.signals.append(CommitDecided(True))
        return fx

    def awaiting_confirm(self, session_id: str, job_id: str, epoch: int, now: float) -> Effects:
        fx = Effects()
        lease = self._lease_of(session_id, job_id, epoch)
        if lease is None:
            self._drop(fx, session_id, job_id, epoch, self._stale_reason(job_id, epoch))
            return fx
        job = self.jobs[job_id]
        if lease.confirmed:
            confirm = wg.ConfirmJob(job_id=job_id, lease_epoch=epoch)
            fx.send(session_id, wg.CoordinatorMessage(confirm=confirm))
        elif job.status is not JobStatus.AWAITING_CONFIRM:
            self._move(fx, job, JobStatus.AWAITING_CONFIRM, now)
        return fx

    def result(self, session_id: str, r: wg.JobResult, now: float) -> Effects:
        fx = Effects()
        job = self.jobs.get(r.job_id)
        lease = self._lease_of(session_id, r.job_id, r.lease_epoch)

        def answer(accepted: bool, reason: str = "") -> None:
            ack = wg.ResultAck(
                job_id=r.job_id, lease_epoch=r.lease_epoch, accepted=accepted, reason=reason
            )
            fx.send(session_id, wg.CoordinatorMessage(result_ack=ack))

        if job is None:
            answer(False, f"job {r.job_id} is not leased to you (unknown or finished)")
            return fx
        if job.status is JobStatus.SUCCEEDED:
            answer(True, "already succeeded")  # completing a SUCCEEDED job is a no-op
            return fx
        # A success from the epoch that held the commit permit is the truth about the platform,
        # even if that lease was lost meanwhile: take it rather than post again. Only from the
        # device that was granted that permit, never epoch 0 (no permit) or another stream.
        session = self.sessions.get(session_id)
        late_success = (
            lease is None
            and r.success
            and session is not None
            and self._committed_by.get(job.id) == (r.lease_epoch, session.device_id)
            and job.status not in TERMINAL_JOB_STATUSES
        )
        if lease is None and not late_success:
            answer(False, self._stale_reason(r.job_id, r.lease_epoch))
            return fx
        current = self.leases.get(job.id)
        if late_success and current is not None and current.session_id is not None:
            cancel = wg.CancelJob(
                job_id=job.id, lease_epoch=current.epoch, reason="an earlier attempt published it"
            )
            fx.send(current.session_id, wg.CoordinatorMessage(cancel=cancel))
        run = current.run if current is not None else None
        if r.success:
            job.result_post_id, job.result_url = r.platform_post_id, r.url
            job.last_error_class, job.last_error = None, ""
            job.verify_first = False
            details: dict[str, object] = {
                "target": str(job.target),
                "attempt": job.attempt,
                "post_id": r.platform_post_id,
                "url": r.url,
                "found_existing": r.found_existing,
            }
            # One JOB_SUCCEEDED entry per success: the transition's, with the result in it.
            self._finish_attempt(
                fx,
                job,
                JobStatus.SUCCEEDED,
                "succeeded",
                now,
                actor=self._actor(session_id),
                details=details,
                execution_time_ms=r.execution_time_ms,
            )
        else:
            error_class = _error_class(r.error_class)
            committed = run is not None and run.committed
            verified_absent = r.verified_absent and current is not None and current.verify_only
            if verified_absent:
                # It looked and the post is not there: the job failed for good, nothing hidden.
                job.verify_first = False
                r.error_message = (
                    f"a final look found no post on the platform (before it: {job.last_error})"
                )
            elif committed and error_class in (ErrorClass.TRANSIENT, ErrorClass.UI_CHANGED):
                # The platform may have the post: the next attempt looks before posting. Once
                # max_attempts are used up, the next attempts only look (verify_only): a job
                # whose post exists must not end FAILED, and nothing is posted past the limit.
                job.verify_first = True
                error_class = ErrorClass.TRANSIENT
            failure = Failure(
                error_class,
                r.error_message,
                r.retry_at_unix_ms / 1000 if r.retry_at_unix_ms else None,
                r.quota_cap,
            )
            if run is not None:
                run.error_class, run.error, run.failed_step = (
                    error_class,
                    r.error_message,
                    (r.failed_step + (f" ({r.selector})" if r.selector else "")),
                )
            self._fail_attempt(fx, job, failure, now, session_id, r.execution_time_ms)
        answer(True)
        fx.extend(self.dispatch(now))
        return fx

    # ---- operator actions ----------------------------------------------------------------

    def confirm(self, job_id: str, actor: str, now: float) -> Effects:
        fx = Effects()
        job = self._job(job_id)
        lease = self.leases.get(job_id)
        if job.status is not JobStatus.AWAITING_CONFIRM or lease is None:
            raise FailedPrecondition(
                f"job {job_id} is {job.status.value}; only AWAITING_CONFIRM jobs can be confirmed"
            )
        lease.confirmed = True
        self._move(fx, job, JobStatus.RUNNING, now, actor=actor, action="JOB_CONFIRMED")
        if lease.session_id is not None:
            msg = wg.ConfirmJob(job_id=job_id, lease_epoch=lease.epoch)
            fx.send(lease.session_id, wg.CoordinatorMessage(confirm=msg))
        return fx

    def cancel(self, job_id: str, actor: str, reason: str, now: float) -> Effects:
        fx = Effects()
        job = self._job(job_id)
        if job.status in TERMINAL_JOB_STATUSES:
            raise FailedPrecondition(f"job {job_id} is already {job.status.value}")
        lease = self.leases.get(job_id)
        if lease is not None and lease.run.committed:
            raise FailedPrecondition(
                f"job {job_id} is publishing right now (commit permit granted); wait for its result"
            )
        if lease is not None and lease.session_id is not None:
            msg = wg.CancelJob(job_id=job_id, lease_epoch=lease.epoch, reason=reason)
            fx.send(lease.session_id, wg.CoordinatorMessage(cancel=msg))
        job.last_error = reason or job.last_error
        self._finish_attempt(fx, job, JobStatus.CANCELLED, "cancelled", now, actor=actor)
        fx.extend(self.dispatch(now))
        return fx

    def retry_now(self, job_id: str, actor: str, force: bool, now: float) -> Effects:
        fx = Effects()
        job = self._job(job_id)
        if job.status not in (JobStatus.FAILED, JobStatus.NEEDS_LOGIN, JobStatus.QUEUED):
            raise FailedPrecondition(
                f"job {job_id} is {job.status.value}; only FAILED, NEEDS_LOGIN or waiting QUEUED "
                "jobs can be retried"
            )
        if job.counted_attempts >= job.max_attempts:
            job.max_attempts = job.counted_attempts + 1  # the operator grants one more attempt
        job.not_before = now
        if force:
            self.force_gate.add(job_id)
        if job.status is JobStatus.QUEUED:  # waiting for a retry: just move its time
            self._write(fx, job, {JobStatus.QUEUED}, job.lease_epoch, now)
            fx.batch.audits.append(
                AuditEvent("JOB_RETRY_NOW", job.id, actor, now, {"force": force})
            )
        else:
            self._move(
                fx,
                job,
                JobStatus.QUEUED,
                now,
                actor=actor,
                action="JOB_RETRY_NOW",
                details={"force": force},
            )
        self.queue.push(job)
        fx.extend(self.dispatch(now))
        return fx

    def login_checked(
        self,
        device_id: str,
        target: Target,
        state: LoginState,
        message: str,
        actor: str,
        now: float,
    ) -> tuple[Effects, list[str]]:
        fx = Effects()
        device = self.devices.get(device_id)
        if device is not None:
            device.logins[target] = (state, now, message)
            fx.batch.devices.append(dataclasses.replace(device, logins=dict(device.logins)))
        fx.batch.audits.append(
            AuditEvent(
                "LOGIN_CHECKED",
                device_id,
                actor,
                now,
                {"target": str(target), "state": state.value, "message": message},
            )
        )
        requeued: list[str] = []
        if state is LoginState.LOGGED_IN:
            for job in list(self.jobs.values()):
                if job.status is JobStatus.NEEDS_LOGIN and job.target == target:
                    job.not_before = now
                    self._move(
                        fx, job, JobStatus.QUEUED, now, actor=actor, action="JOB_LOGIN_RESTORED"
                    )
                    self.queue.push(job)
                    requeued.append(job.id)
            fx.extend(self.dispatch(now))
        return fx, requeued

    def reopen_gate(self, target: Target, actor: str, now: float) -> Effects:
        fx = Effects()
        fx.batch.gates.append(self.gates.reopen(target))
        fx.batch.audits.append(AuditEvent("GATE_REOPENED", str(target), actor, now, {}))
        fx.extend(self.dispatch(now))
        return fx

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        return job

    # ---- time: expiry, stuck recovery, dispatch ------------------------------------------

    def tick(self, now: float) -> Effects:
        fx = Effects()
        ttl = self.config.lease_ttl_s
        for session in [s for s in self.sessions.values() if now - s.last_heartbeat > ttl]:
            lost = self.session_lost(
                session.id, now, reason=f"no heartbeat for {ttl:g}s", redispatch=False
            )
            fx.extend(lost)
            fx.close_sessions.append(session.id)
        for job_id, lease in list(self.leases.items()):
            job = self.jobs[job_id]
            if lease.session_id is None:
                if now > lease.deadline + self.config.expiry_margin_s:
                    fx.extend(self._recover(job_id, now, reason="lease deadline passed"))
                continue
            age = now - lease.run.started_at
            stuck = (job.status is JobStatus.CLAIMED and age > self.config.claim_timeout_s) or (
                job.status is JobStatus.RUNNING and age > self.config.run_timeout_s
            )
            if stuck:
                self._drop(fx, lease.session_id, job_id, lease.epoch, "stuck: lease recovered")
                self.sessions[lease.session_id].jobs.discard(job_id)
                if lease.run.committed:
                    # It holds a commit permit and may be publishing right now; a Drop cannot
                    # undo that. Stop renewing the lease and rerun (verifying) only after its
                    # deadline plus the margin, like any lease lost after its permit.
                    lease.session_id = None
                    continue
                fx.extend(self._recover(job_id, now, reason=f"stuck in {job.status.value}"))
        fx.extend(self.dispatch(now))
        return fx

    def next_wakeup(self) -> float | None:
        times: list[float] = []
        due = self.queue.next_due(self.jobs, self._open_at_any, self._held, self._dispatched_at)
        if due is not None:
            times.append(due)
        for lease in self.leases.values():
            if lease.session_id is None:
                times.append(lease.deadline + self.config.expiry_margin_s + 0.001)
        oldest = self._oldest_heartbeat()
        if oldest is not None:
            times.append(oldest + self.config.lease_ttl_s + 0.001)
        return min(times) if times else None

    def _oldest_heartbeat(self) -> float | None:
        """min(last_heartbeat) over the sessions: drops entries of closed sessions and beats
        that a later one replaced until the first entry is a session's current one."""
        beats = self._beats
        while beats:
            at, session_id = beats[0]
            session = self.sessions.get(session_id)
            if session is not None and session.last_heartbeat == at:
                return at
            heapq.heappop(beats)
        return None

    def _open_at_any(self, target: Target) -> float:
        return self.gates.open_at(target, float("-inf"))

    def dispatch(self, now: float) -> Effects:
        """Hand due jobs to sessions with free slots, one per session per round (fairness)."""
        fx = Effects()
        self._dispatched_at = now
        self._dispatch_forced(fx, now)
        hungry = [s for s in self.sessions.values() if s.free_slots > 0]
        while hungry:
            still: list[Session] = []
            for session in hungry:
                job = self.queue.pick(
                    session.capabilities,
                    self.jobs,
                    now,
                    lambda t: self._gate_open_at(t, now),
                    self._held,
                )
                if job is None:
                    continue
                if self.force_gate and job.id in self.force_gate:
                    self.force_gate.discard(job.id)
                self._assign(fx, session, job, now)
                if session.free_slots > 0:
                    still.append(session)
            hungry = still
        return fx

    def _dispatch_forced(self, fx: Effects, now: float) -> None:
        """Jobs an operator retried with --force go first, through a closed gate (the queue
        would pick by gate and not_before, so another job of the target could jump in)."""
        for job_id in sorted(self.force_gate):
            job = self.jobs.get(job_id)
            if job is None or job.status is not JobStatus.QUEUED:
                self.force_gate.discard(job_id)
                continue
            if job.not_before > now or self._held(job):
                continue
            session = next(
                (s for s in self.sessions.values() if s.free_slots > 0 and s.serves(job.target)),
                None,
            )
            if session is not None:
                self.force_gate.discard(job_id)
                self._assign(fx, session, job, now)

    def _gate_open_at(self, target: Target, now: float) -> float:
        return self.gates.open_at(target, now)

    def _assign(self, fx: Effects, session: Session, job: Job, now: float) -> None:
        old_epoch = job.lease_epoch
        # Its attempts are used up, but an earlier one may have published: only look.
        verify_only = job.verify_first and job.counted_attempts >= job.max_attempts
        check_job(job.id, job.status, JobStatus.CLAIMED)
        job.status = JobStatus.CLAIMED
        job.lease_epoch += 1
        job.attempt += 1
        job.device_id = session.device_id
        deadline = now + self.config.lease_ttl_s
        job.lease_expires_at = deadline
        job.updated_at = now
        run = Run(
            id=self._new_id("r"),
            job_id=job.id,
            attempt=job.attempt,
            device_id=session.device_id,
            lease_epoch=job.lease_epoch,
            started_at=now,
        )
        self.leases[job.id] = Lease(
            job.id, job.lease_epoch, session.id, deadline, run, verify_only=verify_only
        )
        session.jobs.add(job.id)
        self.gates.lease_started(job.target, job.id)
        fx.batch.job_writes.append(
            JobWrite(dataclasses.replace(job), frozenset({JobStatus.QUEUED}), old_epoch)
        )
        fx.batch.runs.append(_run_row(run))
        fx.batch.audits.append(
            AuditEvent(
                "JOB_LEASED",
                job.id,
                SYSTEM,
                now,
                {
                    "device": session.device_id,
                    "epoch": job.lease_epoch,
                    "attempt": job.attempt,
                    "verify_first": job.verify_first,
                    "verify_only": verify_only,
                },
            )
        )
        fx.changed_jobs[job.id] = dataclasses.replace(job)
        self._dirty_posts.add(job.post_id)
        self._round_started.setdefault(job.post_id, now)
        assign = wg.Assign(
            job_id=job.id,
            lease_epoch=job.lease_epoch,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            lease_deadline_unix_ms=int(deadline * 1000),
            post_id=job.post_id,
            platform=job.platform,
            account=job.account,
            text=job.text,
            media=list(job.media),
            content_hash=job.content_hash,
            platform_key=job.platform_key,
            verify_first=job.verify_first or verify_only,
            verify_only=verify_only,
            require_confirm=job.require_confirm,
            idempotency_key=job.idempotency_key,
        )
        fx.send(session.id, wg.CoordinatorMessage(assign=assign))
        fx.signals.append(AttemptStarted(dataclasses.replace(job), session.id))
        fx.signals.append(Dispatched(max(0.0, now - job.not_before)))

    # ---- transitions ---------------------------------------------------------------------

    def _actor(self, session_id: str | None) -> str:
        session = self.sessions.get(session_id or "")
        return f"device:{session.device_id}" if session else SYSTEM

    def _write(
        self, fx: Effects, job: Job, expected: Iterable[JobStatus], epoch: int, now: float
    ) -> None:
        job.updated_at = now
        fx.batch.job_writes.append(JobWrite(dataclasses.replace(job), frozenset(expected), epoch))
        fx.changed_jobs[job.id] = dataclasses.replace(job)
        self._dirty_posts.add(job.post_id)

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

    def _finish_attempt(
        self,
        fx: Effects,
        job: Job,
        new: JobStatus,
        outcome: str,
        now: float,
        *,
        actor: str = SYSTEM,
        action: str = "",
        details: dict[str, object] | None = None,
        error_class: str = "",
        retry_reason: str = "",
        retry_at: float = 0.0,
        execution_time_ms: int = 0,
    ) -> None:
        lease = self._end_lease(job)
        self._move(
            fx,
            job,
            new,
            now,
            actor=actor,
            action=action,
            details=details,
            execution_time_ms=execution_time_ms,
        )
        if lease is not None:
            lease.run.ended_at, lease.run.outcome = now, outcome
            fx.batch.runs.append(_run_row(lease.run))
            fx.signals.append(
                AttemptEnded(
                    dataclasses.replace(job),
                    outcome,
                    now - lease.run.started_at,
                    error_class,
                    retry_reason,
                    retry_at,
                )
            )
            self._results_since_summary.setdefault(job.post_id, {})[job.target] = (
                dataclasses.replace(job)
            )

    def _fail_attempt(
        self,
        fx: Effects,
        job: Job,
        failure: Failure,
        now: float,
        session_id: str | None,
        execution_time_ms: int = 0,
    ) -> None:
        policy = self.retry.for_platform(job.platform)
        decision = decide(failure, job, policy, now, self._rand())
        if isinstance(decision, Fail) and self._may_verify_again(job, failure.error_class):
            decision = RetryAt(
                now + policy.backoff_s(job.counted_attempts, self._rand()), "transient"
            )
        job.last_error_class, job.last_error = failure.error_class, failure.message
        actor = self._actor(session_id)
        base = {
            "target": str(job.target),
            "attempt": job.attempt,
            "error_class": failure.error_class.value,
            "error": failure.message,
            "execution_time_ms": execution_time_ms,
        }
        match decision:
            case RetryAt(at=at, reason=reason):
                if failure.error_class is ErrorClass.RATE_LIMITED:
                    job.rate_limited_count += 1
                    rec = self.gates.close(job.target, at, _gate_reason(failure))
                    fx.batch.gates.append(rec)
                    fx.signals.append(RateLimitHit(job.platform, job.account, job.id, at))
                    fx.batch.audits.append(
                        AuditEvent(
                            "GATE_CLOSED",
                            str(job.target),
                            actor,
                            now,
                            {"until": at, "reason": rec.reason},
                        )
                    )
                job.not_before = at
                self._finish_attempt(
                    fx,
                    job,
                    JobStatus.QUEUED,
                    "retry",
                    now,
                    actor=actor,
                    action="JOB_RETRY_SCHEDULED",
                    details={**base, "retry_at": at, "reason": reason},
                    error_class=failure.error_class.value,
                    retry_reason=reason,
                    retry_at=at,
                )
                self.queue.push(job)
            case Fail(reason=reason):
                job.last_error = (
                    reason if failure.error_class is ErrorClass.TRANSIENT else (failure.message)
                )
                self._finish_attempt(
                    fx,
                    job,
                    JobStatus.FAILED,
                    "failed",
                    now,
                    actor=actor,
                    action="JOB_FAILED",
                    details=base,
                    error_class=failure.error_class.value,
                )
            case NeedsLogin():
                device_id = job.device_id
                self._finish_attempt(
                    fx,
                    job,
                    JobStatus.NEEDS_LOGIN,
                    "needs_login",
                    now,
                    actor=actor,
                    action="JOB_NEEDS_LOGIN",
                    details=base,
                    error_class=failure.error_class.value,
                )
                device = self.devices.get(device_id)
                if device is not None:
                    device.logins[job.target] = (LoginState.NEEDS_LOGIN, now, failure.message)
                    fx.batch.devices.append(dataclasses.replace(device, logins=dict(device.logins)))

    @staticmethod
    def _may_verify_again(job: Job, error_class: ErrorClass) -> bool:
        """A job in doubt (an attempt may have published) gets verify-only attempts past its
        max_attempts, up to as many again: failing it while its post exists would hide a post,
        and a verify-only attempt never posts."""
        return (
            job.verify_first
            and error_class is ErrorClass.TRANSIENT
            and job.counted_attempts < 2 * job.max_attempts
        )

    def _recover(self, job_id: str, now: float, *, reason: str) -> Effects:
        """A lease ended without a result: count the attempt, verify first if it had committed."""
        fx = Effects()
        job = self.jobs[job_id]
        lease = self.leases.get(job_id)
        if lease is None:
            return fx
        committed = lease.run.committed
        phase = (
            "committed"
            if committed
            else ("claimed" if job.status is JobStatus.CLAIMED else "running")
        )
        fx.signals.append(LeaseExpired(phase))
        details: dict[str, object] = {
            "reason": reason,
            "phase": phase,
            "epoch": lease.epoch,
            "device": job.device_id,
            "attempt": job.attempt,
        }
        if committed:
            job.verify_first = True  # in doubt: the platform may have the post
        decision: RetryAt | Fail | NeedsLogin = decide_lease_lost(job, now)
        if isinstance(decision, Fail) and self._may_verify_again(job, ErrorClass.TRANSIENT):
            decision = RetryAt(now, "lease_lost")  # past max_attempts it only looks
        job.last_error_class = ErrorClass.TRANSIENT
        job.last_error = f"lease lost ({reason})"
        if isinstance(decision, RetryAt):
            job.not_before = decision.at
            self._finish_attempt(
                fx,
                job,
                JobStatus.QUEUED,
                "lease_lost",
                now,
                action="JOB_STUCK_RECOVERY",
                details={**details, "next": "QUEUED"},
                error_class="TRANSIENT",
                retry_reason="lease_lost",
                retry_at=decision.at,
            )
            self.queue.push(job)
        else:
            self._finish_attempt(
                fx,
                job,
                JobStatus.FAILED,
                "lease_lost",
                now,
                action="JOB_STUCK_RECOVERY",
                details={**details, "next": "FAILED"},
                error_class="TRANSIENT",
            )
        return fx

    # ---- posts ---------------------------------------------------------------------------

    def settle_posts(self, now: float) -> Effects:
        """Re-derive the status of posts whose jobs changed; write publish-attempt summaries;
        forget posts whose jobs are all finished."""
        fx = Effects()
        dirty, self._dirty_posts = self._dirty_posts, set()
        for post_id in sorted(dirty):
            post = self.posts.get(post_id)
            if post is None:
                continue
            jobs = [self.jobs[j] for j in sorted(self.post_jobs.get(post_id, ()))]
            if post.status in (
                PostStatus.SCHEDULED,
                PostStatus.PUBLISHING,
                PostStatus.PUBLISHED,
                PostStatus.FAILED,
            ):
                new = derive_post_status(jobs)
                if new is not post.status:
                    old = post.status
                    post.status, post.updated_at = new, now
                    fx.batch.post_writes.append(
                        PostWrite(dataclasses.replace(post), frozenset({old}))
                    )
                    fx.batch.audits.append(
                        AuditEvent(
                            "POST_STATUS_CHANGED",
                            post_id,
                            SYSTEM,
                            now,
                            {"from": old.value, "to": new.value},
                        )
                    )
            self._summarise(fx, post_id, jobs, now)
            if jobs and all(j.status in TERMINAL_JOB_STATUSES for j in jobs):
                self.forget_post(post_id)
        return fx

    def _summarise(self, fx: Effects, post_id: str, jobs: list[Job], now: float) -> None:
        """One audit entry per publishing round of a post (all its leases ended): each target's
        outcome, like the field's 'social_media_post' / '..._retry' entries."""
        results = self._results_since_summary.get(post_id)
        if not results or any(j.status in LEASED_STATUSES for j in jobs):
            return
        del self._results_since_summary[post_id]
        n = self._summary_round[post_id] = self._summary_round.get(post_id, 0) + 1
        targets = {
            str(t): {
                "status": j.status.value,
                "attempt": j.attempt,
                "error_class": j.last_error_class.value if j.last_error_class else "",
                "error": j.last_error,
                "next_retry_at": iso_utc(j.not_before) if j.status is JobStatus.QUEUED else None,
                "post_id": j.result_post_id,
                "url": j.result_url,
            }
            for t, j in sorted(results.items())
        }
        ok = all(v["status"] == JobStatus.SUCCEEDED.value for v in targets.values())
        any_ok = any(v["status"] == JobStatus.SUCCEEDED.value for v in targets.values())
        status = "success" if ok else ("partial_failure" if any_ok else "failure")
        elapsed_ms = int(max(0.0, now - self._round_started.pop(post_id, now)) * 1000)
        fx.batch.audits.append(
            AuditEvent(
                "PUBLISH_ATTEMPT" if n == 1 else "PUBLISH_RETRY",
                post_id,
                SYSTEM,
                now,
                {"round": n, "status": status, "targets": targets},
                elapsed_ms,
            )
        )

    def forget_post(self, post_id: str) -> None:
        self.posts.pop(post_id, None)
        for job_id in self.post_jobs.pop(post_id, set()):
            self.jobs.pop(job_id, None)
            self.force_gate.discard(job_id)
            self._committed_by.pop(job_id, None)
        self._results_since_summary.pop(post_id, None)
        self._summary_round.pop(post_id, None)
        self._round_started.pop(post_id, None)


def _run_row(run: Run) -> Run:
    """A copy of the run without logs/screenshots (those are appended as their own rows)."""
    return dataclasses.replace(run, logs=[], screenshots=[])


def _error_class(value: int) -> ErrorClass:
    name = types_pb2.ErrorClass.Name(value).removeprefix("ERROR_CLASS_")  # type: ignore[arg-type]
    try:
        return ErrorClass(name)
    except ValueError:
        return ErrorClass.TRANSIENT  # unspecified: treat as retryable, the safe default


def _gate_reason(failure: Failure) -> str:
    kind = "quota cap" if failure.quota_cap else "429 rate limited"
    return f"{kind}: {failure.message}" if failure.message else kind
