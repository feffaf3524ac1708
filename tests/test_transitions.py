"""Every (from, to) pair of job and post statuses against a table written out here, from design.md.

The tables below are the specification, not a copy of coordinator/transitions.py: a change to the
module that allows or refuses something new fails here until this table is changed on purpose.
"""

from __future__ import annotations

import itertools

import pytest

from coordinator.domain import JobStatus, PostStatus
from coordinator.errors import FailedPrecondition, TransitionRefused
from coordinator.transitions import check_job, check_post, job_can, job_sources, post_can

J = JobStatus
P = PostStatus

EXPECTED_JOB: dict[JobStatus, set[JobStatus]] = {
    # Leased; cancelled; failed (content no longer matches the approval); SUCCEEDED when the run
    # that held the commit permit reports its post after its lease was lost and the job requeued.
    J.QUEUED: {J.CLAIMED, J.CANCELLED, J.FAILED, J.SUCCEEDED},
    # Acked (RUNNING), waits for an operator, reports a result (possibly before the ack), loses
    # its lease (QUEUED), is cancelled. Never CLAIMED again without going through QUEUED.
    J.CLAIMED: {
        J.RUNNING,
        J.AWAITING_CONFIRM,
        J.SUCCEEDED,
        J.FAILED,
        J.NEEDS_LOGIN,
        J.QUEUED,
        J.CANCELLED,
    },
    J.RUNNING: {J.AWAITING_CONFIRM, J.SUCCEEDED, J.FAILED, J.NEEDS_LOGIN, J.QUEUED, J.CANCELLED},
    # Confirmed by an operator: RUNNING again.
    J.AWAITING_CONFIRM: {
        J.RUNNING,
        J.SUCCEEDED,
        J.FAILED,
        J.NEEDS_LOGIN,
        J.QUEUED,
        J.CANCELLED,
    },
    # Login restored (or an operator's retry) -> QUEUED; a late success of a committed earlier
    # attempt -> SUCCEEDED; never straight back to a lease.
    J.NEEDS_LOGIN: {J.QUEUED, J.CANCELLED, J.FAILED, J.SUCCEEDED},
    # An operator's retry or a reschedule; or cancelled; or published by hand (ResolveJob).
    J.FAILED: {J.QUEUED, J.CANCELLED, J.SUCCEEDED},
    # Never published again, never un-cancelled.
    J.SUCCEEDED: set(),
    J.CANCELLED: set(),
}

_DERIVED = {P.SCHEDULED, P.PUBLISHING, P.PUBLISHED, P.FAILED}
EXPECTED_POST: dict[PostStatus, set[PostStatus]] = {
    # Edits keep a draft a draft; submitted; cancelled.
    P.DRAFT: {P.DRAFT, P.PENDING_APPROVAL, P.CANCELLED},
    # Edits keep it pending; approved; cancelled. Never straight to SCHEDULED.
    P.PENDING_APPROVAL: {P.PENDING_APPROVAL, P.APPROVED, P.CANCELLED},
    # Scheduled; edited (back for approval); cancelled. Publishing starts only once scheduled.
    P.APPROVED: {P.SCHEDULED, P.PENDING_APPROVAL, P.CANCELLED},
    # After scheduling the status is derived from the jobs (any derived status, CANCELLED when
    # every job is cancelled); an edit of a not-yet-published post sends it back for approval.
    P.SCHEDULED: _DERIVED | {P.PENDING_APPROVAL, P.CANCELLED},
    P.PUBLISHING: _DERIVED | {P.PENDING_APPROVAL, P.CANCELLED},
    P.FAILED: _DERIVED | {P.PENDING_APPROVAL, P.CANCELLED},
    # Terminal: may be re-asserted, never left.
    P.PUBLISHED: {P.PUBLISHED},
    P.CANCELLED: {P.CANCELLED},
}

JOB_PAIRS = list(itertools.product(JobStatus, JobStatus))
POST_PAIRS = list(itertools.product(PostStatus, PostStatus))


def test_the_expected_tables_cover_every_status() -> None:
    assert set(EXPECTED_JOB) == set(JobStatus)
    assert set(EXPECTED_POST) == set(PostStatus)


@pytest.mark.parametrize(("current", "new"), JOB_PAIRS, ids=[f"{a}->{b}" for a, b in JOB_PAIRS])
def test_job_transition(current: JobStatus, new: JobStatus) -> None:
    allowed = new in EXPECTED_JOB[current]
    assert job_can(current, new) is allowed
    assert (current in job_sources(new)) is allowed  # the CAS expected set agrees
    if allowed:
        check_job("j-1", current, new)
        return
    with pytest.raises(TransitionRefused) as refused:
        check_job("j-1", current, new)
    message = str(refused.value)
    assert "j-1" in message
    assert current.value in message
    assert new.value in message
    assert isinstance(refused.value, FailedPrecondition)  # FAILED_PRECONDITION at the edge
    assert (refused.value.kind, refused.value.current, refused.value.target) == (
        "job",
        current.value,
        new.value,
    )


@pytest.mark.parametrize(("current", "new"), POST_PAIRS, ids=[f"{a}->{b}" for a, b in POST_PAIRS])
def test_post_transition(current: PostStatus, new: PostStatus) -> None:
    allowed = new in EXPECTED_POST[current]
    assert post_can(current, new) is allowed
    if allowed:
        check_post("p-1", current, new)
        return
    with pytest.raises(TransitionRefused) as refused:
        check_post("p-1", current, new)
    message = str(refused.value)
    assert "p-1" in message
    assert current.value in message
    assert new.value in message
    assert (refused.value.kind, refused.value.current, refused.value.target) == (
        "post",
        current.value,
        new.value,
    )


def test_a_refusal_reads_as_a_sentence() -> None:
    with pytest.raises(TransitionRefused, match=r"^job j-9 is SUCCEEDED; it cannot become QUEUED$"):
        check_job("j-9", J.SUCCEEDED, J.QUEUED)
