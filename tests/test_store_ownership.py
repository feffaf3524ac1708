"""Shard ownership and leader election on a real PostgreSQL (coordinator/store/ownership.py):
claims split the shards without overlap, a dead or paused owner's shards are taken over after
its TTL, and from then on that owner writes nothing (OwnershipLost), however late it wakes up.
Time is passed in (`now`), so the TTLs run in virtual time, except in the test with a real
stopped process, which runs on the server's clock."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections import Counter

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from pg_rig import pg_database, pg_store, shard_ownership
from test_store import all_audit, audit, make_job, seed

from coordinator.domain import GateRecord, Job, JobStatus, Target
from coordinator.errors import StoreError
from coordinator.store import JobWrite, PostgresStore, WriteBatch
from coordinator.store.ownership import ShardOwnership
from coordinator.store.shards import Fence, OwnershipLost, ShardLease, fair_share, shard_of

__all__ = ["pg_database", "pg_store", "shard_ownership"]

pytestmark = pytest.mark.anyio

SHARDS = 8
TTL_S = 10.0
T0 = 1_000.0


@pytest.fixture
def shard_count() -> int:
    return SHARDS


def claim_of(job: Job) -> WriteBatch:
    """The batch that leases `job` (as stored) to a worker."""
    new = dataclasses.replace(job, status=JobStatus.CLAIMED, lease_epoch=job.lease_epoch + 1)
    return WriteBatch(
        job_writes=[JobWrite(new, frozenset({job.status}), job.lease_epoch)], audits=[audit()]
    )


def test_an_accounts_shard_is_stable_and_accounts_spread_evenly() -> None:
    # Pinned: a change of hash would move every account of every database to another shard.
    assert [shard_of("x", f"acct-{i}", 64) for i in range(5)] == [16, 19, 60, 58, 0]
    assert shard_of("x", "acme", 64) != shard_of("mastodon", "acme", 64)
    per_shard = Counter(shard_of("x", f"acct-{i}", 64) for i in range(6400))
    assert len(per_shard) == 64
    assert min(per_shard.values()) >= 60 and max(per_shard.values()) <= 140


def test_a_fair_share_splits_the_shards_evenly_among_live_coordinators() -> None:
    assert [fair_share(8, ["b", "c", "a"], o) for o in "abc"] == [3, 3, 2]
    assert fair_share(8, [], "a") == 8  # alone: the one asking counts
    assert sum(fair_share(64, [f"c{i}" for i in range(7)], f"c{i}") for i in range(7)) == 64


async def test_two_owners_claiming_at_once_split_the_shards(
    shard_ownership: ShardOwnership,
) -> None:
    got: dict[str, list[int]] = {}

    async def claim(owner: str) -> None:
        leases = await shard_ownership.claim(owner, want=SHARDS // 2, ttl_s=TTL_S, now=T0)
        got[owner] = [lease.shard for lease in leases]

    async with anyio.create_task_group() as tg:
        tg.start_soon(claim, "a")
        tg.start_soon(claim, "b")
    assert sorted(got["a"] + got["b"]) == list(range(SHARDS))
    assert await shard_ownership.claim("c", want=SHARDS, ttl_s=TTL_S, now=T0 + 1) == []
    owners = await shard_ownership.owners()
    assert {o.epoch for o in owners} == {1}
    assert {o.owner for o in owners} == {"a", "b"}


async def test_a_paused_owner_past_its_ttl_cannot_write_after_another_took_over(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    job = make_job()
    await seed(pg_store, job)
    a = await shard_ownership.claim("a", want=SHARDS, ttl_s=TTL_S, now=T0)
    a = await shard_ownership.renew("a", a, ttl_s=TTL_S, now=T0 + 5)  # alive: lease to T0 + 15
    assert len(a) == SHARDS
    assert await shard_ownership.claim("b", want=SHARDS, ttl_s=TTL_S, now=T0 + 14) == []

    # "a" stops (SIGSTOP) with a batch in hand; "b" takes every shard once a's lease ran out.
    a_batch = claim_of(job)
    b = await shard_ownership.claim("b", want=SHARDS, ttl_s=TTL_S, now=T0 + 16)
    assert [lease.epoch for lease in b] == [2] * SHARDS

    # "a" wakes up: its write is refused whole, and its renewal tells it what it lost.
    with pytest.raises(OwnershipLost, match=r"a lost shards \[0, 1, 2"):
        await pg_store.apply_fenced(a_batch, Fence.of("a", SHARDS, a))
    assert (await pg_store.get_job(job.id)).status == JobStatus.QUEUED
    assert await all_audit(pg_store) == []
    assert await shard_ownership.renew("a", a, ttl_s=TTL_S, now=T0 + 17) == []

    await pg_store.apply_fenced(claim_of(job), Fence.of("b", SHARDS, b))
    assert (await pg_store.get_job(job.id)).status == JobStatus.CLAIMED


async def test_a_batch_under_a_fence_holds_off_a_take_over_until_it_commits(
    pg_store: PostgresStore, shard_ownership: ShardOwnership, pg_database: str
) -> None:
    [lease] = await shard_ownership.claim("a", want=1, ttl_s=TTL_S, now=T0)
    conn = await asyncpg.connect(pg_database)
    try:
        async with conn.transaction():  # what apply_fenced does first: lock the shard's row
            held = Fence.of("a", SHARDS, [lease]).lease_params()
            await conn.fetch(
                "SELECT s.shard FROM shard_owners s JOIN json_to_recordset($1::json)"
                " AS h (shard int, epoch bigint) ON s.shard = h.shard AND s.epoch = h.epoch"
                " FOR SHARE OF s",
                held,
            )
            late = await shard_ownership.claim("b", want=1, ttl_s=TTL_S, now=T0 + 60, only=[0])
            assert late == []  # expired, but a batch is committing under it: skipped
    finally:
        await conn.close()
    [taken] = await shard_ownership.claim("b", want=1, ttl_s=TTL_S, now=T0 + 60, only=[0])
    assert (taken.owner, taken.epoch) == ("b", 2)


async def test_a_fence_refuses_jobs_and_gates_of_shards_it_does_not_hold(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    job = make_job()
    await seed(pg_store, job)
    mine = shard_of(job.platform, job.account, SHARDS)
    other = next(s for s in range(SHARDS) if s != mine)
    leases = await shard_ownership.claim("a", want=1, ttl_s=TTL_S, now=T0, only=[other])
    fence = Fence.of("a", SHARDS, leases)
    with pytest.raises(OwnershipLost, match=rf"shards \[{mine}\] it does not hold"):
        await pg_store.apply_fenced(claim_of(job), fence)
    gate = GateRecord(Target(job.platform, job.account), T0 + 60, "429", 1)
    with pytest.raises(OwnershipLost):
        await pg_store.apply_fenced(WriteBatch(gates=[gate]), fence)
    assert await pg_store.list_gates() == []


async def test_released_shards_are_claimed_at_once(shard_ownership: ShardOwnership) -> None:
    a = await shard_ownership.claim("a", want=SHARDS, ttl_s=TTL_S, now=T0)
    await shard_ownership.release("a", a[:3])
    b = await shard_ownership.claim(
        "b", want=SHARDS, ttl_s=TTL_S, now=T0 + 1
    )  # well within a's TTL
    assert [(lease.shard, lease.epoch) for lease in b] == [(0, 2), (1, 2), (2, 2)]
    assert len(await shard_ownership.renew("a", a, ttl_s=TTL_S, now=T0 + 2)) == SHARDS - 3


async def test_shards_rebalance_as_coordinators_join_die_and_leave(
    shard_ownership: ShardOwnership,
) -> None:
    held: dict[str, list[ShardLease]] = {}

    async def turn(now: float, *owners: str) -> dict[str, int]:
        for owner in owners:
            held[owner] = await shard_ownership.rebalance(
                owner, held.get(owner, []), ttl_s=TTL_S, now=now
            )
        return {owner: len(leases) for owner, leases in held.items()}

    assert await turn(T0, "a") == {"a": 8}
    # b joins: nothing is free on its first turn; a lets half go on its next; b takes them.
    assert await turn(T0 + 1, "b", "a", "b") == {"a": 4, "b": 4}
    assert await turn(T0 + 2, "c", "a", "b", "c") == {"a": 3, "b": 3, "c": 2}
    # b dies after T0 + 2: its leases and membership run out at T0 + 12, then a and c share.
    for now in (T0 + 6, T0 + 10):
        assert await turn(now, "a", "c") == {"a": 3, "b": 3, "c": 2}
    del held["b"]
    assert await turn(T0 + 14, "a", "c") == {"a": 4, "c": 4}
    owners = await shard_ownership.owners()
    assert {o.shard for o in owners if o.owner == "a"} == {lease.shard for lease in held["a"]}
    assert {o.owner for o in owners} == {"a", "c"}
    # a stops cleanly: c takes everything on its next turn, without waiting for a TTL.
    await shard_ownership.leave("a", held.pop("a"))
    assert await turn(T0 + 15, "c") == {"c": 8}


async def test_one_leader_per_duty_elected_by_a_ttl_row(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    a = await shard_ownership.elect("sweeps", "a", ttl_s=TTL_S, now=T0)
    assert a is not None and a.epoch == 1
    assert await shard_ownership.elect("sweeps", "b", ttl_s=TTL_S, now=T0 + 5) is None
    again = await shard_ownership.elect(
        "sweeps", "a", ttl_s=TTL_S, now=T0 + 5
    )  # renewed, same epoch
    assert again == dataclasses.replace(a, expires_at=T0 + 15)
    assert (await shard_ownership.elect("timers", "b", ttl_s=TTL_S, now=T0 + 5)) is not None

    b = await shard_ownership.elect("sweeps", "b", ttl_s=TTL_S, now=T0 + 16)  # a's lease ran out
    assert b is not None and (b.owner, b.epoch) == ("b", 2)
    with pytest.raises(OwnershipLost, match="a is no longer the leader of sweeps"):
        await pg_store.apply_fenced(WriteBatch(audits=[audit()]), Fence.of("a", SHARDS, [], a))
    await pg_store.apply_fenced(WriteBatch(audits=[audit()]), Fence.of("b", SHARDS, [], b))
    assert len(await all_audit(pg_store)) == 1

    await shard_ownership.resign(a)  # a stale lease resigns nothing
    assert await shard_ownership.elect("sweeps", "a", ttl_s=TTL_S, now=T0 + 17) is None
    await shard_ownership.resign(b)
    back = await shard_ownership.elect("sweeps", "a", ttl_s=TTL_S, now=T0 + 18)
    assert back is not None and back.epoch == 3


async def test_every_coordinator_must_use_the_databases_shard_count(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    with pytest.raises(StoreError, match=f"partitioned into {SHARDS} shards, not 16"):
        await ShardOwnership(pg_store, shard_count=16).open()


async def test_a_coordinator_stopped_past_its_ttl_writes_nothing_once_resumed(
    pg_store: PostgresStore, pg_database: str
) -> None:
    """A real process holds every shard on the server's clock, is SIGSTOPped, another owner
    takes the shards over once its lease has run out, and the process, resumed, is refused."""
    helper = os.path.join(os.path.dirname(__file__), "ownership_pause_helper.py")
    shards, ttl_s = 4, 1.0
    argv = [sys.executable, helper, pg_database, str(shards), str(ttl_s)]
    async with await anyio.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        lines = BufferedByteReceiveStream(child.stdout)
        with anyio.fail_after(30):
            assert await lines.receive_until(b"\n", 256) == b"held"
        os.kill(child.pid, signal.SIGSTOP)
        try:
            shard_ownership = ShardOwnership(pg_store, shard_count=shards)
            await shard_ownership.open()
            taken: list[int] = []
            with anyio.fail_after(10 * ttl_s):  # poll until the stopped owner's lease runs out
                while len(taken) < shards:
                    leases = await shard_ownership.claim("b", want=shards, ttl_s=60)
                    taken += [lease.shard for lease in leases]
                    await anyio.sleep(ttl_s / 20)
            assert {(o.owner, o.epoch) for o in await shard_ownership.owners()} == {("b", 2)}
        finally:
            os.kill(child.pid, signal.SIGCONT)
        await child.stdin.send(b"write\n")
        with anyio.fail_after(30):
            answer = (await lines.receive_until(b"\n", 1024)).decode()
        assert (
            answer
            == "lost: paused-coordinator lost shards [0, 1, 2, 3]: another owner took them over"
        )
        await child.stdin.aclose()
        with anyio.fail_after(30):
            assert await child.wait() == 0
    assert await all_audit(pg_store) == []
