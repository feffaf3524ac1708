"""Every allowed status change, in one table per entity. The store applies them as compare-and-set.

A change not in the table raises TransitionRefused; tests walk every (from, to) pair.
"""

from __future__ import annotations

from collections.abc import Mapping

from coordinator.domain import JobStatus, PostStatus
from coordinator.errors import TransitionRefused

J = JobStatus
JOB_TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    # Leased to a worker; cancelled; failed when its content no longer matches the approval;
    # SUCCEEDED when the attempt that held the commit permit reports its post after losing the
    # lease (the job was already queued to be verified).
    J.QUEUED: frozenset({J.CLAIMED, J.CANCELLED, J.FAILED, J.SUCCEEDED}),
    # A result may arrive before the ack (the worker may verify and finish at once); a lease lost
    # goes back to QUEUED (or FAILED once attempts are exhausted).
    J.CLAIMED: frozenset(
        {J.RUNNING, J.AWAITING_CONFIRM, J.SUCCEEDED, J.FAILED, J.NEEDS_LOGIN, J.QUEUED, J.CANCELLED}
    ),
    J.RUNNING: frozenset(
        {J.AWAITING_CONFIRM, J.SUCCEEDED, J.FAILED, J.NEEDS_LOGIN, J.QUEUED, J.CANCELLED}
    ),
    # Confirmed by an operator -> RUNNING again; otherwise like RUNNING.
    J.AWAITING_CONFIRM: frozenset(
        {J.RUNNING, J.SUCCEEDED, J.FAILED, J.NEEDS_LOGIN, J.QUEUED, J.CANCELLED}
    ),
    # Back to QUEUED only after a successful login check (or an operator's retry). SUCCEEDED when
    # the attempt that held the commit permit reports its post late (a verifying rerun that met a
    # login wall put the job here meanwhile): the post exists, the job must say so.
    J.NEEDS_LOGIN: frozenset({J.QUEUED, J.CANCELLED, J.FAILED, J.SUCCEEDED}),
    # An operator's retry, or a reschedule after the author edited the post; SUCCEEDED when a
    # person published it by hand and recorded it (ResolveJob).
    J.FAILED: frozenset({J.QUEUED, J.CANCELLED, J.SUCCEEDED}),
    # Never published again, never un-cancelled.
    J.SUCCEEDED: frozenset(),
    J.CANCELLED: frozenset(),
}

P = PostStatus
# After SCHEDULED the status is derived from the jobs, so the derived ones move freely among
# themselves; editing (UpdatePost) sends any not-yet-published post back to PENDING_APPROVAL.
_DERIVED = frozenset({P.SCHEDULED, P.PUBLISHING, P.PUBLISHED, P.FAILED})
POST_TRANSITIONS: Mapping[PostStatus, frozenset[PostStatus]] = {
    P.DRAFT: frozenset({P.DRAFT, P.PENDING_APPROVAL, P.CANCELLED}),
    P.PENDING_APPROVAL: frozenset({P.PENDING_APPROVAL, P.APPROVED, P.CANCELLED}),
    P.APPROVED: frozenset({P.SCHEDULED, P.PENDING_APPROVAL, P.CANCELLED}),
    P.SCHEDULED: _DERIVED | {P.PENDING_APPROVAL, P.CANCELLED},
    P.PUBLISHING: _DERIVED | {P.PENDING_APPROVAL, P.CANCELLED},
    P.FAILED: _DERIVED | {P.PENDING_APPROVAL, P.CANCELLED},
    P.PUBLISHED: frozenset({P.PUBLISHED}),
    P.CANCELLED: frozenset({P.CANCELLED}),
}


def job_can(current: JobStatus, new: JobStatus) -> bool:
    return new in JOB_TRANSITIONS[current]


def check_job(job_id: str, current: JobStatus, new: JobStatus) -> None:
    if not job_can(current, new):
        raise TransitionRefused("job", job_id, current.value, new.value)


def post_can(current: PostStatus, new: PostStatus) -> bool:
    return new in POST_TRANSITIONS[current]


def check_post(post_id: str, current: PostStatus, new: PostStatus) -> None:
    if not post_can(current, new):
        raise TransitionRefused("post", post_id, current.value, new.value)


def job_sources(new: JobStatus) -> frozenset[JobStatus]:
    """Statuses a job may be in for a change to `new`: the expected set of a compare-and-set."""
    return frozenset(s for s, targets in JOB_TRANSITIONS.items() if new in targets)
