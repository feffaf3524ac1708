"""Compare-and-set semantics every backend shares, so they fail alike and say so alike.

A JobWrite hits when the stored job has one of its expected statuses at its expected epoch; a
PostWrite when the stored post has one of its expected statuses. Writes in one batch apply in
order, so a batch may move one job twice (CLAIMED, then RUNNING) and the second write expects
what the first wrote. The SQL backends learn *that* a batch missed from a rowcount; they then
roll back and replay the batch's writes here against the rows as stored to learn *which* one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum

from coordinator.domain import Job, JobStatus, Post, PostStatus
from coordinator.errors import ConcurrentUpdate
from coordinator.store.base import JobWrite, PostWrite


def status_token(statuses: Iterable[StrEnum]) -> str:
    """ "|A|B|": what the SQL matches `'|' || status || '|'` against with instr()."""
    return "|" + "|".join(sorted(s.value for s in statuses)) + "|"


def _names(statuses: Iterable[StrEnum]) -> str:
    return ",".join(sorted(s.value for s in statuses)) or "(nothing)"


def job_moved(write: JobWrite) -> ConcurrentUpdate:
    return ConcurrentUpdate(
        f"job {write.job.id} moved: expected {_names(write.expected_statuses)} "
        f"at epoch {write.expected_epoch}"
    )


def post_moved(write: PostWrite) -> ConcurrentUpdate:
    return ConcurrentUpdate(
        f"post {write.post.id} moved: expected {_names(write.expected_statuses)}"
    )


def job_hits(write: JobWrite, status: JobStatus, lease_epoch: int) -> bool:
    return status in write.expected_statuses and lease_epoch == write.expected_epoch


def first_job_miss(
    writes: Sequence[JobWrite], stored: Mapping[str, tuple[JobStatus, int]]
) -> ConcurrentUpdate | None:
    """Replay `writes` over `stored` (job id -> (status, epoch)); the first that misses."""
    state = dict(stored)
    for write in writes:
        now = state.get(write.job.id)
        if now is None or not job_hits(write, *now):
            return job_moved(write)
        state[write.job.id] = (write.job.status, write.job.lease_epoch)
    return None


def first_post_miss(
    writes: Sequence[PostWrite], stored: Mapping[str, PostStatus]
) -> ConcurrentUpdate | None:
    state = dict(stored)
    for write in writes:
        now = state.get(write.post.id)
        if now is None or now not in write.expected_statuses:
            return post_moved(write)
        state[write.post.id] = write.post.status
    return None


def post_exists(post: Post) -> ConcurrentUpdate:
    return ConcurrentUpdate(f"post {post.id} already exists")


def job_exists(job: Job) -> ConcurrentUpdate:
    return ConcurrentUpdate(f"job {job.id} already exists")


def key_taken(job: Job) -> ConcurrentUpdate:
    return ConcurrentUpdate(
        f"job {job.id}: idempotency key {job.idempotency_key} belongs to another job"
    )


def first_job_clash(
    new_jobs: Sequence[Job], ids: Iterable[str], keys: Iterable[str]
) -> ConcurrentUpdate | None:
    """The first new job whose id or idempotency key is taken (stored, or earlier in the batch)."""
    taken_ids, taken_keys = set(ids), set(keys)
    for job in new_jobs:
        if job.id in taken_ids:
            return job_exists(job)
        if job.idempotency_key in taken_keys:
            return key_taken(job)
        taken_ids.add(job.id)
        taken_keys.add(job.idempotency_key)
    return None


def first_post_clash(new_posts: Sequence[Post], ids: Iterable[str]) -> ConcurrentUpdate | None:
    taken = set(ids)
    for post in new_posts:
        if post.id in taken:
            return post_exists(post)
        taken.add(post.id)
    return None
