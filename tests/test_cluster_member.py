"""The "one active" ownership policy of several coordinators on one PostgreSQL
(coordinator/cluster/member.py), turn by turn in virtual time (`now`): the first coordinator
takes every shard and is active, the next stands by naming it; once the active stops renewing,
the standby takes every shard over after the TTL, and from then on the old active writes
nothing and steps down (exit code 3). A standby that got only a few shards while a live rival
holds shard 0 lets them go, and is not active."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import anyio
import pytest
from pg_rig import pg_database, pg_store, scratch_database, shard_ownership

from coordinator.cluster.member import EXIT_STEPPED_DOWN, ClusterConfig, ClusterMember
from coordinator.cluster.role import ClusterRole
from coordinator.domain import AuditEvent
from coordinator.errors import StoreError
from coordinator.store import PostgresStore, WriteBatch
from coordinator.store.ownership import ShardOwnership
from coordinator.store.shards import Fence

# The versions of the PostgreSQL store's migrations (NNNN_name.sql), each applied once.
MIGRATIONS = sorted(
    int(p.name[:4])
    for p in (Path(__file__).parents[1] / "coordinator/store/sql/postgres").glob("[0-9]*.sql")
)

__all__ = ["pg_database", "pg_store", "shard_ownership"]

pytestmark = pytest.mark.anyio

SHARDS = 8
TTL_S = 6.0
T0 = 1_000.0


class Exited(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def raise_exited(code: int) -> NoReturn:
    """A member's `exit` in tests: it raises Exited(code) instead of ending the process."""
    raise Exited(code)


@pytest.fixture
def shard_count() -> int:
    return SHARDS


def member(pg_store: PostgresStore, shard_ownership: ShardOwnership, name: str) -> ClusterMember:
    role = ClusterRole(name=name, address=f"{name}.example:50051")
    return ClusterMember(
        pg_store, shard_ownership, role, ClusterConfig(ttl_s=TTL_S), exit=raise_exited
    )


def audit_batch(what: str) -> WriteBatch:
    return WriteBatch(audits=[AuditEvent("TEST", what, "system", T0)])


async def audited(pg_store: PostgresStore) -> list[str]:
    return sorted(
        event.subject_id
        for event in await pg_store.list_audit(
            since=None, subject_id="", action="", after_seq=0, limit=100
        )
    )


async def test_the_first_is_active_the_next_stands_by_and_takes_over_after_the_ttl(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    a, b = member(pg_store, shard_ownership, "a"), member(pg_store, shard_ownership, "b")
    first = await a.turn(now=T0)
    assert first.active and [lease.shard for lease in first.held] == list(range(SHARDS))
    standby = await b.turn(now=T0 + 0.1)
    assert not standby.active and standby.held == []
    assert b.role.refusal() == (
        "standby: this coordinator is not active; the active one is a.example:50051"
    )
    await a.commit(audit_batch("written by a"))

    # a stops renewing (paused): b gets nothing until a's leases run out, then everything.
    assert not (await b.turn(now=T0 + TTL_S / 2)).held
    took = await b.turn(now=T0 + TTL_S + 0.2)
    assert took.active and {lease.epoch for lease in took.held} == {2}
    assert not b.role.is_active()  # serving once loaded (cluster/serve.py sets it)
    await b.commit(audit_batch("written by b"))

    # a wakes up: its batch is refused, nothing of it written, and it steps down.
    with pytest.raises(Exited) as exited:
        await a.commit(audit_batch("written by a after the take-over"))
    assert exited.value.code == EXIT_STEPPED_DOWN
    # Its next turn finds the shards gone too.
    lost = await a.turn(now=T0 + TTL_S + 0.3)
    assert not lost.active and lost.lost is not None and "took over shard 0 (epoch 2)" in lost.lost
    owners = await shard_ownership.owners()
    assert {(o.owner, o.epoch) for o in owners} == {("b", 2)}
    assert await audited(pg_store) == ["written by a", "written by b"]


async def test_a_standby_with_a_few_shards_lets_them_go_while_a_live_rival_holds_shard_0(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    a, b = member(pg_store, shard_ownership, "a"), member(pg_store, shard_ownership, "b")
    # Two coordinators starting at once on a fresh database: a's claim got the lower half only
    # (b's raced it). b claims the rest, but a holds shard 0, so b gives them back.
    lower = list(range(SHARDS // 2))
    a.held = await shard_ownership.claim("a", want=SHARDS, ttl_s=TTL_S, now=T0, only=lower)
    turn = await b.turn(now=T0 + 0.1)
    assert not turn.active and turn.held == [] and b.fence is None
    # a's next turn claims them: it is the one active.
    again = await a.turn(now=T0 + 0.2)
    assert again.active and len(again.held) == SHARDS


async def test_a_clean_stop_lets_the_standby_take_over_at_its_next_turn(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    a, b = member(pg_store, shard_ownership, "a"), member(pg_store, shard_ownership, "b")
    assert (await a.turn(now=T0)).active
    assert not (await b.turn(now=T0 + 0.1)).active
    await a.leave()
    took = await b.turn(now=T0 + 0.2)  # well within a's TTL
    assert took.active and {lease.epoch for lease in took.held} == {2}
    live = [row["owner"] for row in await pg_store.run("live_coordinators", {"now": T0 + 0.3})]
    assert live == ["b"]


async def test_one_active_keeps_every_shard_and_names_itself_for_each_while_others_live(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    """Placement "one" (the default) has no fair share: a live standby takes nothing from the
    active, and every shard is served at the active's address."""
    a, b = member(pg_store, shard_ownership, "a"), member(pg_store, shard_ownership, "b")
    assert (await a.turn(now=T0)).active
    for n in range(1, 6):  # longer than a TTL, both live
        assert not (await b.turn(now=T0 + n * TTL_S / 4)).held
        kept = await a.turn(now=T0 + n * TTL_S / 4 + 0.1)
        assert kept.active and len(kept.held) == SHARDS and not kept.leaving
    assert a.role.placement == b.role.placement == "one"
    assert b.role.owner_address(5) == "a.example:50051"
    assert b.role.owner_addresses() == ["a.example:50051"]
    assert a.role.owner_address(SHARDS - 1) == "a.example:50051"


async def test_coordinators_starting_together_on_a_fresh_database_migrate_it_once() -> None:
    async with scratch_database() as url:
        stores = [PostgresStore(url) for _ in range(3)]
        try:
            async with anyio.create_task_group() as tg:
                for s in stores:
                    tg.start_soon(s.open)
            versions = await stores[0].run("applied_migrations", {})
            assert sorted(row["version"] for row in versions) == MIGRATIONS
        finally:
            for s in stores:
                await s.close()


async def test_an_owner_stalled_inside_a_batch_does_not_keep_its_shards_from_a_take_over(
    pg_database: str, pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    """A coordinator paused in the middle of a fenced batch holds its shard rows locked; the
    server ends its session after the idle-in-transaction timeout, so the others can claim."""
    stalled = PostgresStore(pg_database, idle_in_transaction_timeout_s=0.3)
    await stalled.open()
    try:
        mine = ShardOwnership(stalled, shard_count=SHARDS)
        held = await mine.claim("a", want=SHARDS, ttl_s=0.5)
        fence = Fence.of("a", SHARDS, held)
        write = stalled._write  # the batch's writes, after the fence's rows are locked
        resumed = anyio.Event()

        async def stall(conn: Any, batch: WriteBatch) -> list[int]:
            await resumed.wait()  # the client silent, its transaction open
            return await write(conn, batch)

        stalled._write = stall  # type: ignore[method-assign]
        failed: list[BaseException] = []

        async def batch() -> None:
            try:
                await stalled.apply_fenced(audit_batch("stalled"), fence)
            except StoreError as exc:
                failed.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(batch)
            taken: list[int] = []
            try:
                with anyio.fail_after(30):
                    while len(taken) < SHARDS:
                        claimed = await shard_ownership.claim("b", want=SHARDS, ttl_s=60)
                        taken += [lease.shard for lease in claimed]
                        await anyio.sleep(0.05)
            finally:
                resumed.set()
        assert failed and await audited(pg_store) == []
        assert {(o.owner, o.epoch) for o in await shard_ownership.owners()} == {("b", 2)}
    finally:
        await stalled.close()


async def test_coordinators_silent_for_a_day_are_forgotten(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    await shard_ownership.heartbeat("crashed", ttl_s=TTL_S, now=T0)
    await shard_ownership.heartbeat("alive", ttl_s=TTL_S, now=T0 + 3_600)
    assert await _rows(pg_store) == ["alive", "crashed"]  # an hour: still listed (not live)
    await shard_ownership.heartbeat("alive", ttl_s=TTL_S, now=T0 + 86_400 + TTL_S + 1)
    assert await _rows(pg_store) == ["alive"]


async def _rows(pg_store: PostgresStore) -> list[str]:
    found = await pg_store.run("live_coordinators", {"now": 0.0})  # every row: all expire after 0
    return [row["owner"] for row in found]
