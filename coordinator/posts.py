"""Operator commands on posts. Each runs inside the coordinator actor (the single writer) and
returns the effects to commit with the post it answers with.

Approval is bound to the content hash: editing clears the approval, so the post's jobs are held
(never handed out, never granted a commit permit) until it is approved and scheduled again.
Scheduling upserts one job per target on its idempotency key; a target that already has a
SUCCEEDED job is never published again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence

from coordinator.domain import (
    LEASED_STATUSES,
    AuditEvent,
    Job,
    JobStatus,
    Post,
    PostStatus,
    Target,
    content_hash,
    idempotency_key,
    platform_key,
)
from coordinator.errors import FailedPrecondition
from coordinator.leasing.core import LeaseCore
from coordinator.leasing.effects import Effects
from coordinator.store.base import JobWrite, PostWrite, Store
from coordinator.transitions import check_job, check_post

EDITABLE_CONTENT_STATUSES = frozenset(
    {
        PostStatus.DRAFT,
        PostStatus.PENDING_APPROVAL,
        PostStatus.APPROVED,
        PostStatus.SCHEDULED,
        PostStatus.PUBLISHING,
        PostStatus.FAILED,
    }
)
SCHEDULABLE_STATUSES = frozenset(
    {PostStatus.APPROVED, PostStatus.SCHEDULED, PostStatus.PUBLISHING, PostStatus.FAILED}
)


def _audit(fx: Effects, action: str, post: Post, actor: str, now: float, **details: object) -> None:
    fx.batch.audits.append(AuditEvent(action, post.id, actor, now, details))


def _set_status(fx: Effects, post: Post, new: PostStatus, now: float) -> PostStatus:
    old = post.status
    check_post(post.id, old, new)
    post.status, post.updated_at = new, now
    return old


def _write(fx: Effects, post: Post, expected: PostStatus) -> None:
    fx.batch.post_writes.append(PostWrite(dataclasses.replace(post), frozenset({expected})))


def create(
    *,
    post_id: str,
    text: str,
    media: Sequence[str],
    targets: Sequence[Target],
    scheduled_at: float | None,
    max_attempts: int,
    require_confirm: bool,
    actor: str,
    now: float,
) -> tuple[Effects, Post]:
    fx = Effects()
    post = Post(
        id=post_id,
        text=text,
        media=tuple(media),
        targets=tuple(targets),
        scheduled_at=scheduled_at,
        status=PostStatus.DRAFT,
        content_hash=content_hash(text, media),
        created_at=now,
        updated_at=now,
        max_attempts=max_attempts,
        require_confirm=require_confirm,
    )
    fx.batch.new_posts.append(dataclasses.replace(post))
    _audit(fx, "POST_CREATED", post, actor, now, targets=[str(t) for t in targets])
    return fx, post


async def update(
    store: Store,
    core: LeaseCore,
    *,
    post_id: str,
    text: str | None,
    media: Sequence[str] | None,
    targets: Sequence[Target] | None,
    scheduled_at: float | None,
    actor: str,
    now: float,
    check: Callable[[Post], Awaitable[None]] | None = None,
) -> tuple[Effects, Post]:
    """Edit a post. `check` sees the post as it will be after the edit (a copy: raising from it
    leaves the post as it was)."""
    fx = Effects()
    post = await _load(store, core, post_id)
    if post.status not in EDITABLE_CONTENT_STATUSES:
        raise FailedPrecondition(
            f"post {post_id} is {post.status.value}; it can no longer be edited"
        )
    old_status = post.status
    changed: list[str] = []
    if text is not None and text != post.text:
        post.text = text
        changed.append("text")
    if media is not None and tuple(media) != post.media:
        post.media = tuple(media)
        changed.append("media")
    if targets is not None and tuple(targets) != post.targets:
        post.targets = tuple(targets)
        changed.append("targets")
    if scheduled_at is not None and scheduled_at != post.scheduled_at:
        post.scheduled_at = scheduled_at
        changed.append("scheduled_at")
    if check is not None:
        await check(post)
    post.content_hash = content_hash(post.text, post.media)
    post.updated_at = now
    if ("text" in changed or "media" in changed or "targets" in changed) and (
        post.status not in (PostStatus.DRAFT, PostStatus.PENDING_APPROVAL)
    ):
        # The approval was for other content: it no longer holds, and every unpublished job of
        # the post is held until the new content is approved and scheduled.
        post.approved_hash, post.approved_by = "", ""
        _set_status(fx, post, PostStatus.PENDING_APPROVAL, now)
    _write(fx, post, old_status)
    core.update_post(dataclasses.replace(post))
    _audit(fx, "POST_UPDATED", post, actor, now, changed=changed, status=post.status.value)
    return fx, post


async def submit(
    store: Store, core: LeaseCore, post_id: str, actor: str, now: float
) -> tuple[Effects, Post]:
    fx = Effects()
    post = await _load(store, core, post_id)
    if post.status is not PostStatus.DRAFT:
        raise FailedPrecondition(
            f"post {post_id} is {post.status.value}; only DRAFT posts can be submitted"
        )
    old = _set_status(fx, post, PostStatus.PENDING_APPROVAL, now)
    _write(fx, post, old)
    _audit(fx, "POST_SUBMITTED", post, actor, now)
    return fx, post


async def approve(
    store: Store, core: LeaseCore, post_id: str, reviewed_hash: str, actor: str, now: float
) -> tuple[Effects, Post]:
    fx = Effects()
    post = await _load(store, core, post_id)
    if post.status is not PostStatus.PENDING_APPROVAL:
        hint = " submit it first" if post.status is PostStatus.DRAFT else ""
        raise FailedPrecondition(
            f"post {post_id} is {post.status.value}; only PENDING_APPROVAL posts can be "
            f"approved.{hint}"
        )
    if reviewed_hash and reviewed_hash != post.content_hash:
        raise FailedPrecondition(
            f"post {post_id} changed since it was reviewed (content hash "
            f"{post.content_hash[:12]}…, reviewed {reviewed_hash[:12]}…); review it again"
        )
    post.approved_hash, post.approved_by = post.content_hash, actor
    old = _set_status(fx, post, PostStatus.APPROVED, now)
    _write(fx, post, old)
    core.update_post(dataclasses.replace(post))
    _audit(fx, "POST_APPROVED", post, actor, now, content_hash=post.content_hash)
    return fx, post


async def schedule(
    store: Store,
    core: LeaseCore,
    *,
    post_id: str,
    scheduled_at: float | None,
    new_job_id: str,
    actor: str,
    now: float,
) -> tuple[Effects, Post]:
    fx = Effects()
    post = await _load(store, core, post_id)
    if post.status not in SCHEDULABLE_STATUSES:
        raise FailedPrecondition(
            f"post {post_id} is {post.status.value}; approve it before scheduling"
            if post.status in (PostStatus.DRAFT, PostStatus.PENDING_APPROVAL)
            else f"post {post_id} is {post.status.value}; it cannot be scheduled"
        )
    if post.approved_hash != post.content_hash:
        raise FailedPrecondition(f"post {post_id} changed since its approval; approve it again")
    when = scheduled_at if scheduled_at is not None else (post.scheduled_at or now)
    if scheduled_at is not None:
        post.scheduled_at = scheduled_at
    jobs = await _post_jobs(store, core, post_id)
    by_target: dict[Target, list[Job]] = {}
    for job in jobs:  # one pass: a post's jobs grow with its targets and its reschedules
        by_target.setdefault(job.target, []).append(job)
    touched: list[Job] = []
    skipped: list[str] = []
    for n, target in enumerate(post.targets):
        mine = by_target.get(target, [])
        if any(j.status is JobStatus.SUCCEEDED for j in mine):
            skipped.append(str(target))  # published targets are never published again
            continue
        if any(j.status in LEASED_STATUSES for j in mine):
            skipped.append(str(target))  # being published right now: let that attempt finish
            continue
        key = idempotency_key(post.id, target, when)
        same_key = next((j for j in mine if j.idempotency_key == key), None)
        touched += _supersede(fx, mine, same_key, now, actor)
        if same_key is not None:
            if same_key.status is JobStatus.CANCELLED:
                skipped.append(str(target))
                continue
            _refresh_content(
                same_key, post, target, max(when, core.gates.closed_until(target)), now
            )
            _rewrite(fx, same_key, JobStatus.QUEUED, now, actor)
            touched.append(same_key)
            continue
        job = Job(
            id=f"{new_job_id}{n}",
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
            not_before=max(when, core.gates.closed_until(target)),
            max_attempts=post.max_attempts,
            require_confirm=post.require_confirm,
        )
        fx.batch.new_jobs.append(dataclasses.replace(job))
        fx.batch.audits.append(
            AuditEvent("JOB_CREATED", job.id, actor, now, {"post": post.id, "key": key})
        )
        touched.append(job)
    old_status = post.status
    if old_status is not PostStatus.SCHEDULED:
        _set_status(fx, post, PostStatus.SCHEDULED, now)
    post.updated_at = now
    _write(fx, post, old_status)
    _audit(fx, "POST_SCHEDULED", post, actor, now, at=when, jobs=[j.id for j in touched],
           skipped=skipped)  # fmt: skip
    fx.extend(core.add_post_jobs(dataclasses.replace(post), touched, now))
    return fx, post


async def cancel(
    store: Store, core: LeaseCore, post_id: str, reason: str, actor: str, now: float
) -> tuple[Effects, Post]:
    fx = Effects()
    post = await _load(store, core, post_id)
    if post.status in (PostStatus.PUBLISHED, PostStatus.CANCELLED):
        raise FailedPrecondition(f"post {post_id} is {post.status.value}; nothing to cancel")
    old = _set_status(fx, post, PostStatus.CANCELLED, now)
    _write(fx, post, old)
    _audit(fx, "POST_CANCELLED", post, actor, now, reason=reason)
    jobs = await _post_jobs(store, core, post_id)
    fx.extend(core.add_post_jobs(dataclasses.replace(post), [], now))
    # Leased jobs last: cancelling one frees a worker slot, and the dispatch that follows must
    # not hand that worker a sibling of this post that is about to be cancelled.
    for job in sorted(jobs, key=lambda j: j.id in core.leases):
        if job.status in (JobStatus.SUCCEEDED, JobStatus.CANCELLED, JobStatus.FAILED):
            continue
        core.track(job)
        lease = core.leases.get(job.id)
        if lease is not None and lease.run.committed:
            continue  # already publishing: its result will be recorded, the post stays cancelled
        fx.extend(core.cancel(job.id, actor, reason or "post cancelled", now))
    return fx, post


async def delete(
    store: Store, core: LeaseCore, post_id: str, reason: str, actor: str, now: float
) -> tuple[Effects, list[str]]:
    """Delete a post that never published: its open jobs are cancelled (their workers told to
    stop), then the post, its jobs, runs and logs are removed; the audit log keeps all of it.
    Returns the ids of the jobs it cancelled."""
    post = await _load(store, core, post_id)
    jobs = await _post_jobs(store, core, post_id)
    _check_deletable(core, post, jobs)
    fx = Effects()
    # Held from here (an approval no job matches): no dispatch hands out a job of this post,
    # and no worker holding one gets a commit permit, while its siblings are being cancelled.
    core.book.add(dataclasses.replace(post, approved_hash=""))
    cancelled: list[str] = []
    for job in sorted(jobs, key=lambda j: j.id in core.leases):
        if job.status in (JobStatus.SUCCEEDED, JobStatus.CANCELLED, JobStatus.FAILED):
            continue
        core.track(job)
        fx.extend(core.cancel(job.id, actor, reason or "post deleted", now))
        cancelled.append(job.id)
    core.forget_post(post_id)
    fx.batch.deleted_posts.append(post_id)
    _audit(
        fx,
        "POST_DELETED",
        post,
        actor,
        now,
        content_hash=post.content_hash,
        status=post.status.value,
        targets=[str(t) for t in post.targets],
        jobs=[j.id for j in jobs],
        cancelled=cancelled,
        reason=reason,
    )
    return fx, cancelled


def _check_deletable(core: LeaseCore, post: Post, jobs: Sequence[Job]) -> None:
    """Refuse (FailedPrecondition, saying what to do) to delete a post that is or may be live."""
    live = [
        f"{j.target} {j.result_url or j.result_post_id}"
        for j in jobs
        if j.status is JobStatus.SUCCEEDED
    ]
    if live:
        raise FailedPrecondition(
            f"post {post.id} is published and cannot be deleted; live: {', '.join(live)}. "
            "Delete those posts on the platforms by hand; postroom keeps their record"
        )
    for job in jobs:
        wait = core.permit_wait(job.id)
        if wait:
            raise FailedPrecondition(f"post {post.id} cannot be deleted yet: {wait}")
    # CANCELLED ones are left out: nothing could clear their doubt, and a person cancelled them.
    doubt = [j for j in jobs if j.verify_first and j.status is not JobStatus.CANCELLED]
    if doubt:
        ids = ", ".join(f"{j.id} ({j.target})" for j in doubt)
        raise FailedPrecondition(
            f"post {post.id} may be live: an attempt of job {ids} got a commit permit and never "
            "reported. Look on the platform: if the post is there, record it with `postroom job "
            "resolve JOB --published-url URL`; if not, let the job look first (`postroom job "
            "retry JOB` if it is not queued). Then delete"
        )


def _refresh_content(job: Job, post: Post, target: Target, when: float, now: float) -> None:
    job.text, job.media, job.content_hash = post.text, post.media, post.content_hash
    job.platform_key = platform_key(post.id, target, post.content_hash)
    job.not_before = when
    job.require_confirm = post.require_confirm
    if job.counted_attempts >= job.max_attempts:
        job.max_attempts = job.counted_attempts + post.max_attempts


# A reschedule cancels a target's jobs of an earlier schedule that are still waiting.
_SUPERSEDABLE = frozenset({JobStatus.QUEUED, JobStatus.NEEDS_LOGIN, JobStatus.FAILED})


def _supersede(fx: Effects, mine: list[Job], keep: Job | None, now: float, actor: str) -> list[Job]:
    """Cancel a target's waiting jobs of an earlier schedule (all but `keep`)."""
    out = []
    for old in mine:
        if old is not keep and old.status in _SUPERSEDABLE:
            reason = "superseded by a reschedule"
            _rewrite(fx, old, JobStatus.CANCELLED, now, actor, last_error=reason)
            out.append(old)
    return out


def _rewrite(
    fx: Effects, job: Job, new: JobStatus, now: float, actor: str, last_error: str = ""
) -> None:
    """A reschedule's write of one job; a change of status is checked and audited, as the
    core's own transitions are."""
    old = job.status
    if old is not new:
        check_job(job.id, old, new)
        details: dict[str, object] = {"from": old.value, "to": new.value, "by": "reschedule"}
        if last_error:
            details["reason"] = last_error
        fx.batch.audits.append(AuditEvent(f"JOB_{new.value}", job.id, actor, now, details))
    job.status, job.updated_at = new, now
    if last_error:
        job.last_error = last_error
    fx.batch.job_writes.append(
        JobWrite(dataclasses.replace(job), frozenset({old}), job.lease_epoch)
    )
    fx.changed_jobs[job.id] = dataclasses.replace(job)


async def _load(store: Store, core: LeaseCore, post_id: str) -> Post:
    """The post as the actor knows it (memory wins: it may hold writes not yet re-read)."""
    in_memory = core.posts.get(post_id)
    return dataclasses.replace(in_memory) if in_memory else await store.get_post(post_id)


async def _post_jobs(store: Store, core: LeaseCore, post_id: str) -> list[Job]:
    """The post's jobs; the in-memory objects for those the core tracks (so edits reach it)."""
    stored = await store.jobs_for_post(post_id)
    return [core.jobs.get(j.id, j) for j in stored]
