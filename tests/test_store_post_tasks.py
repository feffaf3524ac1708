"""What the PostgreSQL store does for coordinators that each own some shards ("spread"), on a
real server: a fenced batch re-derives the status of the posts whose jobs it wrote from ALL
their jobs, so two coordinators finishing the two jobs of one post at once leave it PUBLISHED;
post tasks are inserted for any shard with a notice to its listeners, read back oldest first,
and marked done only by the shard's holder. SQLite and the in-memory store refuse post tasks."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest
from pg_rig import pg_database, pg_store, shard_ownership
from test_store import all_audit, audit, make_job, make_post

from coordinator.domain import Job, JobStatus, PostStatus, Target
from coordinator.errors import StoreError
from coordinator.leasing.postbook import DERIVED_STATUSES as POSTBOOK_DERIVED
from coordinator.store import InMemoryStore, JobWrite, PostgresStore, SqliteStore, WriteBatch
from coordinator.store.base import PostTask, Store
from coordinator.store.ownership import ShardOwnership
from coordinator.store.shards import Fence, OwnershipLost, ShardLease, shard_of
from coordinator.store.sqlbase import DERIVED_STATUSES

__all__ = ["pg_database", "pg_store", "shard_ownership"]

pytestmark = pytest.mark.anyio

SHARDS = 8
TTL_S = 60.0
J = JobStatus


@pytest.fixture
def shard_count() -> int:
    return SHARDS


def two_targets() -> tuple[Target, Target]:
    """Two accounts in different shards: jobs two coordinators own one each."""
    first = Target("x", "acct-0")
    second = next(
        Target("mastodon", f"acct-{i}")
        for i in range(100)
        if shard_of("mastodon", f"acct-{i}", SHARDS) != shard_of("x", "acct-0", SHARDS)
    )
    return first, second


def shard(target: Target) -> int:
    return shard_of(target.platform, target.account, SHARDS)


def finished(job: Job, status: JobStatus = J.SUCCEEDED) -> WriteBatch:
    """A worker's result for `job` (as stored), as the lease core writes it, with its audit."""
    new = dataclasses.replace(job, status=status, updated_at=job.updated_at + 5)
    write = JobWrite(new, frozenset({job.status}), job.lease_epoch)
    return WriteBatch(job_writes=[write], audits=[audit("JOB_DONE", job.id)])


async def seed_post(pg_store: PostgresStore, status: PostStatus, *jobs: Job) -> None:
    post = make_post("p1", status=status)
    await pg_store.apply(WriteBatch(new_posts=[post], new_jobs=list(jobs)))


async def claim(shard_ownership: ShardOwnership, owner: str, shards: list[int]) -> list[ShardLease]:
    leases = await shard_ownership.claim(owner, want=len(shards), ttl_s=TTL_S, only=shards)
    assert [lease.shard for lease in leases] == sorted(shards)
    return leases


async def status_changes(pg_store: PostgresStore) -> list[tuple[int, dict[str, object]]]:
    return [
        (e.seq, dict(e.details))
        for e in await all_audit(pg_store)
        if e.action == "POST_STATUS_CHANGED" and e.subject_id == "p1"
    ]


def test_the_store_derives_the_statuses_the_core_derives() -> None:
    assert DERIVED_STATUSES == POSTBOOK_DERIVED


# -- derived post status --------------------------------------------------------------------


async def test_a_fenced_batch_derives_the_post_from_all_its_jobs(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    mine, theirs = two_targets()
    done = make_job("j1", target=theirs, status=J.SUCCEEDED)  # another coordinator's, finished
    running = make_job("j2", target=mine, status=J.RUNNING)
    await seed_post(pg_store, PostStatus.PUBLISHING, done, running)
    fence = Fence.of("a", SHARDS, await claim(shard_ownership, "a", [shard(mine)]))

    batch = finished(running)
    await pg_store.apply_fenced(batch, fence, derive_posts=True)

    post = await pg_store.get_post("p1")
    assert post.status is PostStatus.PUBLISHED
    assert post.updated_at == running.updated_at + 5  # the batch's time, not the server's
    # The audit is numbered after the batch's own, and handed back with it.
    assert await status_changes(pg_store) == [(2, {"from": "PUBLISHING", "to": "PUBLISHED"})]
    assert [(e.action, e.seq) for e in batch.audits] == [
        ("JOB_DONE", 1),
        ("POST_STATUS_CHANGED", 2),
    ]


async def test_without_derive_posts_or_before_scheduling_the_status_stays(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    mine, _ = two_targets()
    job = make_job("j1", target=mine, status=J.RUNNING)
    cancelled = make_job("j2", "p2", target=mine, status=J.RUNNING, key="p2-key")
    posts = [
        make_post("p1", status=PostStatus.PUBLISHING),
        make_post("p2", status=PostStatus.CANCELLED),
    ]
    await pg_store.apply(WriteBatch(new_posts=posts, new_jobs=[job, cancelled]))
    fence = Fence.of("a", SHARDS, await claim(shard_ownership, "a", [shard(mine)]))
    await pg_store.apply_fenced(finished(job, J.FAILED), fence)  # phase 1: the core derives
    assert (await pg_store.get_post("p1")).status is PostStatus.PUBLISHING

    # An operator's status (not derived) is left alone however the jobs end.
    await pg_store.apply_fenced(finished(cancelled), fence, derive_posts=True)
    assert (await pg_store.get_post("p2")).status is PostStatus.CANCELLED
    assert [e.action for e in await all_audit(pg_store)] == ["JOB_DONE", "JOB_DONE"]


async def test_two_coordinators_finishing_a_posts_two_jobs_at_once_publish_it(
    pg_database: str, pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    """Both batches have written nothing yet when they race for the post: each waits on the
    post's row (held here), then both go at once. Whichever commits second must see the
    other's job SUCCEEDED and write PUBLISHED, though neither saw the other's job start."""
    first_target, second_target = two_targets()
    first = make_job("j1", target=first_target, status=J.RUNNING)
    second = make_job("j2", target=second_target, status=J.RUNNING)
    await seed_post(pg_store, PostStatus.PUBLISHING, first, second)
    fence_a = Fence.of("a", SHARDS, await claim(shard_ownership, "a", [shard(first_target)]))
    fence_b = Fence.of("b", SHARDS, await claim(shard_ownership, "b", [shard(second_target)]))
    other = PostgresStore(pg_database)  # the second coordinator process's store
    await other.open()
    blocker, watcher = await asyncpg.connect(pg_database), await asyncpg.connect(pg_database)
    try:
        hold = blocker.transaction()
        await hold.start()
        await blocker.execute("SELECT id FROM posts WHERE id = 'p1' FOR NO KEY UPDATE")
        async with anyio.create_task_group() as tg:
            for s, batch, fence in (
                (pg_store, finished(first), fence_a),
                (other, finished(second), fence_b),
            ):
                tg.start_soon(functools.partial(s.apply_fenced, batch, fence, derive_posts=True))
            with anyio.fail_after(20):
                while await waiting_on_locks(watcher) < 2:  # noqa: ASYNC110 - no event: a server's state
                    await anyio.sleep(0.02)
            await hold.rollback()
    finally:
        await blocker.close()
        await watcher.close()
        await other.close()
    assert {j.status for j in await pg_store.jobs_for_post("p1")} == {J.SUCCEEDED}
    assert (await pg_store.get_post("p1")).status is PostStatus.PUBLISHED
    assert [d for _, d in await status_changes(pg_store)] == [
        {"from": "PUBLISHING", "to": "PUBLISHED"}
    ]


async def waiting_on_locks(conn: asyncpg.Connection) -> int:
    """Sessions of this database waiting for a lock another holds (`conn` outside a
    transaction: inside one, pg_stat_activity stays as it first read it)."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        )
    )


# -- post tasks -------------------------------------------------------------------------------


async def test_post_tasks_are_notified_read_oldest_first_and_done_by_the_holder(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    await pg_store.apply(WriteBatch(new_posts=[make_post("p1")]))
    leases = await claim(shard_ownership, "a", [1])
    fence = Fence.of("a", SHARDS, leases)
    tasks = [
        PostTask(3, "p1", "intake", {"targets": ["x:acct-1"], "at": 1.5}),
        PostTask(3, "p1", "refresh"),
        PostTask(5, "p1", "cancel", {"why": "operator"}),
    ]
    async with pg_store.listen_post_tasks() as notified:
        # Tasks for shards the fence does not hold: asking their owners is the point.
        await pg_store.apply_fenced(WriteBatch(post_tasks=tasks, audits=[audit()]), fence)
        with anyio.fail_after(10):
            assert sorted([await notified.receive(), await notified.receive()]) == [3, 5]

    pending = await pg_store.pending_post_tasks([3, 5, 6])
    assert [(t.shard, t.kind, dict(t.args)) for t in pending] == [
        (3, "intake", {"targets": ["x:acct-1"], "at": 1.5}),
        (3, "refresh", {}),
        (5, "cancel", {"why": "operator"}),
    ]
    assert pending[0].id < pending[1].id < pending[2].id
    assert all(t.created_at > 1e9 for t in pending)  # the server's clock
    assert [t.kind for t in await pg_store.pending_post_tasks([3], limit=1)] == ["intake"]
    assert await pg_store.pending_post_tasks([0, 1]) == []

    # Shard 3's owner does the first and marks it done under its fence.
    owner = Fence.of("b", SHARDS, await claim(shard_ownership, "b", [3]))
    await pg_store.apply_fenced(WriteBatch(done_post_tasks=[pending[0]]), owner)
    assert [t.kind for t in await pg_store.pending_post_tasks(range(SHARDS))] == [
        "refresh",
        "cancel",
    ]


async def test_a_fence_refuses_done_tasks_of_shards_it_does_not_hold(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    await pg_store.apply(
        WriteBatch(new_posts=[make_post("p1")], post_tasks=[PostTask(4, "p1", "delete")])
    )
    [task] = await pg_store.pending_post_tasks([4])
    fence = Fence.of("a", SHARDS, await claim(shard_ownership, "a", [2]))
    with pytest.raises(OwnershipLost, match=r"a marks done post tasks of shards \[4\]"):
        await pg_store.apply_fenced(WriteBatch(done_post_tasks=[task], audits=[audit()]), fence)
    assert await pg_store.pending_post_tasks([4]) == [task]
    assert await all_audit(pg_store) == []
    with pytest.raises(StoreError, match=r"shards \[8\], not in 0\.\.7"):
        await pg_store.apply_fenced(WriteBatch(post_tasks=[PostTask(8, "p1", "intake")]), fence)


async def test_post_task_args_must_be_json(pg_store: PostgresStore) -> None:
    bad = PostTask(0, "p1", "intake", {"when": object()})
    with pytest.raises(StoreError, match="args not JSON"):
        await pg_store.apply(WriteBatch(post_tasks=[bad], audits=[audit()]))
    assert await all_audit(pg_store) == []


async def test_a_listener_stream_ends_when_the_server_drops_it(
    pg_database: str, pg_store: PostgresStore
) -> None:
    async with pg_store.listen_post_tasks() as notified:
        conn = await asyncpg.connect(pg_database)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
        finally:
            await conn.close()
        with anyio.fail_after(10):
            assert [shard async for shard in notified] == []


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_stores_of_one_coordinator_refuse_post_tasks(kind: str, tmp_path: Path) -> None:
    pg_store: Store = InMemoryStore() if kind == "memory" else SqliteStore(tmp_path / "s.db")
    await pg_store.open()
    try:
        await pg_store.apply(WriteBatch(new_posts=[make_post("p1")]))
        for batch in (
            WriteBatch(post_tasks=[PostTask(0, "p1", "intake")], audits=[audit()]),
            WriteBatch(done_post_tasks=[PostTask(0, "p1", "intake", id=1)]),
        ):
            assert batch
            with pytest.raises(StoreError, match=r"post tasks need PostgreSQL"):
                await pg_store.apply(batch)
        assert await all_audit(pg_store) == []
    finally:
        await pg_store.close()
