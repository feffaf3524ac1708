"""A scheduled post's status and warnings, derived from its jobs: each rule of design.md ("Domain")
as its own case, as an operator reads it in `postroom post show`."""

from __future__ import annotations

import pytest

from coordinator.domain import ErrorClass, Job, JobStatus, PostStatus, iso_utc
from coordinator.poststatus import derive_post_status, post_warnings

NOW = 1_800_000_000.0
S = JobStatus


def job(
    account: str,
    status: JobStatus,
    *,
    platform: str = "sandbox",
    error: ErrorClass | None = None,
    message: str = "",
    not_before: float = NOW,
) -> Job:
    return Job(
        id=f"j-{platform}-{account}",
        post_id="p-1",
        platform=platform,
        account=account,
        status=status,
        idempotency_key=f"p-1:{platform}/{account}:2027-01-15T08:00:00Z",
        platform_key="pr-x",
        content_hash="h",
        text="hi",
        media=(),
        scheduled_at=NOW,
        created_at=NOW,
        updated_at=NOW,
        not_before=not_before,
        last_error_class=error,
        last_error=message,
    )


@pytest.mark.parametrize("leased", [S.CLAIMED, S.RUNNING, S.AWAITING_CONFIRM])
def test_any_leased_job_makes_the_post_publishing(leased: JobStatus) -> None:
    jobs = [job("a", leased), job("b", S.QUEUED)]
    assert derive_post_status(jobs) is PostStatus.PUBLISHING
    # Even beside a failure or a login wall: something is being published right now.
    beside = [job("a", leased), job("b", S.FAILED), job("c", S.NEEDS_LOGIN)]
    assert derive_post_status(beside) is PostStatus.PUBLISHING


def test_all_succeeded_is_published_without_warnings() -> None:
    jobs = [job("a", S.SUCCEEDED), job("b", S.SUCCEEDED, platform="x")]
    assert derive_post_status(jobs) is PostStatus.PUBLISHED
    assert post_warnings(jobs) == []


def test_any_failed_job_fails_the_post_and_says_why() -> None:
    jobs = [
        job("a", S.SUCCEEDED),
        job("b", S.FAILED, error=ErrorClass.INVALID_CONTENT, message="text too long"),
    ]
    assert derive_post_status(jobs) is PostStatus.FAILED
    assert post_warnings(jobs) == ["sandbox:b failed: INVALID_CONTENT: text too long"]
    # A failure outranks a login wall and a queued retry.
    others = [job("a", S.FAILED), job("b", S.NEEDS_LOGIN), job("c", S.QUEUED)]
    assert derive_post_status(others) is PostStatus.FAILED


def test_a_login_wall_keeps_the_post_scheduled_with_a_warning_naming_the_account() -> None:
    jobs = [job("acme", S.NEEDS_LOGIN, platform="x", error=ErrorClass.AUTH_REQUIRED)]
    jobs[0].device_id = "w-7"  # the device that met the login wall
    assert derive_post_status(jobs) is PostStatus.SCHEDULED
    (warning,) = post_warnings(jobs)
    assert warning.startswith("x:acme needs a login")
    assert "log in on w-7, then run" in warning
    assert "postroom device check-login w-7 --platform x --account acme" in warning
    # The same beside a published target: still waiting on that account.
    assert derive_post_status([*jobs, job("b", S.SUCCEEDED)]) is PostStatus.SCHEDULED


def test_partial_success_with_a_retry_waiting_is_publishing_with_a_partial_failure_warning() -> (
    None
):
    next_try = NOW + 120
    jobs = [
        job("a", S.SUCCEEDED),
        job("acme", S.QUEUED, platform="x", error=ErrorClass.RATE_LIMITED, not_before=next_try),
    ]
    assert derive_post_status(jobs) is PostStatus.PUBLISHING
    (warning,) = post_warnings(jobs)
    assert warning.startswith("partial failure: 1 of 2 targets published")
    assert "x:acme RATE_LIMITED" in warning
    assert f"next try {iso_utc(next_try)}" in warning
    assert iso_utc(next_try) == "2027-01-15T08:02:00Z"


def test_partial_failure_lists_every_waiting_target() -> None:
    jobs = [
        job("a", S.SUCCEEDED),
        job("b", S.QUEUED, error=ErrorClass.TRANSIENT, not_before=NOW + 5),
        job("c", S.QUEUED, error=ErrorClass.RATE_LIMITED, not_before=NOW + 60),
    ]
    (warning,) = post_warnings(jobs)
    assert warning == (
        "partial failure: 1 of 3 targets published; "
        f"sandbox:b TRANSIENT (next try {iso_utc(NOW + 5)}); "
        f"sandbox:c RATE_LIMITED (next try {iso_utc(NOW + 60)})"
    )


def test_nothing_started_yet_is_scheduled_without_warnings() -> None:
    jobs = [job("a", S.QUEUED), job("b", S.QUEUED)]
    assert derive_post_status(jobs) is PostStatus.SCHEDULED
    assert post_warnings(jobs) == []
    assert derive_post_status([]) is PostStatus.SCHEDULED


def test_a_first_try_still_due_beside_a_success_is_not_a_failure() -> None:
    jobs = [job("a", S.SUCCEEDED), job("b", S.QUEUED)]  # b never failed
    assert derive_post_status(jobs) is PostStatus.PUBLISHING
    assert post_warnings(jobs) == []


def test_cancelled_jobs_are_ignored() -> None:
    assert derive_post_status([job("a", S.SUCCEEDED), job("b", S.CANCELLED)]) is (
        PostStatus.PUBLISHED
    )
    assert derive_post_status([job("a", S.QUEUED), job("b", S.CANCELLED)]) is PostStatus.SCHEDULED
    cancelled_failure = [
        job("a", S.SUCCEEDED),
        job("b", S.CANCELLED, error=ErrorClass.TRANSIENT, message="superseded"),
    ]
    assert derive_post_status(cancelled_failure) is PostStatus.PUBLISHED
    assert post_warnings(cancelled_failure) == []


def test_a_post_whose_jobs_are_all_cancelled_is_cancelled() -> None:
    assert derive_post_status([job("a", S.CANCELLED), job("b", S.CANCELLED)]) is (
        PostStatus.CANCELLED
    )
