"""The actor's load phase: what an operator command needs from the store, read before the pure
step decides it (coordinator/step.py never does I/O).

A command on a post or job the core does not hold open (a draft, an approved post not yet
scheduled, a finished one) gets that post and all its jobs in `loaded`; an approval the
four-eyes rule judges gets the post's authors from the audit log. What the core holds needs no
load: for open posts memory is the truth (it may hold writes the store has but the next read
would race with). Runs inside the actor, after the batch before it was committed.

Shards' work (read_shard_work) is what the actor reads when it takes shards over: at start-up,
or a share of them while it runs (coordinator/cluster/: several coordinators).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from coordinator import operator_commands as op
from coordinator.access.approval import applies, authors
from coordinator.domain import LEASED_STATUSES, GateRecord, Job, Post, Run, Target
from coordinator.errors import NotFound
from coordinator.gates import GateBook
from coordinator.leasing.core import LeaseCore
from coordinator.step import CoordinatorState
from coordinator.store.base import Store
from coordinator.store.postgres import PostgresStore


async def load(store: Store, state: CoordinatorState, cmd: op.OperatorCommand) -> Any:
    """`cmd` with what it needs from the store filled in (the same command if nothing)."""
    loader = _LOADERS.get(type(cmd))
    return cmd if loader is None else await loader(store, state, cmd)


async def _post(store: Store, state: CoordinatorState, cmd: op.PostCommand) -> op.PostCommand:
    # With only some shards (several coordinators), the post's status (derived by the store from
    # every shard's jobs) and its other shards' jobs are the store's: always read them.
    if cmd.post_id in state.core.posts and state.core.scope.everything:
        return cmd
    post = await store.get_post(cmd.post_id)  # NotFound says which post
    jobs = tuple(await store.jobs_for_post(post.id))
    return dataclasses.replace(cmd, loaded=op.Stored(post, jobs))


async def _delete(store: Store, state: CoordinatorState, cmd: op.DeletePost) -> op.DeletePost:
    loaded = await _post(store, state, cmd)
    assert isinstance(loaded, op.DeletePost)
    if state.core.scope.everything or not isinstance(store, PostgresStore):
        return loaded
    pending = await store.post_tasks_pending_for(cmd.post_id)
    return dataclasses.replace(loaded, tasks_pending=pending)


async def _approve(store: Store, state: CoordinatorState, cmd: op.ApprovePost) -> op.ApprovePost:
    if cmd.post_id not in state.core.posts or not state.core.scope.everything:
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
    state.core.scope.check_owner(job.target)  # another coordinator's: read no more of it
    post = await store.get_post(job.post_id)
    jobs = tuple(await store.jobs_for_post(post.id))
    return dataclasses.replace(cmd, loaded=op.Stored(post, jobs))


async def _post_tasks(
    store: Store, state: CoordinatorState, cmd: op.ApplyPostTasks
) -> op.ApplyPostTasks:
    loaded: list[op.Stored | None] = []
    for task in cmd.tasks:
        try:
            post = await store.get_post(task.post_id)
        except NotFound:  # deleted meanwhile: the task has nothing left to do
            loaded.append(None)
            continue
        loaded.append(op.Stored(post, tuple(await store.jobs_for_post(post.id))))
    return dataclasses.replace(cmd, loaded=tuple(loaded))


_LOADERS: dict[type[Any], Callable[[Store, CoordinatorState, Any], Awaitable[Any]]] = {
    op.ApplyPostTasks: _post_tasks,
    op.UpdatePost: _post,
    op.SubmitPost: _post,
    op.ApprovePost: _approve,
    op.SchedulePost: _post,
    op.CancelPost: _post,
    op.DeletePost: _delete,
    op.CancelJob: _job,
    op.RetryJob: _job,
    op.ConfirmJob: _job,
    op.ResolveJob: _job,
}


@dataclass(frozen=True, slots=True)
class ShardWork:
    """Shards' work as the store holds it, for the core to take in (LeaseCore.load)."""

    posts: list[Post]
    jobs: list[Job]
    runs: dict[str, Run]  # job id -> its latest run, for leased jobs
    gates: list[GateRecord]
    commits: dict[Target, int]  # commit permits in each quota's window
    active: int  # active jobs among `jobs`

    def take(self, core: LeaseCore, now: float) -> None:
        core.load(self.posts, self.jobs, now, self.runs)
        core.gates.load(self.gates)
        for target, n in self.commits.items():
            core.gates.seed_commits(target, [now] * n)


async def read_shard_work(
    store: Store, gates: GateBook, now: float, wanted: Callable[[Target], bool]
) -> ShardWork:
    """The active jobs of the targets `wanted` says yes to, their posts with those posts' jobs of
    such targets, the runs of leased ones, their gates and their quotas' commit counts."""
    active = [j for j in await store.load_active_jobs() if wanted(j.target)]
    post_ids = sorted({j.post_id for j in active})
    posts = [await store.get_post(pid) for pid in post_ids]
    jobs = [j for pid in post_ids for j in await store.jobs_for_post(pid) if wanted(j.target)]
    runs = {}
    for job in jobs:
        if job.status in LEASED_STATUSES and (job_runs := await store.get_runs(job.id)):
            runs[job.id] = job_runs[-1]
    commits: dict[Target, int] = {}
    for target in sorted({j.target for j in jobs}):
        if (quota := gates.quota(target)) is not None:
            since = now - quota.window_s
            commits[target] = await store.count_commits_since(
                target.platform, target.account, since
            )
    shard_gates = [g for g in await store.list_gates() if wanted(g.target)]
    return ShardWork(posts, jobs, runs, shard_gates, commits, len(active))
