"""The Store contract, run against the in-memory fake, SQLite and PostgreSQL alike; then SQLite's
own promises: migrations produce the schema, and a SIGKILLed process loses no committed batch.
(PostgreSQL's own promises: test_store_postgres.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from pg_rig import empty_tables, pg_database

from coordinator.domain import (
    AuditEvent,
    DeviceRecord,
    ErrorClass,
    GateRecord,
    Job,
    JobStatus,
    LoginState,
    Post,
    PostStatus,
    Run,
    ScreenshotRecord,
    StepLogEntry,
    Target,
    WorkerKind,
)
from coordinator.errors import ConcurrentUpdate, InvalidArgument, NotFound, StoreError
from coordinator.store import (
    InMemoryStore,
    JobFilter,
    JobWrite,
    PostWrite,
    SqliteStore,
    Store,
    WriteBatch,
    open_store,
)
from coordinator.store.migrations import load_migrations
from coordinator.store.postgres import PostgresStore

__all__ = ["pg_database"]  # a fixture, used through request.getfixturevalue

pytestmark = pytest.mark.anyio

T0 = 1_800_000_000.0
J = JobStatus
X_ACME = Target("x", "acme")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite needs asyncio


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store
    if request.param == "postgres":
        url = request.getfixturevalue("pg_database")
        await empty_tables(url)
        s = PostgresStore(url)
    else:
        s = InMemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "s.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def make_post(
    post_id: str = "p1", *, status: PostStatus = PostStatus.DRAFT, created_at: float = T0
) -> Post:
    return Post(
        id=post_id,
        text=f"text of {post_id}",
        media=("m1", "m2"),
        targets=(X_ACME, Target("mastodon", "acme")),
        scheduled_at=None,
        status=status,
        content_hash="hash",
        created_at=created_at,
        updated_at=created_at,
    )


def make_job(
    job_id: str = "j1",
    post_id: str = "p1",
    *,
    status: JobStatus = J.QUEUED,
    target: Target = X_ACME,
    created_at: float = T0,
    key: str = "",
) -> Job:
    return Job(
        id=job_id,
        post_id=post_id,
        platform=target.platform,
        account=target.account,
        status=status,
        idempotency_key=key or f"{post_id}:{target}:{job_id}",
        platform_key=f"pk-{job_id}",
        content_hash="hash",
        text="hello",
        media=("m1",),
        scheduled_at=T0,
        created_at=created_at,
        updated_at=created_at,
        not_before=T0,
    )


def moved(job: Job, status: JobStatus, **changes: Any) -> JobWrite:
    """The JobWrite moving `job` (as stored) to `status`."""
    new = dataclasses.replace(job, status=status, **changes)
    return JobWrite(new, frozenset({job.status}), job.lease_epoch)


def audit(action: str = "A", subject: str = "p1", at: float = T0) -> AuditEvent:
    return AuditEvent(action=action, subject_id=subject, actor="alice", at=at, details={"n": 1})


async def seed(store: Store, *jobs: Job) -> None:
    posts = {j.post_id for j in jobs} or {"p1"}
    await store.apply(WriteBatch(new_posts=[make_post(p) for p in sorted(posts)], new_jobs=[*jobs]))


async def all_audit(store: Store) -> list[AuditEvent]:
    return await store.list_audit(since=None, subject_id="", action="", after_seq=0, limit=-1)


# -- posts --------------------------------------------------------------------------------


async def test_posts_insert_get_list_page_and_filter(store: Store) -> None:
    posts = [make_post(f"p{i}", created_at=T0 + i) for i in range(5)]
    posts[1].status = posts[3].status = PostStatus.APPROVED
    posts[4].scheduled_at, posts[4].require_confirm = T0 + 99, True
    await store.apply(WriteBatch(new_posts=posts))

    assert await store.get_post("p4") == posts[4]
    newest_first = await store.list_posts(status=None, limit=10, offset=0)
    assert [p.id for p in newest_first] == ["p4", "p3", "p2", "p1", "p0"]
    assert newest_first[0] == posts[4]
    page = await store.list_posts(status=None, limit=2, offset=2)
    assert [p.id for p in page] == ["p2", "p1"]
    approved = await store.list_posts(status=PostStatus.APPROVED, limit=10, offset=0)
    assert [p.id for p in approved] == ["p3", "p1"]
    assert await store.list_posts(status=PostStatus.CANCELLED, limit=10, offset=0) == []


async def test_pages_continue_after_a_cursor_and_jobs_come_for_many_posts(store: Store) -> None:
    # Two posts per created_at: the cursor orders by (created_at, id), as the pages do.
    posts = [make_post(f"p{i}", created_at=T0 + i // 2) for i in range(5)]
    jobs = [make_job(f"j{i}", f"p{i}", created_at=T0 + i // 2) for i in range(5)]
    await store.apply(WriteBatch(new_posts=posts, new_jobs=jobs))
    first = await store.list_posts(status=None, limit=2, offset=0)
    assert [p.id for p in first] == ["p4", "p3"]
    await store.apply(WriteBatch(new_posts=[make_post("p9", created_at=T0 + 9)]))
    after = (first[-1].created_at, first[-1].id)
    nxt = await store.list_posts(status=None, limit=2, offset=0, before=after)
    assert [p.id for p in nxt] == ["p2", "p1"]  # the post added meanwhile shifts nothing
    job_page = await store.list_jobs(JobFilter(), limit=10, offset=0, before=(T0 + 1, "j3"))
    assert [j.id for j in job_page] == ["j2", "j1", "j0"]
    assert [j.id for j in await store.jobs_for_posts(["p3", "p0", "nope"])] == ["j0", "j3"]
    assert await store.jobs_for_posts([]) == []

    assert await store.last_audit_seq() == 0
    await store.apply(WriteBatch(audits=[audit(), audit(), audit()]))
    assert await store.last_audit_seq() == 3


async def test_unknown_ids_raise_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.get_post("nope")
    with pytest.raises(NotFound):
        await store.get_job("nope")
    assert await store.get_job_by_key("nope") is None
    assert await store.get_runs("nope") == []
    assert await store.jobs_for_post("nope") == []


async def test_post_write_is_compare_and_set(store: Store) -> None:
    await seed(store)
    post = await store.get_post("p1")
    post.status, post.text = PostStatus.PENDING_APPROVAL, "edited"
    await store.apply(WriteBatch(post_writes=[PostWrite(post, frozenset({PostStatus.DRAFT}))]))
    assert await store.get_post("p1") == post

    stale = dataclasses.replace(post, status=PostStatus.APPROVED, text="lost")
    with pytest.raises(ConcurrentUpdate, match="post p1 moved"):
        await store.apply(
            WriteBatch(
                new_posts=[make_post("p2")],
                post_writes=[PostWrite(stale, frozenset({PostStatus.DRAFT}))],
            )
        )
    assert await store.get_post("p1") == post
    with pytest.raises(NotFound):
        await store.get_post("p2")
    with pytest.raises(ConcurrentUpdate, match="post ghost moved"):
        ghost = make_post("ghost")
        await store.apply(WriteBatch(post_writes=[PostWrite(ghost, frozenset(PostStatus))]))


# -- jobs ---------------------------------------------------------------------------------


async def test_job_insert_and_lookups(store: Store) -> None:
    jobs = [make_job("j2", created_at=T0 + 1), make_job("j1"), make_job("j3", "p2")]
    jobs[0].last_error_class, jobs[0].lease_expires_at = ErrorClass.RATE_LIMITED, T0 + 5
    await seed(store, *jobs)
    assert await store.get_job("j2") == jobs[0]
    assert await store.get_job_by_key(jobs[2].idempotency_key) == jobs[2]
    assert [j.id for j in await store.jobs_for_post("p1")] == ["j1", "j2"]


async def test_idempotency_key_clash_writes_nothing_of_the_batch(store: Store) -> None:
    await seed(store, make_job("j1", key="K"))
    clash = WriteBatch(
        new_posts=[make_post("p2")],
        new_jobs=[make_job("j2", "p2", key="K")],
        audits=[audit()],
    )
    with pytest.raises(ConcurrentUpdate, match="idempotency key K"):
        await store.apply(clash)
    with pytest.raises(NotFound):
        await store.get_post("p2")
    with pytest.raises(NotFound):
        await store.get_job("j2")
    assert await all_audit(store) == []
    assert clash.audits[0].seq == 0

    with pytest.raises(ConcurrentUpdate, match="job j1 already exists"):
        await store.apply(WriteBatch(new_jobs=[make_job("j1", key="other")]))
    with pytest.raises(ConcurrentUpdate, match="post p1 already exists"):
        await store.apply(WriteBatch(new_posts=[make_post("p1")]))


async def test_rows_must_refer_to_existing_parents(store: Store) -> None:
    with pytest.raises(StoreError):
        await store.apply(WriteBatch(new_jobs=[make_job("j1", "no-such-post")]))
    run = Run("r1", "no-such-job", 1, "dev", 1, T0)
    with pytest.raises(StoreError):
        await store.apply(WriteBatch(runs=[run]))
    with pytest.raises(StoreError):
        await store.apply(WriteBatch(logs=[("no-such-run", StepLogEntry("s", "INFO", "m", T0))]))


async def test_job_write_compare_and_set_hits(store: Store) -> None:
    job = make_job()
    await seed(store, job)
    claim = moved(job, J.CLAIMED, lease_epoch=1, device_id="dev-1", lease_expires_at=T0 + 15)
    # Two moves of one job in one batch: the second expects what the first wrote.
    start = moved(claim.job, J.RUNNING, committed_epoch=1, verify_first=True)
    await store.apply(WriteBatch(job_writes=[claim, start]))
    assert await store.get_job("j1") == start.job


@pytest.mark.parametrize("miss", ["status", "epoch", "unknown job"])
async def test_job_write_miss_rolls_back_the_whole_batch(store: Store, miss: str) -> None:
    job, other = make_job(), make_job("j2")
    await seed(store, job, other)
    await store.apply(WriteBatch(job_writes=[moved(job, J.CLAIMED, lease_epoch=1)]))
    stored = await store.get_job("j1")  # CLAIMED at epoch 1
    bad = {
        "status": JobWrite(dataclasses.replace(stored, status=J.RUNNING), frozenset({J.QUEUED}), 1),
        "epoch": JobWrite(dataclasses.replace(stored, status=J.RUNNING), frozenset({J.CLAIMED}), 0),
        "unknown job": moved(make_job("ghost"), J.CLAIMED),
    }[miss]
    batch = WriteBatch(
        new_posts=[make_post("p2")],
        job_writes=[moved(other, J.CANCELLED), bad],
        runs=[Run("r1", "j1", 1, "dev-1", 1, T0)],
        audits=[audit()],
        gates=[GateRecord(X_ACME, T0 + 60, "429", 1)],
    )
    expected_id, expected_epoch = bad.job.id, bad.expected_epoch
    with pytest.raises(
        ConcurrentUpdate, match=f"job {expected_id} moved: .* epoch {expected_epoch}"
    ):
        await store.apply(batch)
    assert await store.get_job("j1") == stored
    assert (await store.get_job("j2")).status == J.QUEUED
    with pytest.raises(NotFound):
        await store.get_post("p2")
    assert await store.get_runs("j1") == []
    assert await all_audit(store) == []
    assert await store.list_gates() == []


async def test_load_active_jobs_returns_only_non_terminal(store: Store) -> None:
    jobs = [
        make_job(f"j-{s.value}", status=s, target=Target("x", s.value), created_at=T0 + i)
        for i, s in enumerate(JobStatus)
    ]
    await seed(store, *jobs)
    expected = {J.QUEUED, J.CLAIMED, J.RUNNING, J.AWAITING_CONFIRM, J.NEEDS_LOGIN}
    assert await store.load_active_jobs() == [j for j in jobs if j.status in expected]


async def test_count_jobs_per_status_and_platform(store: Store) -> None:
    mastodon = Target("mastodon", "acme")
    jobs = [make_job("j1"), make_job("j2"), make_job("j3", target=mastodon)]
    jobs[1].status = J.SUCCEEDED
    await seed(store, *jobs)
    assert dict(await store.count_jobs()) == {
        (J.QUEUED, "x"): 1,
        (J.SUCCEEDED, "x"): 1,
        (J.QUEUED, "mastodon"): 1,
    }


async def test_list_jobs_filters_each_field_newest_first(store: Store) -> None:
    a = make_job("a", "p1", created_at=T0)
    b = make_job("b", "p1", target=Target("x", "other"), created_at=T0 + 1)
    c = make_job("c", "p2", target=Target("bluesky", "acme"), created_at=T0 + 2)
    b.status, c.device_id = J.CLAIMED, "dev-9"
    await seed(store, a, b, c)

    async def ids(flt: JobFilter, limit: int = 10, offset: int = 0) -> list[str]:
        return [j.id for j in await store.list_jobs(flt, limit=limit, offset=offset)]

    assert await ids(JobFilter()) == ["c", "b", "a"]
    assert await ids(JobFilter(), limit=1, offset=1) == ["b"]
    assert await ids(JobFilter(status=J.CLAIMED)) == ["b"]
    assert await ids(JobFilter(platform="x")) == ["b", "a"]
    assert await ids(JobFilter(account="acme")) == ["c", "a"]
    assert await ids(JobFilter(post_id="p2")) == ["c"]
    assert await ids(JobFilter(device_id="dev-9")) == ["c"]
    assert await ids(JobFilter(platform="x", account="acme", status=J.QUEUED)) == ["a"]


# -- runs, audit, devices, gates ------------------------------------------------------------


async def test_runs_come_back_with_logs_and_screenshots_in_order(store: Store) -> None:
    await seed(store, make_job())
    r1 = Run("r1", "j1", 1, "dev-1", 1, T0)
    r2 = Run("r2", "j1", 2, "dev-2", 2, T0 + 10, error_class=ErrorClass.TRANSIENT)
    logs = [StepLogEntry(f"step{i}", "INFO", f"message {i}", T0 + i) for i in range(4)]
    shot = ScreenshotRecord("asset-1", "after_publish", 1234, "image/png", T0 + 11)
    # r2 arrives first but started later: runs come back by start time.
    await store.apply(WriteBatch(runs=[r2, r1], logs=[("r1", logs[0]), ("r2", logs[1])]))
    r1_done = dataclasses.replace(r1, ended_at=T0 + 5, outcome="failed", committed=True)
    await store.apply(
        WriteBatch(
            runs=[r1_done],
            logs=[("r1", logs[2]), ("r1", logs[3])],
            screenshots=[("r2", shot)],
        )
    )
    runs = await store.get_runs("j1")
    assert [r.id for r in runs] == ["r1", "r2"]
    assert runs[0] == dataclasses.replace(r1_done, logs=[logs[0], logs[2], logs[3]])
    assert runs[1] == dataclasses.replace(r2, logs=[logs[1]], screenshots=[shot])


async def test_count_commits_since_counts_committed_runs_of_the_target(store: Store) -> None:
    other = Target("x", "other")
    await seed(store, make_job("j1"), make_job("j2", target=other))
    runs = [
        Run("old", "j1", 1, "d", 1, T0 - 100, committed=True),
        Run("new", "j1", 2, "d", 2, T0, committed=True),
        Run("uncommitted", "j1", 3, "d", 3, T0 + 1),
        Run("elsewhere", "j2", 1, "d", 1, T0 + 1, committed=True),
    ]
    await store.apply(WriteBatch(runs=runs))
    assert await store.count_commits_since("x", "acme", T0) == 1
    assert await store.count_commits_since("x", "acme", T0 - 100) == 2
    assert await store.count_commits_since("x", "other", 0.0) == 1
    assert await store.count_commits_since("mastodon", "acme", 0.0) == 0


async def test_audit_seq_increases_and_filters_apply(store: Store) -> None:
    first = [audit("CREATE", "p1", T0), audit("APPROVE", "p1", T0 + 1)]
    await store.apply(WriteBatch(audits=first))
    assert [e.seq for e in first] == [1, 2]  # the caller's events learn their seq
    with pytest.raises(ConcurrentUpdate):  # a failed batch uses up no seq
        await store.apply(WriteBatch(new_posts=[make_post(), make_post()], audits=[audit()]))
    later = [audit("CREATE", "p2", T0 + 2), audit("CANCEL", "p1", T0 + 3)]
    await store.apply(WriteBatch(audits=later))
    assert [e.seq for e in later] == [3, 4]

    events = await all_audit(store)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[0] == first[0]

    async def seqs(
        since: float | None = None, subject: str = "", action: str = "", after: int = 0
    ) -> list[int]:
        found = await store.list_audit(
            since=since, subject_id=subject, action=action, after_seq=after, limit=10
        )
        return [e.seq for e in found]

    assert await seqs(since=T0 + 2) == [3, 4]
    assert await seqs(subject="p1") == [1, 2, 4]
    assert await seqs(action="CREATE") == [1, 3]
    assert await seqs(after=2) == [3, 4]
    assert await seqs(subject="p1", after=1, since=T0 + 1) == [2, 4]
    assert (
        len(await store.list_audit(since=None, subject_id="", action="", after_seq=0, limit=3)) == 3
    )


async def test_devices_and_gates_upsert(store: Store) -> None:
    device = DeviceRecord(
        "dev-1",
        WorkerKind.BROWSER,
        (X_ACME,),
        2,
        T0,
        "0.1",
        {X_ACME: (LoginState.LOGGED_IN, T0, "ok")},
    )
    gate = GateRecord(X_ACME, T0 + 60, "429", 1)
    await store.apply(
        WriteBatch(devices=[device, DeviceRecord("dev-0", WorkerKind.API, (), 4, T0)])
    )
    await store.apply(WriteBatch(gates=[gate, GateRecord(Target("bluesky", "a"), T0, "quota", 3)]))
    device.last_seen_at, device.logins[X_ACME] = T0 + 5, (LoginState.NEEDS_LOGIN, T0 + 5, "wall")
    gate.closed_until, gate.hits = T0 + 120, 2
    await store.apply(WriteBatch(devices=[device], gates=[gate]))

    devices = await store.list_devices()
    assert [d.id for d in devices] == ["dev-0", "dev-1"]
    assert devices[1] == device
    gates = await store.list_gates()
    assert [g.target.platform for g in gates] == ["bluesky", "x"]
    assert gates[1] == gate


async def test_reads_return_copies(store: Store) -> None:
    job = make_job()
    await seed(store, job)
    await store.apply(WriteBatch(runs=[Run("r1", "j1", 1, "d", 1, T0)], audits=[audit()]))
    job.status = J.FAILED  # the written object is not the stored one either
    (await store.get_job("j1")).status = J.CANCELLED
    (await store.load_active_jobs())[0].attempt = 7
    (await store.get_post("p1")).text = "changed"
    (await store.get_runs("j1"))[0].logs.append(StepLogEntry("x", "INFO", "y", T0))
    events = await all_audit(store)
    events[0].action = "changed"
    assert isinstance(events[0].details, dict)
    events[0].details["n"] = 2

    assert (await store.get_job("j1")) == make_job()
    assert (await store.get_post("p1")).text == "text of p1"
    assert (await store.get_runs("j1"))[0].logs == []
    assert (await all_audit(store))[0] == dataclasses.replace(audit(), seq=1)


async def test_concurrent_batches_all_land(store: Store) -> None:
    await seed(store)

    async def write(n: int) -> None:
        await store.apply(WriteBatch(audits=[audit(str(n)), audit(str(n))]))

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(write, n)
    events = await all_audit(store)
    assert [e.seq for e in events] == list(range(1, 41))
    # Each batch's two events are adjacent: batches do not interleave.
    assert all(events[i].action == events[i + 1].action for i in range(0, 40, 2))


async def test_a_cancelled_batch_lands_whole_or_not_at_all(store: Store) -> None:
    """Cancelled at many points along the way, by a native asyncio cancel (which no anyio shield
    stops): after each, the batch is all there or not at all, and the store still works."""
    await seed(store)
    started = time.perf_counter()
    await store.apply(WriteBatch(audits=[audit("warm-up") for _ in range(200)]))
    duration = time.perf_counter() - started
    points = 40
    for point in range(points):
        events = [audit(f"batch-{point}") for _ in range(200)]
        task = asyncio.ensure_future(store.apply(WriteBatch(audits=events)))
        if point < 10:  # early: a few event-loop turns in
            for _ in range(point):
                await asyncio.sleep(0)
        else:  # later: a fraction of the time a batch takes, up to 1.5 times it
            await asyncio.sleep((point - 10) / 20 * duration)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.apply(WriteBatch(audits=[audit(f"after-{point}")]))
        found = await store.list_audit(
            since=None, subject_id="", action=f"batch-{point}", after_seq=0, limit=-1
        )
        assert len(found) in (0, 200)
    assert (len(await all_audit(store)) - 200 - points) % 200 == 0


# -- open_store -----------------------------------------------------------------------------


def test_open_store_parses_urls(tmp_path: Path) -> None:
    def sqlite_path(url: str) -> str:
        store = open_store(url)
        assert isinstance(store, SqliteStore)
        return store.path

    assert sqlite_path("sqlite:///data/postroom.db") == "data/postroom.db"
    assert sqlite_path("sqlite:////var/lib/postroom.db") == "/var/lib/postroom.db"
    assert sqlite_path(f"{tmp_path}/bare.db") == f"{tmp_path}/bare.db"
    assert sqlite_path("relative.db") == "relative.db"
    assert isinstance(open_store("memory://"), InMemoryStore)
    for url in ("postgresql://user@db/postroom", "postgres://db/p", "postgresql+asyncpg://db/p"):
        assert isinstance(open_store(url), PostgresStore)
    for bad in ("sqlite:///", "mysql://db/x", "sqlite://x.db", ""):
        with pytest.raises(InvalidArgument):
            open_store(bad)


async def test_open_store_sqlite_creates_the_database(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/new/dir/p.db")
    await store.open()
    try:
        await seed(store)
        assert (await store.get_post("p1")).id == "p1"
    finally:
        await store.close()
    assert (tmp_path / "new" / "dir" / "p.db").exists()
    with pytest.raises(StoreError, match="not open"):
        await store.get_post("p1")


# -- SQLite: schema and durability ----------------------------------------------------------

# Per table: "<column> <type>[! for NOT NULL][ PK]", in column order.
EXPECTED_COLUMNS: dict[str, str] = {
    "schema_migrations": "version INTEGER PK, applied_at REAL",
    "posts": (
        "id TEXT! PK, text TEXT!, media TEXT!, targets TEXT!, scheduled_at REAL, status TEXT!, "
        "content_hash TEXT!, created_at REAL!, updated_at REAL!, approved_hash TEXT!, "
        "approved_by TEXT!, max_attempts INTEGER!, require_confirm INTEGER!"
    ),
    "jobs": (
        "id TEXT! PK, post_id TEXT!, platform TEXT!, account TEXT!, status TEXT!, "
        "idempotency_key TEXT!, platform_key TEXT!, content_hash TEXT!, text TEXT!, "
        "media TEXT!, scheduled_at REAL!, created_at REAL!, updated_at REAL!, "
        "not_before REAL!, max_attempts INTEGER!, attempt INTEGER!, "
        "rate_limited_count INTEGER!, lease_epoch INTEGER!, device_id TEXT!, "
        "lease_expires_at REAL, committed_epoch INTEGER!, verify_first INTEGER!, "
        "require_confirm INTEGER!, last_error_class TEXT, last_error TEXT!, "
        "result_post_id TEXT!, result_url TEXT!, resolved_by TEXT!, lost_looks INTEGER!"
    ),
    "runs": (
        "id TEXT! PK, job_id TEXT!, attempt INTEGER!, device_id TEXT!, lease_epoch INTEGER!, "
        "started_at REAL!, ended_at REAL, outcome TEXT!, error_class TEXT, error TEXT!, "
        "committed INTEGER!, failed_step TEXT!"
    ),
    "step_logs": "seq INTEGER PK, run_id TEXT!, step TEXT!, level TEXT!, message TEXT!, at REAL!",
    "screenshots": (
        "seq INTEGER PK, run_id TEXT!, asset_id TEXT!, label TEXT!, size_bytes INTEGER!, "
        "content_type TEXT!, at REAL!"
    ),
    "audit_events": (
        "seq INTEGER PK, at REAL!, action TEXT!, subject_id TEXT!, actor TEXT!, "
        "details_json TEXT!, execution_time_ms INTEGER!"
    ),
    "devices": (
        "id TEXT! PK, kind TEXT!, capabilities TEXT!, slots INTEGER!, last_seen_at REAL!, "
        "version TEXT!, logins TEXT!, per_account_slots INTEGER!"
    ),
    "gates": "platform TEXT! PK, account TEXT! PK, closed_until REAL!, reason TEXT!, hits INTEGER!",
    "operator_tokens": (
        "id TEXT! PK, name TEXT!, role TEXT!, token_hash TEXT!, created_at REAL!, "
        "created_by TEXT!, revoked_at REAL"
    ),
    "device_enrollments": (
        "name TEXT! PK, accounts TEXT!, token_hash TEXT!, created_at REAL!, created_by TEXT!, "
        "revoked_at REAL"
    ),
}
# "<table> <index name, or PK/UNIQUE for the ones SQLite makes itself> (<columns>)"
EXPECTED_INDEXES = {
    "posts PK (id)",
    "posts posts_created_idx (created_at, id)",
    "posts posts_status_created_idx (status, created_at, id)",
    "jobs PK (id)",
    "jobs UNIQUE (idempotency_key)",
    "jobs jobs_status_idx (status)",
    "jobs jobs_post_idx (post_id)",
    "jobs jobs_target_status_idx (platform, account, status)",
    "runs PK (id)",
    "runs runs_job_idx (job_id)",
    "step_logs step_logs_run_idx (run_id, seq)",
    "screenshots screenshots_run_idx (run_id, seq)",
    "audit_events audit_events_at_idx (at)",
    "audit_events audit_events_subject_idx (subject_id)",
    "devices PK (id)",
    "gates PK (platform, account)",
    "operator_tokens PK (id)",
    "operator_tokens UNIQUE (token_hash)",
    "device_enrollments PK (name)",
    "device_enrollments UNIQUE (token_hash)",
}
EXPECTED_FOREIGN_KEYS = {
    "jobs.post_id -> posts.id",
    "runs.job_id -> jobs.id",
    "step_logs.run_id -> runs.id",
    "screenshots.run_id -> runs.id",
}


def read_schema(path: Path) -> tuple[dict[str, str], set[str], set[str]]:
    columns: dict[str, str] = {}
    indexes: set[str] = set()
    fks: set[str] = set()
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        for (table,) in tables:
            columns[table] = ", ".join(
                f"{name} {type_}{'!' if notnull else ''}{' PK' if pk else ''}"
                for _, name, type_, notnull, _, pk in db.execute(f"PRAGMA table_info({table})")
            )
            for _, index, _, origin, _ in db.execute(f"PRAGMA index_list({table})").fetchall():
                cols = ", ".join(r[2] for r in db.execute(f"PRAGMA index_info('{index}')"))
                label = {"pk": "PK", "u": "UNIQUE"}.get(origin, index)
                indexes.add(f"{table} {label} ({cols})")
            for row in db.execute(f"PRAGMA foreign_key_list({table})"):
                fks.add(f"{table}.{row[3]} -> {row[2]}.{row[4]}")
    return columns, indexes, fks


async def test_migrations_produce_the_schema_once(tmp_path: Path) -> None:
    path = tmp_path / "schema.db"
    for _ in range(2):  # re-opening applies nothing again
        store = SqliteStore(path)
        await store.open()
        await store.close()
    columns, indexes, fks = read_schema(path)
    assert columns == EXPECTED_COLUMNS
    assert indexes == EXPECTED_INDEXES
    assert fks == EXPECTED_FOREIGN_KEYS
    with contextlib.closing(sqlite3.connect(path)) as db:
        applied = [v for (v,) in db.execute("SELECT version FROM schema_migrations")]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert applied == [m.version for m in load_migrations()] == [1, 2, 3, 4]


async def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("INSERT INTO schema_migrations VALUES (9999, 0)")
    with pytest.raises(StoreError, match="9999"):
        await SqliteStore(path).open()


KILL_AFTER_COMMITS = 20
KILL_DEADLINE_SECONDS = 60.0


async def test_sigkill_loses_no_committed_batch(tmp_path: Path) -> None:
    db = tmp_path / "killed.db"
    helper = Path(__file__).with_name("store_kill_helper.py")
    committed: list[int] = []
    async with await anyio.open_process(
        [sys.executable, str(helper), str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        lines = BufferedByteReceiveStream(child.stdout)
        try:
            with anyio.fail_after(KILL_DEADLINE_SECONDS):
                while len(committed) < KILL_AFTER_COMMITS:
                    committed.append(int(await lines.receive_until(b"\n", 64)))
        except (anyio.EndOfStream, anyio.IncompleteRead):
            err = (await child.stderr.receive(65536)).decode(errors="replace")
            pytest.fail(f"the child died after {len(committed)} commits: {err}")
        os.kill(child.pid, signal.SIGKILL)
        with anyio.fail_after(10):
            assert await child.wait() == -signal.SIGKILL
    assert committed == list(range(1, len(committed) + 1))

    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    store = SqliteStore(db)
    await store.open()
    try:
        for n in committed:
            assert (await store.get_post(f"kill-post-{n}")).status == PostStatus.SCHEDULED
            assert (await store.get_job(f"kill-job-{n}")).post_id == f"kill-post-{n}"
        assert len(await all_audit(store)) >= len(committed)
    finally:
        await store.close()
