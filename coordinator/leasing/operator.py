"""The operators' commands on jobs, gates and logins, as the lease core carries them out."""

from __future__ import annotations

import dataclasses

from coordinator.domain import (
    TERMINAL_JOB_STATUSES,
    AuditEvent,
    Job,
    JobStatus,
    LoginState,
    Target,
)
from coordinator.errors import FailedPrecondition
from coordinator.leasing import outbound as o
from coordinator.leasing.effects import (
    Effects,
)
from coordinator.leasing.outcomes import AttemptOutcomes
from coordinator.leasing.state import Lease


class OperatorActions(AttemptOutcomes):
    def confirm(self, job_id: str, actor: str, now: float) -> Effects:
        fx = Effects()
        job = self._job(job_id)
        lease = self.leases.get(job_id)
        if job.status is not JobStatus.AWAITING_CONFIRM or lease is None:
            raise FailedPrecondition(not_awaiting_confirm(job))
        lease.confirmed = True
        lease.awaiting_since = None
        self._move(fx, job, JobStatus.RUNNING, now, actor=actor, action="JOB_CONFIRMED")
        if lease.session_id is not None:
            fx.send(lease.session_id, o.Confirm(job_id, lease.epoch))
        return fx

    def _confirm_overdue(self, lease: Lease, now: float) -> bool:
        since = lease.awaiting_since
        return since is not None and now - since > self.config.confirm_timeout_s

    def confirm_timed_out(self, job_id: str, now: float) -> Effects:
        """Nobody confirmed in time: the worker is told to stop (it has not committed: a job
        awaiting confirmation has no permit), the lease ends and the job FAILs; an operator may
        retry it."""
        fx = Effects()
        job = self.jobs[job_id]
        lease = self.leases[job_id]
        timeout = self.config.confirm_timeout_s
        message = f"{CONFIRM_TIMEOUT_PREFIX}{timeout:g}s; nothing was posted"
        if lease.session_id is not None:
            fx.send(lease.session_id, o.Cancel(job_id, lease.epoch, message))
        job.last_error_class, job.last_error = None, message
        details: dict[str, object] = {
            "target": str(job.target),
            "attempt": job.attempt,
            "epoch": lease.epoch,
            "device": job.device_id,
            "waited_s": round(now - (lease.awaiting_since or now), 3),
            "timeout_s": timeout,
        }
        self._finish_attempt(
            fx,
            job,
            JobStatus.FAILED,
            "failed",
            now,
            action="JOB_CONFIRM_TIMEOUT",
            details=details,
            error_class="CONFIRM_TIMEOUT",
        )
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
            fx.send(lease.session_id, o.Cancel(job_id, lease.epoch, reason))
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
        if force:
            job.not_before = now
            self.force_gate.add(job_id)
        else:
            # Without --force it waits for its account's gate like any other job: say so.
            job.not_before = max(now, self.gates.closed_until(job.target))
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
        self.scope.check_owner(target)  # its jobs are another coordinator's to requeue
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
        self.scope.check_owner(target)  # another shard's gate is written by its owner only
        fx = Effects()
        fx.batch.gates.append(self.gates.reopen(target))
        fx.batch.audits.append(AuditEvent("GATE_REOPENED", str(target), actor, now, {}))
        fx.extend(self.dispatch(now))
        return fx


CONFIRM_TIMEOUT_PREFIX = "not confirmed within "


def not_awaiting_confirm(job: Job) -> str:
    """Why ConfirmJob is refused for a job not waiting for a confirmation, and what to do."""
    if job.status is JobStatus.FAILED and job.last_error.startswith(CONFIRM_TIMEOUT_PREFIX):
        return (
            f"job {job.id} was released: {job.last_error}. `postroom job retry {job.id}` runs "
            "it again; confirm it when it waits for a confirmation again"
        )
    return f"job {job.id} is {job.status.value}; only AWAITING_CONFIRM jobs can be confirmed"
