"""How attempts end: a worker's result, a retry decision, a lost lease (recovery)."""

from __future__ import annotations

import dataclasses

from coordinator.domain import (
    TERMINAL_JOB_STATUSES,
    AuditEvent,
    ErrorClass,
    Job,
    JobStatus,
    LoginState,
    Target,
)
from coordinator.leasing import outbound as o
from coordinator.leasing.base import CoreBase, run_row
from coordinator.leasing.commands import JobReport
from coordinator.leasing.copies import snapshot
from coordinator.leasing.effects import (
    AttemptEnded,
    Effects,
    LeaseExpired,
    RateLimitHit,
)
from coordinator.leasing.state import SYSTEM
from coordinator.retry import (
    Fail,
    Failure,
    NeedsLogin,
    RetryAt,
    decide,
    decide_lease_lost,
)

UNPERMITTED = (
    "a success counts only after a commit permit, or as a post found by a verify_first attempt"
)


class AttemptOutcomes(CoreBase):
    def result(self, session_id: str, r: JobReport, now: float) -> Effects:
        """A worker's report of how an attempt ended: accepted only from the current lease, or
        as a late success from the epoch (and device) that held the commit permit."""
        fx = Effects()
        job = self.jobs.get(r.job_id)
        lease = self._lease_of(session_id, r.job_id, r.epoch)

        def answer(accepted: bool, reason: str = "") -> None:
            fx.send(session_id, o.ResultAck(r.job_id, r.epoch, accepted, reason))

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
            and self._committed_by.get(job.id) == (r.epoch, session.device_id)
            and job.status not in TERMINAL_JOB_STATUSES
        )
        if lease is None and not late_success:
            answer(False, self._stale_reason(r.job_id, r.epoch))
            return fx
        if (
            r.success
            and lease is not None
            and not lease.run.committed
            and not (r.found_existing and (lease.verify_only or job.verify_first))
        ):
            answer(False, UNPERMITTED)
            fx.extend(self._refuse_unpermitted(session_id, job, r.epoch, now))
            return fx
        current = self.leases.get(job.id)
        if late_success and current is not None and current.session_id is not None:
            cancel = o.Cancel(job.id, current.epoch, "an earlier attempt published it")
            fx.send(current.session_id, cancel)
        if r.success:
            self._succeeded(fx, session_id, job, r, now)
        else:
            self._failed(fx, session_id, job, r, now)
        answer(True)
        fx.extend(self.dispatch(now))
        return fx

    def _refuse_unpermitted(self, session_id: str, job: Job, epoch: int, now: float) -> Effects:
        """Nothing may be published without a permit, so this success claims a post that was
        never allowed (a broken or hostile worker): refused, and the job runs again elsewhere."""
        fx = Effects()
        self._drop(fx, session_id, job.id, epoch, UNPERMITTED)
        refused = {"epoch": epoch, "reason": UNPERMITTED}
        fx.batch.audits.append(
            AuditEvent("JOB_RESULT_REFUSED", job.id, self._actor(session_id), now, refused)
        )
        fx.extend(
            self._recover(job.id, now, reason="success reported without a permit", reported=True)
        )
        fx.extend(self.dispatch(now))
        return fx

    def _succeeded(self, fx: Effects, session_id: str, job: Job, r: JobReport, now: float) -> None:
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

    def _failed(self, fx: Effects, session_id: str, job: Job, r: JobReport, now: float) -> None:
        current = self.leases.get(job.id)
        run = current.run if current is not None else None
        error_class = r.error_class
        committed = run is not None and run.committed
        verified_absent = r.verified_absent and current is not None and current.verify_only
        message = r.error_message  # the command is a value: never written to
        if verified_absent:
            # It looked and the post is not there: the job failed for good, nothing hidden.
            job.verify_first = False
            message = f"a final look found no post on the platform (before it: {job.last_error})"
        elif (
            committed
            and error_class in (ErrorClass.TRANSIENT, ErrorClass.UI_CHANGED)
            and not r.not_created
        ):
            # The platform may have the post: the next attempt looks before posting. Once
            # max_attempts are used up, the next attempts only look (verify_only): a job
            # whose post exists must not end FAILED, and nothing is posted past the limit.
            job.verify_first = True
            error_class = ErrorClass.TRANSIENT
        failure = Failure(error_class, message, r.retry_at, r.quota_cap)
        if run is not None:
            step = r.failed_step + (f" ({r.selector})" if r.selector else "")
            run.error_class, run.error, run.failed_step = error_class, message, step
        if verified_absent and self._post_cancelled(job):
            # Its post was cancelled while it was publishing, and that did not land: cancelled.
            job.last_error_class, job.last_error = error_class, message
            self._finish_attempt(
                fx,
                job,
                JobStatus.CANCELLED,
                "cancelled",
                now,
                actor=self._actor(session_id),
                action="JOB_CANCELLED",
                details={"reason": "post cancelled; a look found no post on the platform"},
            )
            return
        self._fail_attempt(fx, job, failure, now, session_id, r.execution_time_ms)

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
            fx.batch.runs.append(run_row(lease.run))
            fx.signals.append(
                AttemptEnded(
                    snapshot(job),
                    outcome,
                    now - lease.run.started_at,
                    error_class,
                    retry_reason,
                    retry_at,
                )
            )
            self.book.record_result(snapshot(job))

    def _hold_queued_behind_gate(self, fx: Effects, failed: Job, now: float) -> None:
        """The gate of `failed`'s account just closed: the account's other waiting jobs show
        (and keep) a next try no earlier than its opening, as that is when they will run."""
        until = self.gates.closed_until(failed.target)
        for job in self.jobs.values():
            if (
                job is not failed
                and job.status is JobStatus.QUEUED
                and job.target == failed.target
                and job.not_before < until
            ):
                job.not_before = until
                self._write(fx, job, {JobStatus.QUEUED}, job.lease_epoch, now)
                self.queue.push(job)  # the ready queue is ordered by not_before

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
        base = _failure_details(job, failure, execution_time_ms)
        match decision:
            case RetryAt(at=at, reason=reason):
                if failure.error_class is ErrorClass.RATE_LIMITED:
                    self._close_gate(fx, job, failure, at, actor, now)
                # Never a next try before the account's gate opens: it would not happen then.
                job.not_before = max(at, self.gates.closed_until(job.target))
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
                transient = failure.error_class is ErrorClass.TRANSIENT
                job.last_error = reason if transient else failure.message
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
                self._signed_out(fx, device_id, job.target, failure.message, now)

    def _close_gate(
        self, fx: Effects, job: Job, failure: Failure, until: float, actor: str, now: float
    ) -> None:
        """The platform rate-limited the account: its gate closes until `until`."""
        job.rate_limited_count += 1
        rec = self.gates.close(job.target, until, _gate_reason(failure))
        fx.batch.gates.append(rec)
        fx.signals.append(RateLimitHit(job.platform, job.account, job.id, until))
        details = {"until": until, "reason": rec.reason}
        fx.batch.audits.append(AuditEvent("GATE_CLOSED", str(job.target), actor, now, details))
        self._hold_queued_behind_gate(fx, job, now)

    def _signed_out(
        self, fx: Effects, device_id: str, target: Target, message: str, now: float
    ) -> None:
        """The device met a login wall for `target`: its badge says so."""
        device = self.devices.get(device_id)
        if device is not None:
            device.logins[target] = (LoginState.NEEDS_LOGIN, now, message)
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

    def _look_again(self, job: Job, now: float, details: dict[str, object]) -> RetryAt:
        """The lost look is given back (`lost_looks` do not count against max_attempts), and the
        job looks again after the platform's transient backoff, by the looks lost so far:
        exponential, capped at its max_interval_s (300 s by default), so a starved worker is
        not handed the same look at once, again and again."""
        job.lost_looks += 1
        delay = self.retry.for_platform(job.platform).backoff_s(job.lost_looks, self._rand())
        details["look_again"] = f"lost before it looked ({job.lost_looks} so far); not counted"
        return RetryAt(now + delay, "lease_lost")

    def _recover(self, job_id: str, now: float, *, reason: str, reported: bool = False) -> Effects:
        """A lease ended without a result (`reported`: with a refused one): count the attempt,
        verify first if it had committed. An attempt of a job in doubt that never came back nor
        asked for a permit (one looks before asking) told nothing about the platform: it does
        not count, and the job looks again after a backoff (never FAILED for looks not made)."""
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
        # Looking comes before asking for a permit: an attempt that asked had looked.
        lost_look = job.verify_first and not (committed or lease.asked_commit or reported)
        if committed:
            job.verify_first = True  # in doubt: the platform may have the post
        decision: RetryAt | Fail | NeedsLogin
        if lost_look:
            decision = self._look_again(job, now, details)
        else:
            decision = decide_lease_lost(job, now)
            if isinstance(decision, Fail) and self._may_verify_again(job, ErrorClass.TRANSIENT):
                decision = RetryAt(now, "lease_lost")  # past max_attempts it only looks
        job.last_error_class = ErrorClass.TRANSIENT
        job.last_error = f"lease lost ({reason})" + (", before it looked" if lost_look else "")
        if isinstance(decision, RetryAt):
            job.not_before = decision.at
            self._finish_attempt(
                fx,
                job,
                JobStatus.QUEUED,
                "lease_lost",
                now,
                action="JOB_STUCK_RECOVERY",
                details={**details, "next": "QUEUED", "retry_at": decision.at},
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


def _failure_details(job: Job, failure: Failure, execution_time_ms: int) -> dict[str, object]:
    return {
        "target": str(job.target),
        "attempt": job.attempt,
        "error_class": failure.error_class.value,
        "error": failure.message,
        "execution_time_ms": execution_time_ms,
    }


def _gate_reason(failure: Failure) -> str:
    kind = "quota cap" if failure.quota_cap else "429 rate limited"
    return f"{kind}: {failure.message}" if failure.message else kind
