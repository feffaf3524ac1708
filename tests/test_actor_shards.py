"""The coordinator actor holding a share of the shards (issue 14 phase 2, "spread"), on the
in-memory store: it loads only its shards' work, takes more shards while it runs (their jobs go
to the workers connected already, their gates come along), and lets shards go once their leases
have ended (or at once, by force)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from lease_harness import T0, make_post

from coordinator.actor import Coordinator, CoordinatorConfig
from coordinator.convert import job_report_from_pb
from coordinator.domain import GateRecord, JobStatus, PostStatus, Target, WorkerKind
from coordinator.leasing import commands as c
from coordinator.store.base import WriteBatch
from coordinator.store.memory import InMemoryStore
from coordinator.store.shards import shard_of
from postroom.clock import FakeClock
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

pytestmark = pytest.mark.anyio
COUNT = 4
WAIT_S = 5.0


def target_in(shard: int) -> Target:
    n = 0
    while shard_of("sandbox", f"acct{n}", COUNT) != shard:
        n += 1
    return Target("sandbox", f"acct{n}")


A, B, C = target_in(0), target_in(1), target_in(2)


async def seeded() -> tuple[InMemoryStore, dict[Target, str]]:
    """p1 for A and B, p2 for C; C's gate closed for an hour. Returns the job id per target."""
    store = InMemoryStore()
    await store.open()
    p1, jobs1 = make_post("p1", (A, B), T0)
    p2, jobs2 = make_post("p2", (C,), T0)
    gate = GateRecord(C, T0 + 3600, "429 from the platform", 1)
    await store.apply(WriteBatch(new_posts=[p1, p2], new_jobs=jobs1 + jobs2, gates=[gate]))
    return store, {j.target: j.id for j in jobs1 + jobs2}


@contextlib.asynccontextmanager
async def running(
    store: InMemoryStore, shards: list[int], config: CoordinatorConfig | None = None
) -> AsyncIterator[Coordinator]:
    coordinator = Coordinator(
        store=store, clock=FakeClock(T0), config=config or CoordinatorConfig(shard_count=COUNT)
    )
    await coordinator.load(shards=shards)
    async with anyio.create_task_group() as tg:
        await tg.start(coordinator.run)
        try:
            yield coordinator
        finally:
            await coordinator.stop()


async def connect(
    coordinator: Coordinator, sid: str, slots: int
) -> MemoryObjectReceiveStream[wg.CoordinatorMessage]:
    outbox = coordinator.open_outbox(sid)
    hello = c.OpenStream(sid, f"dev-{sid}", WorkerKind.API, (Target("sandbox", "*"),), slots,
                         (), "test")  # fmt: skip
    await coordinator.post(hello)
    return outbox


async def assigned(
    coordinator: Coordinator, outbox: MemoryObjectReceiveStream[wg.CoordinatorMessage]
) -> list[str]:
    """The jobs assigned to the session so far: what the actor sent before this returns (a
    read runs after everything queued before it was committed and sent)."""
    with anyio.fail_after(WAIT_S):
        await coordinator.read(lambda now: None)
    out: list[str] = []
    with contextlib.suppress(anyio.WouldBlock):
        while True:
            msg = outbox.receive_nowait()
            if msg.WhichOneof("msg") == "assign":
                out.append(msg.assign.job_id)
    return out


async def test_load_with_shards_holds_only_their_jobs_posts_and_gates() -> None:
    store, ids = await seeded()
    async with running(store, [0, 2]) as coordinator:
        core = coordinator.core
        assert set(core.jobs) == {ids[A], ids[C]} and set(core.posts) == {"p1", "p2"}
        with await connect(coordinator, "s1", slots=3) as outbox:
            assert await assigned(coordinator, outbox) == [ids[A]]  # C's gate is closed
            views = await coordinator.read(lambda now: [v.target for v in core.gates.views(now)])
            assert views == [C]
    assert (await store.get_job(ids[B])).status is JobStatus.QUEUED


async def test_take_shards_hands_the_new_shards_jobs_to_connected_workers() -> None:
    store, ids = await seeded()
    async with running(store, [0]) as coordinator:
        with await connect(coordinator, "s1", slots=3) as outbox:
            assert await assigned(coordinator, outbox) == [ids[A]]
            lease = coordinator.core.leases[ids[A]]
            with anyio.fail_after(WAIT_S):
                await coordinator.take_shards([1, 2])
            # B's job goes out at once; C's waits for its gate, which came with its shard.
            assert await assigned(coordinator, outbox) == [ids[B]]
            assert coordinator.core.leases[ids[A]] is lease and lease.session_id == "s1"
            assert set(coordinator.core.jobs) == set(ids.values())
    assert (await store.get_job(ids[B])).status is JobStatus.CLAIMED
    assert (await store.get_job(ids[C])).status is JobStatus.QUEUED


async def test_leaving_shards_are_evicted_once_their_leases_end_or_by_force() -> None:
    store, ids = await seeded()
    async with running(store, [0, 1]) as coordinator:
        with anyio.fail_after(WAIT_S):
            await coordinator.leave_shards([1])
        with await connect(coordinator, "s1", slots=3) as outbox:
            assert await assigned(coordinator, outbox) == [ids[A]]  # B's shard is leaving
            with anyio.fail_after(WAIT_S):
                assert await coordinator.evict_shards([1]) is True  # nothing of it leased
                assert await coordinator.evict_shards([0]) is False  # A's job is leased
            assert set(coordinator.core.jobs) == {ids[A]}
            with anyio.fail_after(WAIT_S):
                assert await coordinator.evict_shards([0], force=True) is True
            assert coordinator.core.jobs == {} and coordinator.core.posts == {}
    # The store keeps every job for the shards' next owners, as it was.
    assert (await store.get_job(ids[A])).status is JobStatus.CLAIMED
    assert (await store.get_job(ids[B])).status is JobStatus.QUEUED


async def test_a_coordinator_whose_store_derives_post_status_writes_only_round_summaries() -> None:
    store, ids = await seeded()
    config = CoordinatorConfig(shard_count=COUNT, derive_posts_in_store=True)
    async with running(store, [0], config) as coordinator:
        with await connect(coordinator, "s1", slots=1) as outbox:
            assert await assigned(coordinator, outbox) == [ids[A]]
            epoch = coordinator.core.leases[ids[A]].epoch
            failed = wg.JobResult(
                job_id=ids[A],
                lease_epoch=epoch,
                success=False,
                error_class=pb.ERROR_CLASS_INVALID_CONTENT,
                error_message="no",
            )
            await coordinator.post(c.Result("s1", job_report_from_pb(failed)))
            await assigned(coordinator, outbox)
    assert (await store.get_job(ids[A])).status is JobStatus.FAILED
    audits = await store.list_audit(since=None, subject_id="p1", action="", after_seq=0, limit=50)
    assert [a.action for a in audits] == ["PUBLISH_ATTEMPT"]
    # B's job (another shard's) is still queued: only the store, seeing both, may say FAILED.
    assert (await store.get_post("p1")).status is PostStatus.SCHEDULED
    assert CoordinatorConfig().derive_posts_in_store is False
