"""The actor's load phase: what an operator command needs from the store, read before the pure
step decides it (coordinator/step.py never does I/O).

A command on a post or job the core does not hold open (a draft, an approved post not yet
scheduled, a finished one) gets that post and all its jobs in `loaded`; an approval the
four-eyes rule judges gets the post's authors from the audit log. What the core holds needs no
load: for open posts memory is the truth (it may hold writes the store has but the next read
would race with). Runs inside the actor, after the batch before it was committed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from coordinator import operator_commands as op
from coordinator.access.approval import applies, authors
from coordinator.step import CoordinatorState
from coordinator.store.base import Store


async def load(store: Store, state: CoordinatorState, cmd: op.OperatorCommand) -> Any:
    """`cmd` with what it needs from the store filled in (the same command if nothing)."""
    loader = _LOADERS.get(type(cmd))
    return cmd if loader is None else await loader(store, state, cmd)


async def _post(store: Store, state: CoordinatorState, cmd: op.PostCommand) -> op.PostCommand:
    if cmd.post_id in state.core.posts:
        return cmd
    post = await store.get_post(cmd.post_id)  # NotFound says which post
    jobs = tuple(await store.jobs_for_post(post.id))
    return dataclasses.replace(cmd, loaded=op.Stored(post, jobs))


async def _approve(store: Store, state: CoordinatorState, cmd: op.ApprovePost) -> op.ApprovePost:
    if cmd.post_id not in state.core.posts:
        post = await store.get_post(cmd.post_id)
        jobs = tuple(await store.jobs_for_post(post.id))
        cmd = dataclasses.replace(cmd, loaded=op.Stored(post, jobs))
    if not applies(state.credentials, cmd.principal):
        return cmd
    return dataclasses.replace(cmd, authors=frozenset(await authors(store, cmd.post_id)))


async def _job(store: Store, state: CoordinatorState, cmd: op.JobCommand) -> op.JobCommand:
    if cmd.job_id in state.core.jobs:
        return cmd
    job = await store.get_job(cmd.job_id)  # NotFound says which job
    post = await store.get_post(job.post_id)
    jobs = tuple(await store.jobs_for_post(post.id))
    return dataclasses.replace(cmd, loaded=op.Stored(post, jobs))


_LOADERS: dict[type[Any], Callable[[Store, CoordinatorState, Any], Awaitable[Any]]] = {
    op.UpdatePost: _post,
    op.SubmitPost: _post,
    op.ApprovePost: _approve,
    op.SchedulePost: _post,
    op.CancelPost: _post,
    op.DeletePost: _post,
    op.CancelJob: _job,
    op.RetryJob: _job,
    op.ConfirmJob: _job,
    op.ResolveJob: _job,
}
