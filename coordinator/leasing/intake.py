"""The lease core's intake: taking over the open posts at start-up, adding and updating the
work scheduling makes, and settling and forgetting posts whose jobs have all finished."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from coordinator.domain import LEASED_STATUSES, Job, JobStatus, Post, Run, Target
from coordinator.leasing.effects import Effects
from coordinator.leasing.manual import ManualActions
from coordinator.leasing.state import Lease


class Intake(ManualActions):
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
        previous process started, instead of leaving that one "running" forever.

        Only jobs of the scope's shards are taken, and it adds to what the core holds (a shard
        taken later): a post or job already held stays as it is."""
        for post in posts:
            if post.id not in self.posts:
                self.book.add(post)
        for job in jobs:
            if job.id in self.jobs or not self.scope.owns(job.target):
                continue
            self.track(job)
            if job.committed_epoch and job.committed_epoch == job.lease_epoch:
                self._committed_by[job.id] = (job.committed_epoch, job.device_id)
            if job.status in LEASED_STATUSES:
                run = self._new_run(job, now)
                run.committed = job.committed_epoch == job.lease_epoch
                prev = (runs or {}).get(job.id)
                if prev is not None and prev.lease_epoch == job.lease_epoch:
                    run.id, run.started_at = prev.id, prev.started_at
                deadline = max(job.lease_expires_at or 0.0, now + self.config.restart_grace_s)
                lease = Lease(job.id, job.lease_epoch, None, deadline, run)
                if job.status is JobStatus.AWAITING_CONFIRM:
                    lease.awaiting_since = job.updated_at  # its last write was that move
                self.leases[job.id] = lease
                self.gates.lease_started(job.target, job.id)
            elif job.status is JobStatus.QUEUED:
                self.queue.push(job)

    def add_post_jobs(self, post: Post, new_jobs: Iterable[Job], now: float) -> Effects:
        """Jobs created or requeued by scheduling (already written by the caller's batch)."""
        self.book.add(post)
        for job in new_jobs:
            self.track(job)
            if job.status is JobStatus.QUEUED:
                self.queue.push(job)
        self.book.touch(post.id)
        if not self.post_jobs.get(post.id):
            self.book.forget(post.id)  # every target's shard is another's: nothing to hold here
        return self.dispatch(now)

    def update_post(self, post: Post) -> None:
        """The post's content or approval changed: held jobs follow the new approval."""
        if post.id in self.posts:
            self.posts[post.id] = post
            for job_id in self.post_jobs.get(post.id, ()):
                job = self.jobs[job_id]
                if job.status is JobStatus.QUEUED and not self._held(job):
                    self.queue.push(job)

    # ---- posts ---------------------------------------------------------------------------

    def settle_posts(self, now: float) -> Effects:
        """Re-derive the status of posts whose jobs changed, write round summaries, and forget
        posts whose jobs are all finished (see PostBook.settle)."""
        fx, finished = self.book.settle(self.jobs, now)
        for post_id in finished:
            self.forget_post(post_id)
        return fx

    # ---- shards --------------------------------------------------------------------------

    def take_shards(self, shards: Iterable[int]) -> None:
        """Own `shards` from now on (their jobs come with load())."""
        self.scope = self.scope.taking(shards)

    def leave_shards(self, shards: Iterable[int]) -> None:
        """No new lease for jobs of `shards`; their leases finish, their queued jobs wait."""
        self.scope = self.scope.leaving_too(shards)

    def evict_shards(self, shards: Iterable[int], *, force: bool = False) -> bool:
        """Drop the jobs of `shards` (queued, leased, waiting), their gates, and the posts left
        with no job here, and stop owning them. While one of their jobs is leased nothing is
        dropped and it returns False, unless `force` (the lease is forgotten: the shard's next
        owner keeps it for its worker to resume, or recovers it). True when dropped."""
        gone = frozenset(shards)
        scope = self.scope
        jobs = [j for j in self.jobs.values() if scope.shard(j.target) in gone]
        if not force and any(j.id in self.leases for j in jobs):
            return False
        emptied: list[str] = []
        for job in jobs:
            if job.id in self.leases:
                self._end_lease(job)  # no message: the worker may be publishing it right now
            del self.jobs[job.id]
            self.force_gate.discard(job.id)
            self._committed_by.pop(job.id, None)
            if self.book.drop_job(job):
                emptied.append(job.post_id)
        for post_id in emptied:
            self.book.forget(post_id)

        def in_shards(target: Target) -> bool:
            return scope.shard(target) in gone

        self.queue.drop_targets(in_shards)
        self.gates.forget(in_shards)
        self.scope = scope.without(gone)
        return True

    def forget_post(self, post_id: str) -> None:
        for job_id in self.book.forget(post_id):
            self.jobs.pop(job_id, None)
            self.force_gate.discard(job_id)
            self._committed_by.pop(job_id, None)
