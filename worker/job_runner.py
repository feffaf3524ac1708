"""Holds the jobs this worker leased and runs each in its own task. `JobRunner` is the one writer
of every `RunningJob` (see worker/job_state.py): the shell hands it the coordinator's job messages
(`apply`), and the job tasks ask it for changes through `JobControl` (worker/job_task.py).

Each job runs in its own task under the runner's task group, at most `slots` at once:
AssignAck, then the adapter calls in the order of worker/lifecycle.py, then a JobResult that is
kept until its ResultAck and repeated after a reconnect. A job stops by itself, reporting nothing,
when its lease deadline minus a safety margin passes unrenewed; it never starts its commit later.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from opentelemetry import trace
from opentelemetry.trace import Tracer

from postroom.clock import Clock
from postroom.v1 import types_pb2
from postroom.v1 import worker_gateway_pb2 as wg
from worker import session as cmd
from worker.adapters.base import AdapterRegistry
from worker.config import DEFAULT_LEASE_TTL_S, DEFAULT_LOGIN_CHECK_TIMEOUT_S, lease_margin_s
from worker.errors import AdapterError, AuthRequired
from worker.job_state import (
    ACTIVE_PHASES,
    JobPhase,
    RunningJob,
    StreamLimits,
    Upload,
    screenshot_chunks,
    spec_from_assign,
)
from worker.job_task import JobTask, close_adapter
from worker.metrics import WorkerMetrics

log = logging.getLogger("postroom.worker.jobs")

_RUNNING_PHASES = ACTIVE_PHASES - {JobPhase.WAITING_SLOT}
MAX_ACCOUNT_CHARS = 256  # the coordinator's bound on account names
_SEND_FAILED = (anyio.ClosedResourceError, anyio.BrokenResourceError)


@dataclass(frozen=True, slots=True)
class LeaseAbort:
    """A job this worker stopped by itself because its lease could not be renewed in time."""

    job_id: str
    epoch: int
    phase: JobPhase
    at: float


class _Link:
    """The current stream's outbox as jobs see it. Shut to them until the resume re-sends are
    queued, so a job's new messages never overtake its repeated ones."""

    def __init__(self, outbox: MemoryObjectSendStream[wg.WorkerMessage], limits: StreamLimits):
        self.outbox = outbox
        self.limits = limits
        self.opened = anyio.Event()

    async def send(self, msg: wg.WorkerMessage) -> bool:
        await self.opened.wait()  # also the job's cancellation point before it sends
        try:
            try:
                self.outbox.send_nowait(msg)  # no second event-loop turn while there is room
            except anyio.WouldBlock:
                await self.outbox.send(msg)
        except _SEND_FAILED:
            return False
        return True


class JobRunner:
    def __init__(
        self,
        *,
        adapters: AdapterRegistry,
        clock: Clock,
        slots: int,
        metrics: WorkerMetrics | None = None,
        tracer: Tracer | None = None,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
    ) -> None:
        self._adapters = adapters
        self.clock = clock
        self._limiter = anyio.CapacityLimiter(slots)
        self._metrics = metrics
        self._tracer = tracer or trace.NoOpTracer()
        self._lease_ttl_s = lease_ttl_s
        self._jobs: dict[str, RunningJob] = {}
        self._running: set[RunningJob] = set()  # held jobs in a _RUNNING_PHASES phase
        self._tg: TaskGroup | None = None
        self._link: _Link | None = None
        self._changed = anyio.Event()
        self._watch_due = math.inf  # when the lease watcher wakes by itself next
        self._upload_lock = anyio.Lock()  # one upload's chunks at a time: contiguous on the wire
        self.lease_aborts: list[LeaseAbort] = []

    # ---- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run jobs until cancelled; cancelling stops every job at once, reporting nothing."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._watch_leases)
            task_status.started()
            await anyio.sleep_forever()

    async def wait_idle(self) -> None:
        """Return once no job is held: all reported and acknowledged, or abandoned."""
        while self._jobs:
            await self._changed.wait()

    # ---- the stream -----------------------------------------------------------------------

    async def attach(
        self,
        outbox: MemoryObjectSendStream[wg.WorkerMessage],
        limits: StreamLimits,
        *,
        resumed: Iterable[wg.HeldJob],
        deadline: float = 0.0,
    ) -> None:
        """A session began: abandon the jobs the coordinator did not keep, repeat what it may have
        missed of the others (unacknowledged screenshots, then the last state-changing message:
        AssignAck, AwaitingConfirm, CommitRequest or JobResult), then let jobs use `outbox`."""
        kept = {(h.job_id, h.lease_epoch) for h in resumed}
        for job in list(self._jobs.values()):
            if (job.job_id, job.epoch) not in kept:
                self.abandon(job, "not resumed by the coordinator")
            else:
                job.deadline = max(job.deadline, deadline)
        link = _Link(outbox, limits)
        self._link = link
        repeat: list[wg.WorkerMessage] = []
        for job in self._jobs.values():
            for upload in job.uploads.values():
                repeat += screenshot_chunks(job, upload, max_chunk_bytes=limits.max_chunk_bytes)
            if job.last_state_msg is not None:
                repeat.append(job.last_state_msg)
        try:
            for msg in repeat:
                await outbox.send(msg)
        except _SEND_FAILED:
            pass
        finally:
            link.opened.set()

    def detach(self) -> None:
        """The stream ended. Jobs keep running until their deadlines; what they send meanwhile is
        dropped (the state-changing part is repeated by the next attach)."""
        if self._link is not None:
            self._link.opened.set()
            self._link = None

    def set_lease_ttl(self, lease_ttl_s: float) -> None:
        if lease_ttl_s > 0:
            self._lease_ttl_s = lease_ttl_s
            self._wake()

    # ---- coordinator messages -------------------------------------------------------------

    def apply(self, c: cmd.JobCommand) -> None:
        """Carry out one job command of the session machine."""
        match c:
            case cmd.StartJob(assign=a, deadline=deadline):
                self._assign(a, deadline)
            case cmd.Renew(deadline=deadline):
                # Deadlines only move later: the lease watcher wakes early at worst, never late,
                # so it is not woken here.
                for held in self._jobs.values():
                    held.deadline = max(held.deadline, deadline)
            case cmd.AnswerPermit(job_id, epoch, granted, reason):
                self._answer_permit(job_id, epoch, granted, reason)
            case cmd.Confirm(job_id, epoch):
                if (job := self._current(job_id, epoch)) is not None:
                    job.confirmation().set()
            case cmd.Cancel(job_id, epoch, reason):
                self._cancel(job_id, epoch, reason)
            case cmd.DropJob(job_id, epoch, reason):
                self._drop(job_id, epoch, reason)
            case cmd.ResultAcked(job_id, epoch, accepted, reason):
                self._result_acked(job_id, epoch, accepted, reason)
            case cmd.ScreenshotAcked(job_id, upload_id, ok, error):
                if job_id in self._jobs:
                    self._jobs[job_id].uploads.pop(upload_id, None)
                if not ok:
                    log.warning("screenshot %s of job %s refused: %s", upload_id, job_id, error)

    def _assign(self, a: wg.Assign, deadline: float) -> None:
        assert self._tg is not None, "JobRunner.run() is not running"
        existing = self._jobs.get(a.job_id)
        if existing is not None:
            if a.lease_epoch <= existing.epoch:
                log.warning("repeated Assign of job %s (epoch %d) ignored", a.job_id, a.lease_epoch)
                return
            self.abandon(existing, f"assigned again under epoch {a.lease_epoch}")
        spec = spec_from_assign(a)
        job = RunningJob(
            spec=spec, epoch=a.lease_epoch, deadline=deadline, traceparent=a.traceparent
        )
        self._jobs[job.job_id] = job
        task = JobTask(
            self, job, adapters=self._adapters, tracer=self._tracer, metrics=self._metrics
        )
        self._tg.start_soon(task.run, self._limiter, name=f"job {job.job_id}")
        if deadline - lease_margin_s(self._lease_ttl_s) < self._watch_due:
            self._wake()  # the lease watcher must wake sooner than it would

    def _answer_permit(self, job_id: str, epoch: int, granted: bool, reason: str) -> None:
        job = self._current(job_id, epoch)
        if job is None or job.phase is not JobPhase.AWAITING_PERMIT or job.permit.is_set():
            return  # stale, or the answer to a repeated CommitRequest
        job.permit_granted, job.deny_reason, job.committed = granted, reason, granted
        # The grant's lease deadline is not taken: it is the coordinator's clock, and our own
        # estimate from the heartbeats it answered is never later than the true one.
        job.permit.set()

    def _cancel(self, job_id: str, epoch: int, reason: str) -> None:
        job = self._current(job_id, epoch)
        if job is None:
            return
        if job.phase is JobPhase.COMMITTING:
            # The irreversible call is under way: let it finish and report what happened.
            log.warning("job %s cancelled while committing; its outcome will be reported", job_id)
            return
        self.abandon(job, f"cancelled: {reason or 'by an operator'}")

    def _drop(self, job_id: str, epoch: int, reason: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None and not 0 < epoch < job.epoch:  # not about an older lease
            self.abandon(job, f"dropped by the coordinator: {reason}")

    def _result_acked(self, job_id: str, epoch: int, accepted: bool, reason: str) -> None:
        job = self._current(job_id, epoch)
        if job is None or job.phase is not JobPhase.REPORTED:
            return
        if not accepted:
            log.warning("result of job %s refused: %s", job_id, reason)
        del self._jobs[job_id]
        self._running.discard(job)
        if self._jobs:
            # A job gone leaves the lease watcher's next wake early at worst, and wait_idle
            # waits for the last one: no new Event per job.
            self._set_in_flight()
        else:
            self._wake()

    # ---- queries --------------------------------------------------------------------------

    def held_jobs(self) -> list[wg.HeldJob]:
        return [job.held() for job in self._jobs.values()]

    def phase(self, job_id: str) -> JobPhase | None:
        job = self._jobs.get(job_id)
        return job.phase if job is not None else None

    def running_count(self) -> int:
        return len(self._running)

    async def check_login(
        self, platform: str, account: str
    ) -> tuple[types_pb2.LoginState.ValueType, str]:
        if len(account) > MAX_ACCOUNT_CHARS or not account.isprintable():
            # Not an account anyone has: answered without asking the platform.
            return types_pb2.LOGIN_STATE_UNKNOWN, (
                f"not an account name (printable, at most {MAX_ACCOUNT_CHARS} characters)"
            )
        try:
            adapter = self._adapters.create(platform)
        except AdapterError as exc:
            return types_pb2.LOGIN_STATE_UNKNOWN, exc.message
        try:
            with anyio.fail_after(DEFAULT_LOGIN_CHECK_TIMEOUT_S):
                ok = await adapter.check_login(account)
        except AuthRequired as exc:
            return types_pb2.LOGIN_STATE_NEEDS_LOGIN, exc.message
        except AdapterError as exc:
            return types_pb2.LOGIN_STATE_UNKNOWN, exc.message
        except TimeoutError:
            return types_pb2.LOGIN_STATE_UNKNOWN, "login check timed out"
        finally:
            await close_adapter(adapter)
        if ok:
            return types_pb2.LOGIN_STATE_LOGGED_IN, "logged in"
        return types_pb2.LOGIN_STATE_NEEDS_LOGIN, f"{platform}/{account} needs a login"

    # ---- JobControl: what the runner's own job tasks ask of it -------------------------------

    async def emit(self, msg: wg.WorkerMessage) -> bool:
        """Send on the current stream; False when there is none (the message is dropped)."""
        link = self._link
        return link is not None and await link.send(msg)

    def move(
        self, job: RunningJob, phase: JobPhase, *, state_msg: wg.WorkerMessage | None = None
    ) -> None:
        if phase is JobPhase.RUNNING:
            job.started_at = self.clock.now()
        elif phase is JobPhase.AWAITING_CONFIRM:
            job.confirmation()  # the event the operator's ConfirmJob sets, waited on next
        job.phase = phase
        if state_msg is not None:
            job.last_state_msg = state_msg
        # A phase change neither adds a deadline nor frees a job: nobody waits for it (the lease
        # watcher checks the phase when it wakes); only the in-flight gauge follows it.
        before = len(self._running)
        if phase in _RUNNING_PHASES and self.holds(job):
            self._running.add(job)
        else:
            self._running.discard(job)
        if len(self._running) != before:
            self._set_in_flight()

    def enter_step(self, job: RunningJob, step: str) -> None:
        job.step = step

    async def keep_upload(self, job: RunningJob, upload: Upload) -> None:
        job.uploads[upload.upload_id] = upload
        link = self._link
        if link is None:
            return  # repeated by the next attach
        await link.opened.wait()
        async with self._upload_lock:
            limit = link.limits.max_chunk_bytes
            for msg in screenshot_chunks(job, upload, max_chunk_bytes=limit):
                if not await link.send(msg):
                    return

    def max_asset_bytes(self) -> int:
        return self._link.limits.max_asset_bytes if self._link is not None else 0

    def holds(self, job: RunningJob) -> bool:
        return self._jobs.get(job.job_id) is job

    def lease_margin_s(self) -> float:
        return lease_margin_s(self._lease_ttl_s)

    def _current(self, job_id: str, epoch: int) -> RunningJob | None:
        job = self._jobs.get(job_id)
        return job if job is not None and job.epoch == epoch else None

    def abandon(self, job: RunningJob, reason: str) -> None:
        """Stop the job's task and forget the job; nothing is reported."""
        job.scope.cancel()
        self._running.discard(job)
        if self._jobs.get(job.job_id) is job:
            del self._jobs[job.job_id]
            log.info("job %s (epoch %d) abandoned: %s", job.job_id, job.epoch, reason)
        self._wake()

    def _wake(self) -> None:
        """Something the lease watcher or wait_idle waits for: a new job (an earlier deadline),
        a job gone, or a new lease TTL."""
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
        self._set_in_flight()

    def _set_in_flight(self) -> None:
        if self._metrics is not None:
            self._metrics.set_jobs_in_flight(len(self._running))

    async def _watch_leases(self) -> None:
        """Stop every running job whose unrenewed deadline minus the margin has passed."""
        while True:
            margin = lease_margin_s(self._lease_ttl_s)
            due = [j.deadline - margin for j in self._jobs.values() if j.phase in ACTIVE_PHASES]
            self._watch_due = min(due, default=math.inf)
            wake_at = self._watch_due if due else None
            await _until_changed_or(self._changed, self.clock, wake_at)
            now = self.clock.now()
            margin = lease_margin_s(self._lease_ttl_s)
            for job in list(self._jobs.values()):
                if job.phase in ACTIVE_PHASES and now >= job.deadline - margin:
                    self.lease_aborts.append(LeaseAbort(job.job_id, job.epoch, job.phase, now))
                    doubt = " (in doubt: its commit was under way)" if job.committed else ""
                    log.error(
                        "job %s: lease not renewed, %.1fs before its deadline; stopping it%s",
                        job.job_id,
                        job.deadline - now,
                        doubt,
                    )
                    self.abandon(job, "lease could not be renewed in time")


async def _until_changed_or(changed: anyio.Event, clock: Clock, deadline: float | None) -> None:
    """Wait for `changed`, or until `deadline` on `clock` when there is one."""
    async with anyio.create_task_group() as tg:

        async def sleep() -> None:
            assert deadline is not None
            await clock.sleep_until(deadline)
            tg.cancel_scope.cancel()

        if deadline is not None:
            tg.start_soon(sleep)
        await changed.wait()
        tg.cancel_scope.cancel()
