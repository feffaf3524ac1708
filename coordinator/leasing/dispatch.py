"""The lease core's dispatch: handing due jobs to sessions with free slots, one per session per
round (fairness), operator-forced retries first; each hand-out is a lease (a new epoch, a run,
an Assign written before it is sent)."""

from __future__ import annotations

from collections.abc import Callable

from coordinator.domain import AuditEvent, Job, JobStatus, Target
from coordinator.leasing import outbound as o
from coordinator.leasing.base import run_row
from coordinator.leasing.copies import snapshot
from coordinator.leasing.effects import AttemptStarted, Dispatched, Effects
from coordinator.leasing.scheduling import Scheduling
from coordinator.leasing.state import SYSTEM, Lease, Session
from coordinator.store.base import JobWrite
from coordinator.transitions import check_job


class Dispatching(Scheduling):
    def dispatch(self, now: float) -> Effects:
        """Hand due jobs to sessions with free slots, one per session per round (fairness)."""
        fx = Effects()
        self._dispatched_at = now
        serves = self.scope.serving()  # None for a core holding every shard: nothing to check
        self._dispatch_forced(fx, now, serves)
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
                    self._full_accounts(session) if session.per_account else (),
                    serves,
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

    def _dispatch_forced(
        self, fx: Effects, now: float, serves: Callable[[Target], bool] | None
    ) -> None:
        """Jobs an operator retried with --force go first, through a closed gate (the queue
        would pick by gate and not_before, so another job of the target could jump in)."""
        for job_id in sorted(self.force_gate):
            job = self.jobs.get(job_id)
            if job is None or job.status is not JobStatus.QUEUED:
                self.force_gate.discard(job_id)
                continue
            if job.not_before > now or self._held(job):
                continue
            if serves is not None and not serves(job.target):
                continue  # its shard is leaving: it waits here until evicted
            session = next(
                (
                    s
                    for s in self.sessions.values()
                    if s.free_slots > 0
                    and s.serves(job.target)
                    and not (s.per_account and job.target in self._full_accounts(s))
                ),
                None,
            )
            if session is not None:
                self.force_gate.discard(job_id)
                self._assign(fx, session, job, now)

    def _gate_open_at(self, target: Target, now: float) -> float:
        return self.gates.open_at(target, now)

    def _assign(self, fx: Effects, session: Session, job: Job, now: float) -> None:
        old_epoch = job.lease_epoch
        # An earlier attempt may have published, and either its attempts are used up or its
        # post was cancelled while it was publishing: only look, never publish.
        verify_only = job.verify_first and (
            job.counted_attempts >= job.max_attempts or self._post_cancelled(job)
        )
        check_job(job.id, job.status, JobStatus.CLAIMED)
        job.status = JobStatus.CLAIMED
        job.lease_epoch += 1
        job.attempt += 1
        job.device_id = session.device_id
        deadline = now + self.config.lease_ttl_s
        job.lease_expires_at = deadline
        job.updated_at = now
        run = self._new_run(job, now)
        self.leases[job.id] = Lease(
            job.id,
            job.lease_epoch,
            session.id,
            deadline,
            run,
            verify_only=verify_only,
            granted_at=now,
        )
        session.jobs.add(job.id)
        self.gates.lease_started(job.target, job.id)
        copy = snapshot(job)  # read-only from here: one copy serves all three
        fx.batch.job_writes.append(JobWrite(copy, frozenset({JobStatus.QUEUED}), old_epoch))
        fx.batch.runs.append(run_row(run))
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
        fx.changed_jobs[job.id] = copy
        self.book.touch(job.post_id)
        self.book.round_started(job.post_id, now)
        fx.send(session.id, o.Assign(copy, deadline, verify_only))
        fx.signals.append(AttemptStarted(copy, session.id))
        fx.signals.append(Dispatched(max(0.0, now - job.not_before)))
