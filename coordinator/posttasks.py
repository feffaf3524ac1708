"""Post tasks: a post whose targets live in shards of several coordinators (placement "spread").

Every operator command on a post runs on its home coordinator (the owner of the shard of its
first target: coordinator/cluster/route.py), which writes the post and the jobs of the shards it
owns. What the command means for the jobs of the other shards goes, in the same batch, as one
task per shard (store/base.py PostTask) to their owners, who apply it in their own fenced batch
and mark it done there: exactly once per shard, even across a crash or a hand-off (a task left
undone is taken by the shard's next owner). The kinds:

- "schedule": make (upsert) the jobs of your targets for this schedule, as the home did for its
  own (args: when, actor, new_job_id: job ids stay unique, `{new_job_id}{target index}`);
- "refresh": the post's content or approval changed: held jobs follow (design.md: a job whose
  content no longer matches the approval is not published);
- "cancel": the post was cancelled: cancel your unfinished jobs of it (args: actor, reason).

Pure functions over the lease core, like posts.py: the home's side (`remote_tasks`) and the
owner's (`apply`), decided inside the actor; the load phase brought the post and its jobs as the
store has them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from coordinator.domain import TERMINAL_JOB_STATUSES, Job, Post, PostStatus, Target
from coordinator.leasing.core import LeaseCore
from coordinator.leasing.effects import Effects
from coordinator.store.base import PostTask

SCHEDULE = "schedule"
REFRESH = "refresh"
CANCEL = "cancel"


def remote_shards(core: LeaseCore, targets: Iterable[Target]) -> list[int]:
    """The shards of `targets` this coordinator does not own (none with every shard)."""
    scope = core.scope
    if scope.everything:
        return []
    return sorted({scope.shard(t) for t in targets if not scope.owns(t)})


def remote_tasks(
    core: LeaseCore,
    post: Post,
    kind: str,
    args: Mapping[str, Any] | None = None,
    *,
    targets: Iterable[Target] = (),
) -> list[PostTask]:
    """One `kind` task per shard of the post's targets (and of `targets`: those an edit took
    away) that another coordinator owns."""
    shards = remote_shards(core, [*post.targets, *targets])
    return [PostTask(shard, post.id, kind, dict(args or {})) for shard in shards]


def apply(
    core: LeaseCore, task: PostTask, post: Post | None, jobs: Sequence[Job], now: float
) -> Effects:
    """The owner's side of one task: `post` and `jobs` as the store has them (None: the post is
    gone, nothing to do). The task is marked done in the same batch, unless its shard is no
    longer this core's (then nothing is done: it stays for the shard's next owner)."""
    fx = Effects()
    if task.shard not in core.scope.all_shards():
        # Its shard left this core (evicted) after the consumer read the task: the shard's next
        # owner applies it. Done here, it would be lost (and written outside the fence).
        return fx
    fx.batch.done_post_tasks.append(task)
    if post is None:
        return fx
    if task.kind == SCHEDULE:
        fx.extend(_schedule(core, task, post, jobs, now))
    elif post.id not in core.posts:
        pass  # no unfinished job of it here: nothing to hold or cancel
    elif task.kind == REFRESH:
        core.update_post(dataclasses.replace(post))
        fx.extend(core.dispatch(now))
    elif task.kind == CANCEL:
        core.update_post(dataclasses.replace(post, status=PostStatus.CANCELLED))
        reason = str(task.args.get("reason", "")) or "post cancelled"
        fx.extend(core.cancel_jobs(post.id, str(task.args.get("actor", "")), reason, now))
        fx.extend(core.dispatch(now))
    return fx


def take_finished(core: LeaseCore, post_id: str, jobs: Sequence[Job]) -> None:
    """The store's finished jobs of an open post's targets in this core's shards that the core
    does not hold (it let them go with an evicted shard, or took the shard after they finished):
    scheduling must see them, since a target already SUCCEEDED is never published again, and a
    job id once used must not be made again. Unfinished ones the core holds already (load)."""
    if post_id not in core.posts:
        return
    for job in jobs:
        finished = job.status in TERMINAL_JOB_STATUSES
        if finished and job.id not in core.jobs and core.scope.owns(job.target):
            core.track(dataclasses.replace(job))


def _schedule(
    core: LeaseCore, task: PostTask, post: Post, jobs: Sequence[Job], now: float
) -> Effects:
    # The post's jobs of this coordinator's shards, published ones included: a target that
    # already has a SUCCEEDED job is never published again (the core may have let them go).
    core.adopt(post, tuple(jobs))  # it takes in the jobs of this core's shards only
    take_finished(core, post.id, jobs)
    core.update_post(dataclasses.replace(post))
    when = float(task.args.get("when", now))
    actor = str(task.args.get("actor", ""))
    new_job_id = str(task.args.get("new_job_id", ""))
    # This shard's targets only: another shard of this coordinator's has a task of its own
    # (applied by it, or by that shard's next owner if it is on its way out).
    in_shard = partial(_in_shard, core, task.shard)
    fx, touched, _, _ = core.schedule_jobs(post, when, new_job_id, actor, now, only=in_shard)
    fx.extend(core.add_post_jobs(dataclasses.replace(post), touched, now))
    return fx


def _in_shard(core: LeaseCore, shard: int, target: Target) -> bool:
    return core.scope.shard(target) == shard
