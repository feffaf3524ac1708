"""The lease core's open posts: each post with an unfinished job, its jobs' ids, its derived
status, and the summary of each publishing round.

Owned by one LeaseCore (style.md 1). A post whose status may have changed is "touched"; settle()
re-derives the touched posts' status (design.md: from their jobs), writes one audit entry per
finished publishing round (PUBLISH_ATTEMPT, then PUBLISH_RETRY — each target's outcome, like the
field's `social_media_post` / `social_media_post_retry` entries), and reports the posts whose
jobs are all finished so the core can forget them.
"""

from __future__ import annotations

from collections.abc import Mapping

from coordinator.domain import (
    LEASED_STATUSES,
    TERMINAL_JOB_STATUSES,
    AuditEvent,
    Job,
    JobStatus,
    Post,
    PostStatus,
    Target,
    iso_utc,
)
from coordinator.leasing.copies import snapshot
from coordinator.leasing.effects import Effects
from coordinator.leasing.state import SYSTEM
from coordinator.poststatus import derive_post_status
from coordinator.store.base import PostWrite

# Once scheduled, a post's status is derived from its jobs (before that, operators set it).
DERIVED_STATUSES = frozenset(
    {PostStatus.SCHEDULED, PostStatus.PUBLISHING, PostStatus.PUBLISHED, PostStatus.FAILED}
)


class PostBook:
    def __init__(self, *, derive_status: bool = True) -> None:
        """`derive_status` False: settle() writes no derived status (nor its audit): the store
        derives it inside the batch from every job of the post, which a core holding only some
        shards does not see. Round summaries stay here."""
        self.derive_status = derive_status
        self.posts: dict[str, Post] = {}
        self.post_jobs: dict[str, set[str]] = {}
        self._touched: set[str] = set()
        self._round_results: dict[str, dict[Target, Job]] = {}
        self._rounds: dict[str, int] = {}
        self._round_started: dict[str, float] = {}

    def add(self, post: Post) -> None:
        self.posts[post.id] = post
        self.post_jobs.setdefault(post.id, set())

    def track(self, job: Job) -> None:
        self.post_jobs.setdefault(job.post_id, set()).add(job.id)

    def touch(self, post_id: str) -> None:
        self._touched.add(post_id)

    def round_started(self, post_id: str, now: float) -> None:
        self._round_started.setdefault(post_id, now)

    def record_result(self, job: Job) -> None:
        """An attempt of `job` ended: it belongs in the current round's summary."""
        self._round_results.setdefault(job.post_id, {})[job.target] = job

    def settle(self, jobs: Mapping[str, Job], now: float) -> tuple[Effects, list[str]]:
        fx = Effects()
        finished: list[str] = []
        touched, self._touched = self._touched, set()
        for post_id in sorted(touched):
            post = self.posts.get(post_id)
            if post is None:
                continue
            post_jobs = [jobs[j] for j in sorted(self.post_jobs.get(post_id, ())) if j in jobs]
            if self.derive_status and post.status in DERIVED_STATUSES:
                new = derive_post_status(post_jobs)
                if new is not post.status:
                    old = post.status
                    post.status, post.updated_at = new, now
                    fx.batch.post_writes.append(PostWrite(snapshot(post), frozenset({old})))
                    fx.batch.audits.append(
                        AuditEvent(
                            "POST_STATUS_CHANGED",
                            post_id,
                            SYSTEM,
                            now,
                            {"from": old.value, "to": new.value},
                        )
                    )
            self._summarise(fx, post_id, post_jobs, now)
            if post_jobs and all(j.status in TERMINAL_JOB_STATUSES for j in post_jobs):
                finished.append(post_id)
        return fx, finished

    def _summarise(self, fx: Effects, post_id: str, jobs: list[Job], now: float) -> None:
        """One audit entry per publishing round of a post, once all its leases have ended."""
        results = self._round_results.get(post_id)
        if not results or any(j.status in LEASED_STATUSES for j in jobs):
            return
        del self._round_results[post_id]
        n = self._rounds[post_id] = self._rounds.get(post_id, 0) + 1
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
        statuses = [v["status"] for v in targets.values()]
        ok = all(s == JobStatus.SUCCEEDED.value for s in statuses)
        any_ok = any(s == JobStatus.SUCCEEDED.value for s in statuses)
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

    def drop_job(self, job: Job) -> bool:
        """The job left this core (its shard was evicted): it is no longer the post's here, nor
        in the post's round summary. True when the post has no job left here."""
        job_ids = self.post_jobs.get(job.post_id)
        if job_ids is None:
            return False
        job_ids.discard(job.id)
        results = self._round_results.get(job.post_id)
        if results is not None and (ended := results.get(job.target)) and ended.id == job.id:
            del results[job.target]
        return not job_ids

    def forget(self, post_id: str) -> set[str]:
        """Drop a post; the ids of its jobs, for the core to drop too."""
        self.posts.pop(post_id, None)
        self._round_results.pop(post_id, None)
        self._rounds.pop(post_id, None)
        self._round_started.pop(post_id, None)
        self._touched.discard(post_id)
        return self.post_jobs.pop(post_id, set())
