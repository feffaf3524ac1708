"""The lease core's side of the operators' post commands: taking in a post the store holds,
(re)scheduling its jobs, and cancelling or deleting them. Every change of a job's status here is
a checked, audited transition (`_move`), like the core's own; coordinator/posts.py decides the
post's side and calls these."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from coordinator.domain import (
    LEASED_STATUSES,
    TERMINAL_JOB_STATUSES,
    AuditEvent,
    Job,
    JobStatus,
    Post,
    Target,
    idempotency_key,
    platform_key,
)
from coordinator.leasing.copies import snapshot
from coordinator.leasing.effects import Effects
from coordinator.leasing.intake import Intake

# A reschedule cancels a target's jobs of an earlier schedule that are still waiting.
_SUPERSEDABLE = frozenset({JobStatus.QUEUED, JobStatus.NEEDS_LOGIN, JobStatus.FAILED})


class Scheduling(Intake):
    def adopt(self, post: Post, jobs: tuple[Job, ...]) -> None:
        """Take in a post the core had let go (never scheduled, or finished) with all its jobs,
        as copies, so a command on it works on the core's own objects like on an open post's."""
        if post.id in self.posts:
            return
        self.book.add(snapshot(post))
        for job in jobs:
            if self.scope.owns(job.target):  # another shard's jobs are its owner's to change
                self.track(snapshot(job))

    def jobs_of(self, post_id: str) -> list[Job]:
        """An open post's jobs (the core holds all of them), oldest first, as the store lists
        them."""
        jobs = [self.jobs[j] for j in self.post_jobs.get(post_id, ()) if j in self.jobs]
        return sorted(jobs, key=lambda j: (j.created_at, j.id))

    def schedule_jobs(
        self,
        post: Post,
        when: float,
        new_job_id: str,
        actor: str,
        now: float,
        *,
        only: Callable[[Target], bool] | None = None,
    ) -> tuple[Effects, list[Job], list[str], list[Target]]:
        """Upsert one job per target of the open `post` on its idempotency key: published and
        publishing targets are skipped, waiting jobs of an earlier schedule superseded. Only
        targets whose shard this core owns: the others ("remote") are left to their owners.
        `only`: of those, just the targets it says (a post task is one shard's). Returns the
        effects, the jobs it touched, the targets it skipped and the remote ones (none for a
        core holding every shard)."""
        fx = Effects()
        by_target: dict[Target, list[Job]] = {}
        for job in self.jobs_of(post.id):  # one pass: jobs grow with targets and reschedules
            by_target.setdefault(job.target, []).append(job)
        touched: list[Job] = []
        skipped: list[str] = []
        remote: list[Target] = []
        for n, target in enumerate(post.targets):
            if not self.scope.owns(target):
                remote.append(target)
                continue
            if only is not None and not only(target):
                continue
            mine = by_target.get(target, [])
            if any(j.status is JobStatus.SUCCEEDED or j.status in LEASED_STATUSES for j in mine):
                # Published targets are never published again; one being published right now
                # is left to finish its attempt.
                skipped.append(str(target))
                continue
            key = idempotency_key(post.id, target, when)
            same_key = next((j for j in mine if j.idempotency_key == key), None)
            touched += self._supersede(fx, mine, same_key, now, actor)
            not_before = max(when, self.gates.closed_until(target))
            if same_key is None:
                job = self._new_job(post, f"{new_job_id}{n}", target, key, when, not_before, now)
                # An earlier job of the target may have published (a permit, no answer): the new
                # one looks on the platform first, or it could post a second time.
                job.verify_first = any(j.verify_first for j in mine)
                fx.batch.new_jobs.append(snapshot(job))
                details = {"post": post.id, "key": key}
                fx.batch.audits.append(AuditEvent("JOB_CREATED", job.id, actor, now, details))
                touched.append(job)
            elif same_key.status is JobStatus.CANCELLED:
                skipped.append(str(target))
            else:
                _refresh_content(same_key, post, target, not_before)
                self._rewrite(fx, same_key, JobStatus.QUEUED, now, actor)
                touched.append(same_key)
        return fx, touched, skipped, remote

    @staticmethod
    def _new_job(
        post: Post,
        job_id: str,
        target: Target,
        key: str,
        when: float,
        not_before: float,
        now: float,
    ) -> Job:
        return Job(
            id=job_id,
            post_id=post.id,
            platform=target.platform,
            account=target.account,
            status=JobStatus.QUEUED,
            idempotency_key=key,
            platform_key=platform_key(post.id, target, post.content_hash),
            content_hash=post.content_hash,
            text=post.text,
            media=post.media,
            scheduled_at=when,
            created_at=now,
            updated_at=now,
            # A closed gate holds it back until it opens: show that as its next try.
            not_before=not_before,
            max_attempts=post.max_attempts,
            require_confirm=post.require_confirm,
        )

    def _supersede(
        self, fx: Effects, mine: list[Job], keep: Job | None, now: float, actor: str
    ) -> list[Job]:
        """Cancel a target's waiting jobs of an earlier schedule (all but `keep`)."""
        out = []
        for old in mine:
            if old is not keep and old.status in _SUPERSEDABLE:
                old.last_error = "superseded by a reschedule"
                self._rewrite(fx, old, JobStatus.CANCELLED, now, actor, old.last_error)
                out.append(old)
        return out

    def _rewrite(
        self, fx: Effects, job: Job, new: JobStatus, now: float, actor: str, reason: str = ""
    ) -> None:
        """A reschedule's write of one job: a change of status is a checked, audited move."""
        if job.status is new:
            self._write(fx, job, {new}, job.lease_epoch, now)
            return
        details: dict[str, object] = {"by": "reschedule"}
        if reason:
            details["reason"] = reason
        self._move(fx, job, new, now, actor=actor, details=details)

    def cancel_jobs(self, post_id: str, actor: str, reason: str, now: float) -> Effects:
        """Cancel an open post's unfinished jobs, except those already publishing (a commit
        permit): their results will be recorded."""
        fx = Effects()
        self.book.touch(post_id)  # settled next: forgotten once all its jobs are finished
        # Leased jobs last: cancelling one frees a worker slot, and the dispatch that follows
        # must not hand that worker a sibling of this post that is about to be cancelled.
        for job in sorted(self.jobs_of(post_id), key=lambda j: j.id in self.leases):
            lease = self.leases.get(job.id)
            if job.status in TERMINAL_JOB_STATUSES or (lease is not None and lease.run.committed):
                continue
            fx.extend(self.cancel(job.id, actor, reason, now))
        return fx

    def delete_jobs(
        self, post: Post, actor: str, reason: str, now: float
    ) -> tuple[Effects, list[str]]:
        """Cancel every unfinished job of a post being deleted, then forget the post. Returns
        the ids of the jobs it cancelled."""
        fx = Effects()
        # Held from here (an approval no job matches): no dispatch hands out a job of this post,
        # and no worker holding one gets a commit permit, while its siblings are being cancelled.
        self.book.add(dataclasses.replace(post, approved_hash=""))
        cancelled: list[str] = []
        for job in sorted(self.jobs_of(post.id), key=lambda j: j.id in self.leases):
            if job.status not in TERMINAL_JOB_STATUSES:
                fx.extend(self.cancel(job.id, actor, reason, now))
                cancelled.append(job.id)
        self.forget_post(post.id)
        return fx, cancelled


def _refresh_content(job: Job, post: Post, target: Target, when: float) -> None:
    job.text, job.media, job.content_hash = post.text, post.media, post.content_hash
    job.platform_key = platform_key(post.id, target, post.content_hash)
    job.not_before = when
    job.require_confirm = post.require_confirm
    if job.counted_attempts >= job.max_attempts:
        job.max_attempts = job.counted_attempts + post.max_attempts
