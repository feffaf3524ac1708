"""Post tasks end to end (issue 14 phase 2, "spread"), in process, on a real PostgreSQL: two
coordinators, each with its own store connection and half of the shards under a fence, the store
deriving posts' statuses, and a PostTaskConsumer each. A post whose two targets fall one in each
half is commanded at its home (A, the first target's owner); B learns what it means for B's job
only through the post tasks A's batches write: scheduled, published by a worker at each side,
cancelled, edited (B's job held) and scheduled again, refused deletion, and never published
twice at B, even once B's core has forgotten the post. Two races a consumer meets: a schedule task
applied after the post was cancelled hands nothing out; a task read just before its shard was let
go stays for the shard's next owner."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import anyio
import polling
import pytest
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream
from pg_rig import empty_tables, pg_database

from coordinator import operator_commands as op
from coordinator.actor import Coordinator, CoordinatorConfig
from coordinator.cluster.tasks import PostTaskConsumer
from coordinator.convert import job_report_from_pb
from coordinator.domain import Job, JobStatus, Post, PostStatus, Target, WorkerKind
from coordinator.errors import FailedPrecondition, NotFound
from coordinator.leasing import commands as c
from coordinator.store import PostgresStore, WriteBatch
from coordinator.store.ownership import ShardOwnership
from coordinator.store.shards import Fence, shard_of
from postroom.clock import FakeClock
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

__all__ = ["pg_database"]

pytestmark = pytest.mark.anyio

SHARDS = 8
HALF_A, HALF_B = list(range(SHARDS // 2)), list(range(SHARDS // 2, SHARDS))
TTL_S = 120.0  # longer than any test here: the leases are claimed once, never renewed
SCAN_S = 0.2  # the consumers' scan, behind the notices; a notice is what normally wakes them
WAIT_S = 10.0
POLL_S = 0.02
T0 = 1_800_000_000.0
T = TypeVar("T")


def target_in(shards: Sequence[int]) -> Target:
    n = 0
    while shard_of("sandbox", f"acct{n}", SHARDS) not in shards:
        n += 1
    return Target("sandbox", f"acct{n}")


A, B = target_in(HALF_A), target_in(HALF_B)  # A's shard is the home's
SHARD_B = shard_of(B.platform, B.account, SHARDS)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg is asyncio only


@dataclass(slots=True)
class Side:
    name: str
    store: PostgresStore
    co: Coordinator
    tasks: PostTaskConsumer


@dataclass(slots=True)
class Pair:
    a: Side
    b: Side
    store: PostgresStore  # a reader of the database, as an operator's read sees it
    sessions: contextlib.ExitStack
    tg: TaskGroup

    def consume(self, side: Side) -> None:
        """Start `side`'s post task consumer (one spread() did not start)."""
        self.tg.start_soon(side.tasks.run)

    async def worker(self, side: Side, sid: str) -> Worker:
        """A worker session at `side`, connected (its outbox closed at the end)."""
        worker = self.sessions.enter_context(Worker(side.co, sid))
        await worker.connect()
        return worker


async def _side(stack: contextlib.AsyncExitStack, url: str, name: str, shards: list[int]) -> Side:
    store = PostgresStore(url)
    await store.open()
    stack.push_async_callback(store.close)
    ownership = ShardOwnership(store, shard_count=SHARDS)
    await ownership.open()
    leases = await ownership.claim(name, want=len(shards), ttl_s=TTL_S, only=shards)
    assert [lease.shard for lease in leases] == shards
    fence = Fence.of(name, SHARDS, leases)

    async def commit(batch: WriteBatch) -> None:
        await store.apply_fenced(batch, fence, derive_posts=True)

    config = CoordinatorConfig(shard_count=SHARDS, derive_posts_in_store=True)
    co = Coordinator(store=store, clock=FakeClock(T0), config=config, commit=commit)
    await co.load(shards=shards)
    return Side(name, store, co, PostTaskConsumer(store, co, lambda: shards, SCAN_S))


@contextlib.asynccontextmanager
async def spread(url: str, *, consume_b: bool = True) -> AsyncIterator[Pair]:
    """Coordinators a (shards HALF_A) and b (HALF_B) running, each consuming its post tasks
    (b only once told to, without `consume_b`)."""
    await empty_tables(url)
    async with contextlib.AsyncExitStack() as stack:
        a = await _side(stack, url, "a", HALF_A)
        b = await _side(stack, url, "b", HALF_B)
        reader = PostgresStore(url)
        await reader.open()
        stack.push_async_callback(reader.close)
        async with anyio.create_task_group() as tg:
            for side in (a, b):
                await tg.start(side.co.run)
            tg.start_soon(a.tasks.run)
            if consume_b:
                tg.start_soon(b.tasks.run)
            try:
                with contextlib.ExitStack() as sessions:
                    yield Pair(a, b, reader, sessions, tg)
            finally:
                tg.cancel_scope.cancel()  # the consumers; the actors stop as the group ends
                for side in (a, b):
                    with anyio.CancelScope(shield=True):
                        await side.co.stop()


async def eventually(what: str, probe: Callable[[], Awaitable[T | None]]) -> T:
    # The change comes through the other coordinator and the database: no event to await.
    return await polling.eventually(what, probe, WAIT_S, poll_s=POLL_S)


# ---- operators and workers ------------------------------------------------------------------


async def create_scheduled(home: Coordinator, post_id: str, text: str = "hello") -> Post:
    item = op.CreatePost(
        post_id=post_id,
        text=text,
        media=(),
        targets=(A, B),
        scheduled_at=None,
        max_attempts=3,
        require_confirm=False,
        actor="alice",
        approve=True,
        schedule=True,
        new_job_id=f"j-{post_id}-",
    )
    ((post, _),) = await home.command(op.CreatePosts((item,)))
    assert isinstance(post, Post)
    return post


async def job_of(store: PostgresStore, post_id: str, target: Target) -> Job | None:
    """The post's newest job for `target` (None while there is none)."""
    jobs = [j for j in await store.jobs_for_post(post_id) if j.target == target]
    return max(jobs, key=lambda j: (j.created_at, j.id)) if jobs else None


async def b_job(pair: Pair, post_id: str, *statuses: JobStatus) -> Job:
    """B's job of the post once it is in one of `statuses` (B applied the task)."""

    async def probe() -> Job | None:
        job = await job_of(pair.store, post_id, B)
        return job if job is not None and job.status in statuses else None

    return await eventually(f"B's job of {post_id} {statuses}", probe)


async def post_status(pair: Pair, post_id: str, status: PostStatus) -> Post:
    async def probe() -> Post | None:
        post = await pair.store.get_post(post_id)
        return post if post.status is status else None

    return await eventually(f"post {post_id} {status.value}", probe)


class Worker:
    """One worker session at one coordinator, speaking the lease protocol through the actor."""

    def __init__(self, co: Coordinator, sid: str) -> None:
        self.co, self.sid = co, sid
        self.outbox: MemoryObjectReceiveStream[wg.CoordinatorMessage] = co.open_outbox(sid)
        self.epochs: dict[str, int] = {}

    async def connect(self) -> None:
        hello = c.OpenStream(self.sid, f"dev-{self.sid}", WorkerKind.API,
                             (Target("sandbox", "*"),), 2, (), "test")  # fmt: skip
        await self.co.post(hello)

    async def assigned(self) -> list[str]:
        """The jobs assigned so far (a read runs after everything queued before it was
        committed and sent)."""
        with anyio.fail_after(WAIT_S):
            await self.co.read(lambda now: None)
        out: list[str] = []
        with contextlib.suppress(anyio.WouldBlock):
            while True:
                msg = self.outbox.receive_nowait()
                if msg.WhichOneof("msg") == "assign":
                    self.epochs[msg.assign.job_id] = msg.assign.lease_epoch
                    out.append(msg.assign.job_id)
        return out

    async def publish(self, job_id: str) -> None:
        """Ack, ask for the commit permit, report success: as a worker that posted it."""
        epoch = self.epochs[job_id]
        await self.co.post(c.Ack(self.sid, job_id, epoch))
        await self.co.post(c.CommitRequest(self.sid, job_id, epoch))
        url = f"https://sandbox.example/{job_id}"
        done = wg.JobResult(job_id=job_id, lease_epoch=epoch, success=True,
                            platform_post_id=f"pp-{job_id}", url=url)  # fmt: skip
        await self.co.post(c.Result(self.sid, job_report_from_pb(done)))
        await self.assigned()

    async def fail(self, job_id: str) -> None:
        """A permanent failure (the platform refused the content)."""
        epoch = self.epochs[job_id]
        await self.co.post(c.Ack(self.sid, job_id, epoch))
        refused = pb.ERROR_CLASS_INVALID_CONTENT
        failed = wg.JobResult(job_id=job_id, lease_epoch=epoch, success=False,
                              error_class=refused, error_message="no")  # fmt: skip
        await self.co.post(c.Result(self.sid, job_report_from_pb(failed)))
        await self.assigned()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.co.close_outbox(self.sid)
        self.outbox.close()


async def status_changes(store: PostgresStore, post_id: str) -> list[str]:
    events = await store.list_audit(
        since=None, subject_id=post_id, action="POST_STATUS_CHANGED", after_seq=0, limit=100
    )
    return [str(e.details["to"]) for e in events]


# ---- the tests ------------------------------------------------------------------------------


def test_the_targets_fall_one_in_each_half() -> None:
    assert shard_of(A.platform, A.account, SHARDS) in HALF_A and SHARD_B in HALF_B


async def test_a_post_scheduled_at_home_is_published_by_both_owners(pg_database: str) -> None:
    async with spread(pg_database) as pair:
        await create_scheduled(pair.a.co, "p1")
        a_job = await job_of(pair.store, "p1", A)
        assert a_job is not None and a_job.status is JobStatus.QUEUED  # at once, A's own
        b_queued = await b_job(pair, "p1", JobStatus.QUEUED)  # once B applied its task
        assert b_queued.id != a_job.id
        assert await pair.store.pending_post_tasks(range(SHARDS)) == []  # done, exactly once
        assert b_queued.id in pair.b.co.core.jobs and a_job.id not in pair.b.co.core.jobs

        wa, wb = await pair.worker(pair.a, "wa"), await pair.worker(pair.b, "wb")
        assert await wa.assigned() == [a_job.id]  # each side hands out only its own job
        assert await wb.assigned() == [b_queued.id]
        await wa.publish(a_job.id)
        assert (await pair.store.get_post("p1")).status is not PostStatus.PUBLISHED
        await wb.publish(b_queued.id)

        post = await post_status(pair, "p1", PostStatus.PUBLISHED)  # from both shards' jobs
        assert post.status is PostStatus.PUBLISHED
        assert (await status_changes(pair.store, "p1")).count("PUBLISHED") == 1
        jobs = await pair.store.jobs_for_post("p1")
        assert {j.status for j in jobs} == {JobStatus.SUCCEEDED} and len(jobs) == 2


async def test_cancel_at_home_cancels_the_other_owners_job(pg_database: str) -> None:
    async with spread(pg_database) as pair:
        await create_scheduled(pair.a.co, "p1")
        queued = await b_job(pair, "p1", JobStatus.QUEUED)
        await pair.a.co.command(op.CancelPost("p1", "changed our minds", "alice"))
        cancelled = await b_job(pair, "p1", JobStatus.CANCELLED)
        assert cancelled.id == queued.id
        assert {j.status for j in await pair.store.jobs_for_post("p1")} == {JobStatus.CANCELLED}
        assert (await pair.store.get_post("p1")).status is PostStatus.CANCELLED
        # Nothing of it is left for B's workers.
        wb = await pair.worker(pair.b, "wb")
        assert await wb.assigned() == []


async def test_an_edit_holds_the_other_owners_job_until_scheduled_again(
    pg_database: str,
) -> None:
    async with spread(pg_database) as pair:
        await create_scheduled(pair.a.co, "p1")
        queued = await b_job(pair, "p1", JobStatus.QUEUED)
        edit = op.UpdatePost("p1", "hello, edited", None, None, None, "alice")
        edited = await pair.a.co.command(edit)
        assert edited.status is PostStatus.PENDING_APPROVAL and edited.approved_hash == ""

        async def refreshed_at_b() -> bool:  # B's copy of the post lost its approval
            post = await pair.b.co.read(lambda now: pair.b.co.core.posts.get("p1"))
            return post is not None and post.approved_hash == ""

        await eventually("B applied the refresh", refreshed_at_b)
        wb = await pair.worker(pair.b, "wb")
        assert await wb.assigned() == []  # held: its content is no longer the approved one
        assert (await pair.store.get_job(queued.id)).status is JobStatus.QUEUED

        await pair.a.co.command(op.ApprovePost("p1", edited.content_hash, "bob"))
        assert await wb.assigned() == []  # approved, not scheduled: still held
        await pair.a.co.command(op.SchedulePost("p1", None, "j-again-", "alice"))

        async def dispatched() -> list[str]:
            return await wb.assigned()

        assert await eventually("B's job handed out", dispatched) == [queued.id]
        job = await pair.store.get_job(queued.id)
        assert job.content_hash == edited.content_hash and job.text == "hello, edited"


async def test_deleting_a_post_with_a_job_in_another_owners_shard_is_refused(
    pg_database: str,
) -> None:
    async with spread(pg_database) as pair:
        await create_scheduled(pair.a.co, "p1")
        await b_job(pair, "p1", JobStatus.QUEUED)
        with pytest.raises(FailedPrecondition, match=rf"shards \[{SHARD_B}\]"):
            await pair.a.co.command(op.DeletePost("p1", "oops", "alice"))
        assert len(await pair.store.jobs_for_post("p1")) == 2
        assert (await pair.store.get_post("p1")).status is PostStatus.SCHEDULED


async def test_a_post_cancelled_first_is_then_deleted_with_the_other_owners_job(
    pg_database: str,
) -> None:
    async with spread(pg_database) as pair:
        await create_scheduled(pair.a.co, "p1")
        await b_job(pair, "p1", JobStatus.QUEUED)
        await pair.a.co.command(op.CancelPost("p1", "changed our minds", "alice"))
        await b_job(pair, "p1", JobStatus.CANCELLED)
        await pair.a.co.command(op.DeletePost("p1", "never mind", "alice"))
        with pytest.raises(NotFound):
            await pair.store.get_post("p1")
        assert await pair.store.jobs_for_post("p1") == []


async def test_a_delete_while_a_task_of_the_post_is_on_its_way_waits(pg_database: str) -> None:
    async with spread(pg_database, consume_b=False) as pair:
        await create_scheduled(pair.a.co, "p1")  # B's schedule task stays pending
        with pytest.raises(FailedPrecondition, match="task"):
            await pair.a.co.command(op.DeletePost("p1", "oops", "alice"))
        assert (await pair.store.get_post("p1")).status is PostStatus.SCHEDULED


async def test_a_reschedule_never_republishes_the_other_owners_published_target(
    pg_database: str,
) -> None:
    async with spread(pg_database) as pair:
        await create_scheduled(pair.a.co, "p1")
        a_job = await job_of(pair.store, "p1", A)
        b_first = await b_job(pair, "p1", JobStatus.QUEUED)
        assert a_job is not None
        wa, wb = await pair.worker(pair.a, "wa"), await pair.worker(pair.b, "wb")
        assert await wb.assigned() == [b_first.id]
        await wb.publish(b_first.id)
        assert await wa.assigned() == [a_job.id]
        await wa.fail(a_job.id)
        await post_status(pair, "p1", PostStatus.FAILED)
        # B's core let the post go: its only job there is finished.
        assert await pair.b.co.read(lambda now: "p1" not in pair.b.co.core.posts)

        applied = pair.b.tasks.applied
        await pair.a.co.command(op.SchedulePost("p1", None, "j-again-", "alice"))

        async def b_applied() -> bool:
            return pair.b.tasks.applied > applied

        await eventually("B applied the schedule task", b_applied)
        assert await wb.assigned() == []
        b_jobs = [j for j in await pair.store.jobs_for_post("p1") if j.target == B]
        assert [(j.id, j.status) for j in b_jobs] == [(b_first.id, JobStatus.SUCCEEDED)]
        # A's failed target is tried again (its job queued again, same schedule), and only it.
        assert await wa.assigned() == [a_job.id]
        assert (await pair.store.get_job(a_job.id)).status is JobStatus.CLAIMED


async def test_a_schedule_task_read_before_a_cancel_makes_no_job_of_the_cancelled_post(
    pg_database: str,
) -> None:
    async with spread(pg_database, consume_b=False) as pair:
        await create_scheduled(pair.a.co, "p1")
        (scheduled,) = await pair.store.pending_post_tasks(HALF_B)
        await pair.a.co.command(op.CancelPost("p1", "changed our minds", "alice"))
        wb = await pair.worker(pair.b, "wb")
        # B's consumer read the schedule task before the cancel committed, its load phase read
        # the post after: what B applies then must not hand out a job of a cancelled post.
        await pair.b.co.command(op.ApplyPostTasks((scheduled,)))
        assert await wb.assigned() == []
        pair.consume(pair.b)

        async def all_applied() -> bool:
            return not await pair.store.pending_post_tasks(HALF_B)

        await eventually("B applied the cancel task", all_applied)
        assert await wb.assigned() == []
        b_jobs = [j for j in await pair.store.jobs_for_post("p1") if j.target == B]
        assert all(j.status is JobStatus.CANCELLED for j in b_jobs)
        assert (await pair.store.get_post("p1")).status is PostStatus.CANCELLED


async def test_a_task_read_before_its_shard_was_let_go_is_left_for_the_next_owner(
    pg_database: str,
) -> None:
    async with spread(pg_database, consume_b=False) as pair:
        await create_scheduled(pair.a.co, "p1")
        (scheduled,) = await pair.store.pending_post_tasks(HALF_B)
        # B's consumer read the task; B's shard was handed off before the actor applied it.
        assert await pair.b.co.evict_shards([SHARD_B], force=True) is True
        await pair.b.co.command(op.ApplyPostTasks((scheduled,)))
        assert await pair.store.pending_post_tasks(HALF_B) == [scheduled]  # not lost
        assert await job_of(pair.store, "p1", B) is None
        # The shard's next owner (B again, here) takes the task up and makes B's job.
        await pair.b.co.take_shards([SHARD_B])
        pair.consume(pair.b)
        job = await b_job(pair, "p1", JobStatus.QUEUED)
        wb = await pair.worker(pair.b, "wb")
        assert await wb.assigned() == [job.id]
