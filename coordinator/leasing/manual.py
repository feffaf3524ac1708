"""What a person did outside postroom, recorded by the lease core: a post published by hand
(ResolveJob), and the checks that keep a person from acting while postroom may be publishing."""

from __future__ import annotations

from coordinator.domain import AuditEvent, JobStatus, iso_utc
from coordinator.errors import FailedPrecondition
from coordinator.leasing import outbound as o
from coordinator.leasing.base import run_row
from coordinator.leasing.copies import snapshot
from coordinator.leasing.effects import AttemptEnded, Effects
from coordinator.leasing.operator import OperatorActions
from coordinator.transitions import check_job


class ManualActions(OperatorActions):
    def permit_wait(self, job_id: str) -> str:
        """Why nobody may act on this job yet: an attempt holds a live commit permit and may be
        publishing right now (what to wait for: its result, or its lease's end). Empty if none."""
        lease = self.leases.get(job_id)
        if lease is None or not lease.run.committed:
            return ""
        until = iso_utc(lease.acts_until() + self.config.expiry_margin_s)
        return (
            f"job {job_id} may be publishing right now: its attempt on device "
            f"{lease.run.device_id} holds a commit permit; wait for its result, or for its "
            f"lease to end at {until}, then try again"
        )

    def resolve(
        self, job_id: str, url: str, post_id: str, actor: str, reason: str, now: float
    ) -> Effects:
        """A person published the job's post by hand: the job is SUCCEEDED with that URL. A
        lease held before its permit ends and its worker is told to stop; the epoch moves on, so
        nothing that worker sends about it counts any more."""
        job = self._job(job_id)
        if job.status is JobStatus.SUCCEEDED:
            by = f" (recorded by hand by {job.resolved_by})" if job.resolved_by else ""
            raise FailedPrecondition(
                f"job {job_id} is already SUCCEEDED{by}: {job.result_url or 'no URL'}; nothing "
                "to record"
            )
        if job.status is JobStatus.CANCELLED:
            raise FailedPrecondition(
                f"job {job_id} is CANCELLED and stays so; to track a post made by hand for "
                f"{job.target}, schedule the post again and resolve its new job"
            )
        wait = self.permit_wait(job_id)
        if wait:
            raise FailedPrecondition(wait)
        fx = Effects()
        old, old_epoch = job.status, job.lease_epoch
        check_job(job.id, old, JobStatus.SUCCEEDED)
        lease = self._end_lease(job)
        if lease is not None:
            if lease.session_id is not None:
                stop = o.Cancel(job_id, lease.epoch, f"published by hand ({actor})")
                fx.send(lease.session_id, stop)
            job.lease_epoch += 1  # fences the stopped attempt for good
            lease.run.ended_at, lease.run.outcome = now, "resolved_by_hand"
            fx.batch.runs.append(run_row(lease.run))
            ended = AttemptEnded(snapshot(job), "resolved_by_hand",
                                 now - lease.run.started_at)  # fmt: skip
            fx.signals.append(ended)
        job.status = JobStatus.SUCCEEDED
        job.result_url, job.result_post_id, job.resolved_by = url, post_id, actor
        job.last_error_class, job.last_error = None, ""
        job.verify_first = False
        self.force_gate.discard(job_id)
        self._write(fx, job, {old}, old_epoch, now)
        details: dict[str, object] = {
            "from": old.value,
            "to": JobStatus.SUCCEEDED.value,
            "target": str(job.target),
            "url": url,
            "post_id": post_id,
            "reason": reason,
            "stopped_epoch": lease.epoch if lease is not None else 0,
        }
        fx.batch.audits.append(AuditEvent("JOB_RESOLVED_BY_HAND", job_id, actor, now, details))
        if lease is not None:
            fx.extend(self.dispatch(now))  # the stopped attempt's slot is free
        return fx
