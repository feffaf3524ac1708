"""Post tasks on the owner's side, pure core (coordinator/posttasks.py): a schedule task is one
shard's, and scheduling sees the finished jobs the core had let go.

Found by the chaos soak on placement spread: a coordinator owning shards 0 and 1 held a post
with only its shard-1 job (the shard-0 job had SUCCEEDED and been let go before it took shard 1);
applying shard 1's schedule task made the shard-0 target's job again, with the id it had: the
database refused it and the coordinator crashed. A target already published must never get a
new job, and a task must not do another shard's work.
"""

from __future__ import annotations

import dataclasses

from lease_harness import make_post
from test_core_scope import A, B, C, harness

from coordinator import posttasks
from coordinator.domain import JobStatus
from coordinator.store.base import PostTask


def _schedule_task(shard: int, prefix: str, when: float) -> PostTask:
    return PostTask(shard, "p1", "schedule", {"when": when, "actor": "demo", "new_job_id": prefix})


def test_a_schedule_task_never_remakes_a_published_target_the_core_let_go() -> None:
    h = harness({0, 1})
    post, (ja, jb, jc) = make_post("p1", (A, B, C), h.now)
    published = dataclasses.replace(ja, status=JobStatus.SUCCEEDED)
    h.add(post, [jb])  # the shard-1 job is open here; the shard-0 one finished and was let go
    assert ja.id not in h.core.jobs and "p1" in h.core.posts
    # A reschedule of the whole post (a new time): every owned target would get a job.
    task = _schedule_task(0, ja.id[:-1], h.now + 60)
    fx = posttasks.apply(h.core, task, dataclasses.replace(post), [published, jb, jc], h.now)
    assert fx.batch.new_jobs == []  # A is published: never again
    assert h.core.jobs[ja.id].status is JobStatus.SUCCEEDED  # seen again, as the store has it
    assert [t.id for t in fx.batch.done_post_tasks] == [task.id]


def test_a_schedule_task_does_only_its_own_shards_targets() -> None:
    h = harness({0, 1})
    post, _never_stored = make_post("p1", (A, B, C), h.now)
    fresh = dataclasses.replace(post)
    task = _schedule_task(1, "p1-new-", h.now)
    fx = posttasks.apply(h.core, task, fresh, [], h.now)
    # B is shard 1's; A (shard 0, also owned here) waits for shard 0's own task; C is remote.
    assert [(j.target, j.id) for j in fx.batch.new_jobs] == [(B, "p1-new-1")]
