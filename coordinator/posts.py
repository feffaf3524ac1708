"""The operators' commands on posts, decided inside the coordinator actor (the single writer):
pure handlers over the lease core, called from coordinator/step.py's table. Each returns the
effects to commit, its reply in `Effects.reply`; nothing here reads the store (the actor's load
phase put what the core lacked into the command, `loaded`).

Approval is bound to the content hash: editing clears the approval, so the post's jobs are held
(never handed out, never granted a commit permit) until it is approved and scheduled again.
Scheduling upserts one job per target on its idempotency key (leasing/scheduling.py); a target
that already has a SUCCEEDED job is never published again.

With several coordinators each owning some shards (placement "spread"), a command runs on the
post's home coordinator, which writes the post and the jobs of its own shards; what it means for
the other shards' jobs goes to their owners, in the same batch, as post tasks (posttasks.py). The
post's status and its other jobs are then the store's, read by the load phase.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from coordinator.access.approval import check_not_author
from coordinator.domain import (
    LEASED_STATUSES,
    TERMINAL_JOB_STATUSES,
    AuditEvent,
    Job,
    JobStatus,
    Post,
    PostStatus,
    content_hash,
)
from coordinator.errors import FailedPrecondition, NotFound
from coordinator.leasing.core import LeaseCore
from coordinator.leasing.effects import Effects
from coordinator.operator_commands import (
    ApprovePost,
    CancelPost,
    CreatePost,
    CreatePosts,
    DeletePost,
    PostCommand,
    SchedulePost,
    SubmitPost,
    Unjudged,
    UpdatePost,
)
from coordinator.posttasks import (
    CANCEL,
    REFRESH,
    SCHEDULE,
    remote_shards,
    remote_tasks,
    take_finished,
)
from coordinator.store.base import PostWrite
from coordinator.transitions import check_post

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


def _set_status(post: Post, new: PostStatus, now: float) -> PostStatus:
    old = post.status
    check_post(post.id, old, new)
    post.status, post.updated_at = new, now
    return old


# Statuses other coordinators' batches may move a post between (the store derives them from
# every shard's jobs), under a command that read one of them: any of them is what it expects.
_SHARED_DERIVED = frozenset({PostStatus.SCHEDULED, PostStatus.PUBLISHING, PostStatus.FAILED})


def _expected(core: LeaseCore, old: PostStatus) -> frozenset[PostStatus]:
    if not core.scope.everything and old in _SHARED_DERIVED:
        return _SHARED_DERIVED
    return frozenset({old})


def _save(core: LeaseCore, fx: Effects, post: Post, expected: PostStatus) -> None:
    """Write the post (compare-and-set on `expected`); an open post's copy in the core follows
    (held jobs follow its approval)."""
    fx.batch.post_writes.append(PostWrite(dataclasses.replace(post), _expected(core, expected)))
    core.update_post(dataclasses.replace(post))


def _view(core: LeaseCore, cmd: PostCommand) -> tuple[Post, list[Job]]:
    """A copy of the post to decide on, and its jobs (the core's, read-only here; or the stored
    copies the load phase brought)."""
    live = core.posts.get(cmd.post_id)
    if live is not None and not core.scope.everything and cmd.loaded is not None:
        # Some of its jobs are other coordinators': the store's copies of those, and the
        # status the store derived from all of them; this core's own jobs from memory.
        stored = cmd.loaded
        others = [j for j in stored.jobs if not core.scope.owns(j.target)]
        jobs = sorted([*core.jobs_of(cmd.post_id), *others], key=lambda j: (j.created_at, j.id))
        return dataclasses.replace(live, status=stored.post.status), jobs
    if live is not None:
        return dataclasses.replace(live), core.jobs_of(cmd.post_id)
    if cmd.loaded is None or cmd.loaded.post.id != cmd.post_id:
        raise NotFound(f"post {cmd.post_id} does not exist")
    return dataclasses.replace(cmd.loaded.post), list(cmd.loaded.jobs)


def _answer(core: LeaseCore, post: Post, jobs: Sequence[Job]) -> tuple[Post, list[Job] | None]:
    """A submit's or approval's reply: the post as this step left it, and its jobs as loaded
    (the step does not change them) when the core does not hold the post open; None for an open
    post, whose answer the RPC reads from the core after the commit (settling may change it)."""
    return post, (None if post.id in core.posts else list(jobs))


def _adopt(core: LeaseCore, cmd: PostCommand) -> None:
    if cmd.loaded is not None:
        core.adopt(cmd.loaded.post, cmd.loaded.jobs)


def create(core: LeaseCore, cmd: CreatePost, now: float) -> Effects:
    """A DRAFT; with `approve` (and `schedule`) approved and scheduled in the same step. Replies
    with the post."""
    fx, post, _ = create_one(core, cmd, now)
    fx.reply = post
    return fx


def create_many(core: LeaseCore, cmd: CreatePosts, now: float) -> Effects:
    """All of the posts in one batch (nothing here can refuse one of them once the RPC checked
    them). Replies with each post and its jobs, in order."""
    fx = Effects()
    created: list[tuple[Post, list[Job]]] = []
    for item in cmd.items:
        one, post, jobs = create_one(core, item, now)
        fx.extend(one)
        created.append((post, jobs))
    fx.reply = created
    return fx


def create_one(core: LeaseCore, cmd: CreatePost, now: float) -> tuple[Effects, Post, list[Job]]:
    """The effects, and copies of the new post and its jobs as they are after this step."""
    fx = Effects()
    post = Post(
        id=cmd.post_id,
        text=cmd.text,
        media=cmd.media,
        targets=cmd.targets,
        scheduled_at=cmd.scheduled_at,
        status=PostStatus.DRAFT,
        content_hash=content_hash(cmd.text, cmd.media),
        created_at=now,
        updated_at=now,
        max_attempts=cmd.max_attempts,
        require_confirm=cmd.require_confirm,
    )
    targets = [str(t) for t in cmd.targets]
    if not cmd.approve:
        fx.batch.new_posts.append(dataclasses.replace(post))
        _audit(fx, "POST_CREATED", post, cmd.actor, now, targets=targets)
        return fx, dataclasses.replace(post), []
    # Created, submitted and approved by its creator (the caller may approve, and the four-eyes
    # rule lets it approve what it wrote: step.py checked), then scheduled: one row per post.
    _audit(fx, "POST_CREATED", post, cmd.actor, now, targets=targets, approve=True,
           schedule=cmd.schedule)  # fmt: skip
    _set_status(post, PostStatus.PENDING_APPROVAL, now)
    _set_status(post, PostStatus.APPROVED, now)
    post.approved_hash, post.approved_by = post.content_hash, cmd.actor
    _audit(fx, "POST_APPROVED", post, cmd.actor, now, content_hash=post.content_hash)
    if not cmd.schedule:
        fx.batch.new_posts.append(dataclasses.replace(post))
        return fx, dataclasses.replace(post), []
    when = post.scheduled_at if post.scheduled_at is not None else now
    jobs_fx, touched, skipped, remote = core.schedule_jobs(
        post, when, cmd.new_job_id, cmd.actor, now
    )
    _set_status(post, PostStatus.SCHEDULED, now)
    fx.batch.new_posts.append(dataclasses.replace(post))  # before its jobs: they refer to it
    fx.extend(jobs_fx)
    _schedule_remote(core, fx, post, when, cmd.new_job_id, cmd.actor)
    _audit(fx, "POST_SCHEDULED", post, cmd.actor, now, at=when, jobs=[j.id for j in touched],
           skipped=skipped, **_elsewhere(remote))  # fmt: skip
    fx.extend(core.add_post_jobs(dataclasses.replace(post), touched, now))
    return fx, dataclasses.replace(post), [dataclasses.replace(j) for j in touched]


def update(core: LeaseCore, cmd: UpdatePost, now: float) -> Effects:
    """Edit a post; if the post as it will be is not what the RPC judged, reply Unjudged."""
    fx = Effects()
    post, jobs = _view(core, cmd)
    if post.status not in EDITABLE_CONTENT_STATUSES:
        raise FailedPrecondition(
            f"post {cmd.post_id} is {post.status.value}; it can no longer be edited"
        )
    old_status, old_targets = post.status, post.targets
    changed: list[str] = []
    for name, value in (("text", cmd.text), ("media", cmd.media), ("targets", cmd.targets)):
        if value is not None and value != getattr(post, name):
            setattr(post, name, value)
            changed.append(name)
    if cmd.scheduled_at is not None and cmd.scheduled_at != post.scheduled_at:
        post.scheduled_at = cmd.scheduled_at
        changed.append("scheduled_at")
    if {"text", "media"} & set(changed):
        # An attempt may be publishing the content as it is, or may have: a job in doubt looks
        # for its post by its content, and new text or media would hide that post from it.
        _refuse_while_live(core, post, jobs, "edited")
        _refuse_in_doubt(post, jobs, "edit it")
    content = (post.text, post.media, post.targets)
    if cmd.judged is not None and content != cmd.judged:
        fx.reply = Unjudged(content)  # changed meanwhile: judge this content first
        return fx
    post.content_hash = content_hash(post.text, post.media)
    post.updated_at = now
    if {"text", "media", "targets"} & set(changed) and (
        post.status not in (PostStatus.DRAFT, PostStatus.PENDING_APPROVAL)
    ):
        # The approval was for other content: it no longer holds, and every unpublished job of
        # the post is held until the new content is approved and scheduled.
        post.approved_hash, post.approved_by = "", ""
        _set_status(post, PostStatus.PENDING_APPROVAL, now)
    _save(core, fx, post, old_status)
    fx.batch.post_tasks += remote_tasks(core, post, REFRESH, targets=old_targets)
    _audit(fx, "POST_UPDATED", post, cmd.actor, now, changed=changed, status=post.status.value)
    fx.reply = post
    return fx


def submit(core: LeaseCore, cmd: SubmitPost, now: float) -> Effects:
    fx = Effects()
    post, jobs = _view(core, cmd)
    if post.status is not PostStatus.DRAFT:
        raise FailedPrecondition(
            f"post {cmd.post_id} is {post.status.value}; only DRAFT posts can be submitted"
        )
    old = _set_status(post, PostStatus.PENDING_APPROVAL, now)
    _save(core, fx, post, old)
    fx.batch.post_tasks += remote_tasks(core, post, REFRESH)
    _audit(fx, "POST_SUBMITTED", post, cmd.actor, now)
    fx.reply = _answer(core, post, jobs)
    return fx


def approve(core: LeaseCore, cmd: ApprovePost, now: float) -> Effects:
    fx = Effects()
    post, jobs = _view(core, cmd)
    # Here, in the actor: no edit can slip in between the check and the approval.
    check_not_author(cmd.post_id, cmd.principal, cmd.authors)
    if post.status is not PostStatus.PENDING_APPROVAL:
        hint = " submit it first" if post.status is PostStatus.DRAFT else ""
        raise FailedPrecondition(
            f"post {cmd.post_id} is {post.status.value}; only PENDING_APPROVAL posts can be "
            f"approved.{hint}"
        )
    reviewed = cmd.reviewed_hash
    if reviewed and reviewed != post.content_hash:
        raise FailedPrecondition(
            f"post {cmd.post_id} changed since it was reviewed (content hash "
            f"{post.content_hash[:12]}…, reviewed {reviewed[:12]}…); review it again"
        )
    post.approved_hash, post.approved_by = post.content_hash, cmd.actor
    old = _set_status(post, PostStatus.APPROVED, now)
    _save(core, fx, post, old)
    fx.batch.post_tasks += remote_tasks(core, post, REFRESH)
    _audit(fx, "POST_APPROVED", post, cmd.actor, now, content_hash=post.content_hash)
    fx.reply = _answer(core, post, jobs)
    return fx


def schedule(core: LeaseCore, cmd: SchedulePost, now: float) -> Effects:
    post, _ = _view(core, cmd)
    if post.status not in SCHEDULABLE_STATUSES:
        raise FailedPrecondition(
            f"post {cmd.post_id} is {post.status.value}; approve it before scheduling"
            if post.status in (PostStatus.DRAFT, PostStatus.PENDING_APPROVAL)
            else f"post {cmd.post_id} is {post.status.value}; it cannot be scheduled"
        )
    if post.approved_hash != post.content_hash:
        raise FailedPrecondition(f"post {cmd.post_id} changed since its approval; approve it again")
    when = cmd.scheduled_at if cmd.scheduled_at is not None else (post.scheduled_at or now)
    if cmd.scheduled_at is not None:
        post.scheduled_at = cmd.scheduled_at
    _adopt(core, cmd)
    if cmd.loaded is not None:  # several coordinators: what the core let go of, it sees again
        take_finished(core, post.id, cmd.loaded.jobs)
    fx, touched, skipped, remote = core.schedule_jobs(post, when, cmd.new_job_id, cmd.actor, now)
    old_status = post.status
    if old_status is not PostStatus.SCHEDULED:
        _set_status(post, PostStatus.SCHEDULED, now)
    post.updated_at = now
    expected = _expected(core, old_status)
    fx.batch.post_writes.append(PostWrite(dataclasses.replace(post), expected))
    _schedule_remote(core, fx, post, when, cmd.new_job_id, cmd.actor)
    _audit(fx, "POST_SCHEDULED", post, cmd.actor, now, at=when, jobs=[j.id for j in touched],
           skipped=skipped, **_elsewhere(remote))  # fmt: skip
    fx.extend(core.add_post_jobs(dataclasses.replace(post), touched, now))
    fx.reply = post
    return fx


def cancel(core: LeaseCore, cmd: CancelPost, now: float) -> Effects:
    fx = Effects()
    post, _ = _view(core, cmd)
    if post.status in (PostStatus.PUBLISHED, PostStatus.CANCELLED):
        raise FailedPrecondition(f"post {cmd.post_id} is {post.status.value}; nothing to cancel")
    old = _set_status(post, PostStatus.CANCELLED, now)
    _save(core, fx, post, old)
    _audit(fx, "POST_CANCELLED", post, cmd.actor, now, reason=cmd.reason)
    args = {"actor": cmd.actor, "reason": cmd.reason or "post cancelled"}
    fx.batch.post_tasks += remote_tasks(core, post, CANCEL, args)
    if post.id in core.posts:  # a post not open has no unfinished job
        fx.extend(core.cancel_jobs(post.id, cmd.actor, cmd.reason or "post cancelled", now))
        fx.extend(core.dispatch(now))
    fx.reply = post
    return fx


def delete(core: LeaseCore, cmd: DeletePost, now: float) -> Effects:
    """Delete a post that never published: its open jobs are cancelled (their workers told to
    stop), then the post, its jobs, runs and logs are removed; the audit log keeps all of it.
    Replies with the ids of the jobs it cancelled."""
    post, jobs = _view(core, cmd)
    _check_deletable(core, post, jobs)
    _check_deletable_here(core, post, jobs, cmd.tasks_pending)
    _adopt(core, cmd)
    fx, cancelled = core.delete_jobs(post, cmd.actor, cmd.reason or "post deleted", now)
    fx.batch.deleted_posts.append(post.id)
    _audit(
        fx,
        "POST_DELETED",
        post,
        cmd.actor,
        now,
        content_hash=post.content_hash,
        status=post.status.value,
        targets=[str(t) for t in post.targets],
        jobs=[j.id for j in jobs],
        cancelled=cancelled,
        reason=cmd.reason,
    )
    fx.reply = cancelled
    return fx


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
    _refuse_while_live(core, post, jobs, "deleted")
    _refuse_in_doubt(post, jobs, "delete")


def _check_deletable_here(core: LeaseCore, post: Post, jobs: Sequence[Job], pending: int) -> None:
    """With several coordinators: the post's jobs in other coordinators' shards may be removed
    from here only once finished (nothing there acts on them any more) and no task of the post
    is on its way to them (one could be making a job there right now)."""
    if pending:
        raise FailedPrecondition(
            f"post {post.id} is still being scheduled or changed on the coordinators that own "
            f"its other targets ({pending} task(s) on their way); try again in a moment"
        )
    open_there = [
        j for j in jobs if not core.scope.owns(j.target) and j.status not in TERMINAL_JOB_STATUSES
    ]
    if shards := remote_shards(core, [j.target for j in open_there]):
        # Its jobs there are in other coordinators' hands: they cannot be removed from here.
        raise FailedPrecondition(
            f"post {post.id} has unfinished jobs in shards {shards}, which other coordinators "
            "own; cancel it first (`postroom post cancel`), then delete it"
        )


def _refuse_while_live(core: LeaseCore, post: Post, jobs: Sequence[Job], what: str) -> None:
    for job in jobs:
        wait = core.permit_wait(job.id)
        if not wait and not core.scope.owns(job.target) and _permitted(job):
            wait = (
                f"job {job.id} may be publishing right now on the coordinator that owns "
                f"{job.target}: it holds a commit permit; wait for its result, then try again"
            )
        if wait:
            raise FailedPrecondition(f"post {post.id} cannot be {what} yet: {wait}")


def _permitted(job: Job) -> bool:
    """An attempt of another coordinator's job holds a commit permit (as the store has it)."""
    return job.status in LEASED_STATUSES and job.committed_epoch == job.lease_epoch > 0


def _schedule_remote(
    core: LeaseCore, fx: Effects, post: Post, when: float, new_job_id: str, actor: str
) -> None:
    """The jobs of the post's targets in other coordinators' shards: a task to each owner."""
    args = {"when": when, "actor": actor, "new_job_id": new_job_id}
    fx.batch.post_tasks += remote_tasks(core, post, SCHEDULE, args)


def _elsewhere(remote: Sequence[object]) -> dict[str, list[str]]:
    """The audit's word on targets scheduled by their shards' owners (none: nothing said)."""
    return {"elsewhere": [str(t) for t in remote]} if remote else {}


def _refuse_in_doubt(post: Post, jobs: Sequence[Job], then: str) -> None:
    """Refuse while an attempt may have published the post unseen (a permit, no answer): say
    how to clear that doubt first."""
    # CANCELLED ones are left out: nothing could clear their doubt, and a person cancelled them.
    doubt = [j for j in jobs if j.verify_first and j.status is not JobStatus.CANCELLED]
    if doubt:
        ids = ", ".join(f"{j.id} ({j.target})" for j in doubt)
        raise FailedPrecondition(
            f"post {post.id} may be live: an attempt of job {ids} got a commit permit and never "
            "reported. Look on the platform: if the post is there, record it with `postroom job "
            "resolve JOB --published-url URL`; if not, let the job look first (`postroom job "
            f"retry JOB` if it is not queued). Then {then}"
        )
