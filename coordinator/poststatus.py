"""A scheduled post's status and warnings, derived from its jobs (design.md, "Domain")."""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.domain import LEASED_STATUSES, ErrorClass, Job, JobStatus, PostStatus, iso_utc


def derive_post_status(jobs: Sequence[Job]) -> PostStatus:
    """Any leased -> PUBLISHING; all SUCCEEDED -> PUBLISHED; any FAILED -> FAILED; any NEEDS_LOGIN
    -> SCHEDULED; some succeeded and others waiting to retry -> PUBLISHING; else SCHEDULED.

    Cancelled jobs are ignored (a cancelled target is no longer part of the outcome) unless all
    jobs are cancelled.
    """
    live = [j for j in jobs if j.status is not JobStatus.CANCELLED]
    if not live:
        return PostStatus.CANCELLED if jobs else PostStatus.SCHEDULED
    statuses = {j.status for j in live}
    if statuses & LEASED_STATUSES:
        return PostStatus.PUBLISHING
    if statuses == {JobStatus.SUCCEEDED}:
        return PostStatus.PUBLISHED
    if JobStatus.FAILED in statuses:
        return PostStatus.FAILED
    if JobStatus.NEEDS_LOGIN in statuses:
        return PostStatus.SCHEDULED
    if JobStatus.SUCCEEDED in statuses:
        return PostStatus.PUBLISHING  # partial success, the rest queued for a retry
    return PostStatus.SCHEDULED


def post_warnings(jobs: Sequence[Job]) -> list[str]:
    """What an operator should know: partial failure, accounts that need a login, failures."""
    warnings: list[str] = []
    live = [j for j in jobs if j.status is not JobStatus.CANCELLED]
    succeeded = [j for j in live if j.status is JobStatus.SUCCEEDED]
    waiting = [j for j in live if j.status is JobStatus.QUEUED and j.last_error_class is not None]
    if succeeded and waiting:
        parts = [
            f"{j.platform}:{j.account} {_error_name(j)} (next try {iso_utc(j.not_before)})"
            for j in waiting
        ]
        warnings.append(
            f"partial failure: {len(succeeded)} of {len(live)} targets published; "
            + "; ".join(parts)
        )
    for j in live:
        if j.status is JobStatus.NEEDS_LOGIN:
            # The device that met the login wall holds the account's session or profile.
            device = j.device_id or "DEVICE"
            warnings.append(
                f"{j.platform}:{j.account} needs a login: log in on {device}, then run "
                f"`postroom device check-login {device} --platform {j.platform} "
                f"--account {j.account}`"
            )
        elif j.status is JobStatus.FAILED:
            warnings.append(f"{j.platform}:{j.account} failed: {_error_name(j)}: {j.last_error}")
    return warnings


def _error_name(job: Job) -> str:
    return job.last_error_class.value if isinstance(job.last_error_class, ErrorClass) else "error"
