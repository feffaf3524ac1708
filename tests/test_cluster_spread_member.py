"""Placement "spread" (coordinator/cluster/member.py, serve.py), turn by turn in virtual time
(`now`) on a real PostgreSQL: coordinators joining one by one share the 64 shards fairly
(64, 32/32, 22/21/21), never two holding one shard; shards over a share stay held and fenced
while they are handed off, until released (a batch begun just before a release is still
written); a coordinator that stops turning loses its shards to the survivors after the TTL and,
resumed, writes nothing and steps down. Serving follows the
turns: with a fake lease core, load, take_shards, leave_shards, evict_shards and the release
happen in that order, forced once the hand-off timeout has passed."""

from __future__ import annotations

from typing import Any, cast

import anyio
import grpc
import pytest
from anyio.abc import TaskStatus
from pg_rig import pg_database, pg_store, shard_ownership
from prometheus_client import CollectorRegistry
from test_cluster_member import Exited, raise_exited

from coordinator.cluster.member import EXIT_STEPPED_DOWN, ClusterConfig, ClusterMember, Turn
from coordinator.cluster.role import ClusterRole
from coordinator.cluster.serve import TOOK_OVER, ClusterServing, spans
from coordinator.domain import AuditEvent
from coordinator.store import PostgresStore, WriteBatch
from coordinator.store.ownership import ShardOwnership
from coordinator.store.shards import Fence
from postroom.clock import FakeClock

__all__ = ["pg_database", "pg_store", "shard_ownership"]

pytestmark = pytest.mark.anyio

SHARDS = 64
TTL_S = 6.0
TURN_S = TTL_S / 4
HANDOFF_S = 30.0
T0 = 1_000.0
ALL = list(range(SHARDS))


@pytest.fixture
def shard_count() -> int:
    return SHARDS


def address(name: str) -> str:
    return f"{name}.example:50051"


def member(
    pg_store: PostgresStore,
    shard_ownership: ShardOwnership,
    name: str,
    registry: CollectorRegistry | None = None,
) -> ClusterMember:
    role = ClusterRole(name=name, address=address(name))
    config = ClusterConfig(ttl_s=TTL_S, placement="spread", handoff_timeout_s=HANDOFF_S)
    return ClusterMember(
        pg_store, shard_ownership, role, config, registry=registry, exit=raise_exited
    )


def audit_batch(what: str) -> WriteBatch:
    return WriteBatch(audits=[AuditEvent("TEST", what, "system", T0)])


async def audited(pg_store: PostgresStore) -> list[str]:
    events = await pg_store.list_audit(since=None, subject_id="", action="", after_seq=0, limit=100)
    return sorted(event.subject_id for event in events)


async def holders(shard_ownership: ShardOwnership, now: float) -> dict[int, str]:
    """Who holds each shard at `now` as the database has it (a lease standing)."""
    return {o.shard: o.owner for o in await shard_ownership.owners() if o.expires_at > now}


async def shared_once(shard_ownership: ShardOwnership, now: float, *members: ClusterMember) -> None:
    """No shard is held by two members, and each holds exactly what the database says."""
    seen: set[int] = set()
    for m in members:
        mine = set(m.shards())
        assert not mine & seen, f"{m.name} holds shards another holds: {sorted(mine & seen)}"
        seen |= mine
    table = await holders(shard_ownership, now)
    for m in members:
        assert {s for s, owner in table.items() if owner == m.name} == set(m.shards())


def epochs_of(*members: ClusterMember) -> dict[int, int]:
    return {lease.shard: lease.epoch for m in members for lease in m.held}


async def hand_off(m: ClusterMember, turn: Turn) -> None:
    """What serving does once the core let the leaving shards go."""
    assert await m.release(turn.leaving) == turn.leaving


async def three(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> tuple[ClusterMember, ClusterMember, ClusterMember, float]:
    """a, b and c joined one by one, 22/21/21, no shard held twice after any turn or release;
    the virtual time reached."""
    a, b, c = (member(pg_store, shard_ownership, n) for n in "abc")
    clock = [T0]

    async def turn(m: ClusterMember) -> Turn:
        clock[0] += 0.1
        done = await m.turn(now=clock[0])
        await shared_once(shard_ownership, clock[0], a, b, c)
        return done

    async def release(m: ClusterMember, over: Turn) -> None:
        await hand_off(m, over)
        await shared_once(shard_ownership, clock[0], a, b, c)

    first = await turn(a)
    assert first.active and first.shards == ALL and first.gained == ALL and not first.leaving
    assert a.role.owner_addresses() == [address("a")]

    # b joins: nothing is free on its first turn; a hands half over on its next.
    joined = await turn(b)
    assert not joined.active and joined.held == [] and joined.gained == []
    assert b.role.owner_address(40) == address("a")
    over = await turn(a)
    assert over.leaving == list(range(32, 64)) and over.shards == ALL
    await release(a, over)
    took = await turn(b)
    assert took.gained == list(range(32, 64)) and took.active
    assert [len(m.held) for m in (a, b)] == [32, 32]

    # c joins: a keeps 22 (the remainder goes to the first by name), b 21, c gets 21.
    assert (await turn(c)).held == []
    over_a = await turn(a)
    over_b = await turn(b)
    assert over_a.leaving == list(range(22, 32)) and over_b.leaving == list(range(53, 64))
    await release(a, over_a)
    await release(b, over_b)
    took = await turn(c)
    assert took.gained == [*range(22, 32), *range(53, 64)]
    assert [len(m.held) for m in (a, b, c)] == [22, 21, 21]
    return a, b, c, clock[0]


async def test_coordinators_joining_one_by_one_share_the_shards_fairly(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    a, b, c, now = await three(pg_store, shard_ownership)
    # Every coordinator learns at its next turn where each shard is served.
    for i, m in enumerate((a, b, c)):
        await m.turn(now=now + 0.1 * (i + 1))
        assert m.role.owner_address(0) == address("a")
        assert m.role.owner_address(40) == address("b")
        assert m.role.owner_address(63) == address("c")
        assert m.role.owner_addresses()[0] == address(m.name)
        assert sorted(m.role.owner_addresses()) == [address(n) for n in "abc"]
        assert m.role.placement == "spread" and m.role.leader_address == address("a")
    await shared_once(shard_ownership, now + 0.3, a, b, c)
    # Each writes under the fence of its own shards.
    for m in (a, b, c):
        await m.commit(audit_batch(f"written by {m.name}"))
    assert await audited(pg_store) == ["written by a", "written by b", "written by c"]


async def test_the_survivors_take_a_dead_coordinators_shards_after_the_ttl(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    a, b, c, now = await three(pg_store, shard_ownership)
    dead = c.shards()
    epochs = {lease.shard: lease.epoch for lease in c.held}
    # c stops turning (killed, or paused). Until its leases run out nobody takes its shards.
    t = now
    while t + TURN_S < now + TTL_S:
        t += TURN_S
        for m in (a, b):
            turn = await m.turn(now=t)
            assert turn.gained == [] and turn.leaving == []
    assert [len(m.held) for m in (a, b)] == [22, 21]
    # Past the TTL c no longer counts: a and b have a share of 32 each, and claim c's shards.
    t = now + TTL_S + 0.1
    gained_a = (await a.turn(now=t)).gained
    gained_b = (await b.turn(now=t + 0.1)).gained
    assert sorted(gained_a + gained_b) == dead
    assert [len(m.held) for m in (a, b)] == [32, 32]
    await shared_once(shard_ownership, t + 0.1, a, b)
    # Taken over: one epoch up, so c can write none of them any more.
    assert {s: e - 1 for s, e in epochs_of(a, b).items() if s in epochs} == epochs
    assert set(a.role.owner_addresses()) == {address("a"), address("b")}

    # c resumes: its batch is refused and nothing of it is written; its turn finds its shards
    # taken over. Either way it steps down.
    with pytest.raises(Exited) as exited:
        await c.commit(audit_batch("written by c after the take-over"))
    assert exited.value.code == EXIT_STEPPED_DOWN
    lost = await c.turn(now=t + 0.2)
    first = f"took over shard {dead[0]} (epoch {epochs[dead[0]] + 1})"
    assert lost.lost is not None and first in lost.lost
    assert await audited(pg_store) == []


async def test_leaving_shards_stay_held_and_fenced_until_released(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    a, b = member(pg_store, shard_ownership, "a"), member(pg_store, shard_ownership, "b")
    await a.turn(now=T0)
    await b.turn(now=T0 + 0.1)
    over = await a.turn(now=T0 + 0.2)
    assert over.leaving == list(range(32, 64))
    # Turn after turn (longer than a TTL) a renews them, the joining b cannot take them, and
    # a's fence covers them, so its batches may still write their jobs.
    for n in range(1, 6):
        t = T0 + 0.2 + n * TURN_S
        assert (await b.turn(now=t)).held == []
        kept = await a.turn(now=t + 0.05)
        assert kept.shards == ALL and kept.leaving == list(range(32, 64)) and not kept.gained
        assert a.fence is not None and sorted(a.fence.shards) == ALL
    t = T0 + 0.2 + 6 * TURN_S
    assert await holders(shard_ownership, t) == dict.fromkeys(ALL, "a")

    await hand_off(a, kept)
    assert a.fence is not None and sorted(a.fence.shards) == list(range(32))
    assert a.leaving == set()
    took = await b.turn(now=t + 0.1)
    assert took.gained == list(range(32, 64))
    assert {lease.epoch for lease in took.held} == {2}
    # a writes on under the smaller fence, b under its own: neither steps down.
    await a.commit(audit_batch("written by a"))
    await b.commit(audit_batch("written by b"))
    assert await audited(pg_store) == ["written by a", "written by b"]
    # a's share stays 32: it claims nothing back, and lets nothing else go.
    again = await a.turn(now=t + 0.2)
    assert again.shards == list(range(32)) and not again.gained and not again.leaving


async def test_a_batch_begun_just_before_a_release_is_written_not_stepped_down_for(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    """A batch that took the fence of every shard held, then waited while the leaving ones
    were released and claimed by another, is written under the fence of what is held now."""
    a, b = member(pg_store, shard_ownership, "a"), member(pg_store, shard_ownership, "b")
    await a.turn(now=T0)
    await b.turn(now=T0 + 0.1)
    over = await a.turn(now=T0 + 0.2)
    apply = pg_store.apply_fenced
    fences: list[list[int]] = []

    async def racing(batch: WriteBatch, fence: Fence, **kw: Any) -> None:
        fences.append(sorted(fence.shards))
        if len(fences) == 1:  # meanwhile: the hand-off ends, and b claims them
            await hand_off(a, over)
            assert (await b.turn(now=T0 + 0.3)).gained == list(range(32, 64))
        await apply(batch, fence, **kw)

    pg_store.apply_fenced = racing  # type: ignore[method-assign]
    await a.commit(audit_batch("written by a"))
    assert fences == [ALL, list(range(32))]
    assert await audited(pg_store) == ["written by a"]


# ---- serving (cluster/serve.py) with a fake lease core ----------------------------------


class FakeCore:
    """Records what serving asks of the lease core; jobs of `leased` shards are leased."""

    def __init__(self) -> None:
        self.clock = FakeClock(T0)
        self.calls: list[tuple[object, ...]] = []
        self.leased: set[int] = set()
        self.stopped = anyio.Event()

    async def load(self, shards: list[int] | None = None) -> None:
        self.calls.append(("load", shards))

    async def take_shards(self, shards: list[int], /) -> None:
        self.calls.append(("take", list(shards)))

    async def leave_shards(self, shards: list[int], /) -> None:
        self.calls.append(("leave", list(shards)))

    async def evict_shards(self, shards: list[int], /, *, force: bool = False) -> bool:
        self.calls.append(("evict", list(shards), force))
        return force or not self.leased & set(shards)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.calls.append(("run",))
        task_status.started()
        await self.stopped.wait()

    async def stop(self) -> None:
        self.stopped.set()


class Served:
    """A ClusterServing over member `a`, its fake core, health and ready file, and the clock of
    its hand-off timeout."""

    def __init__(self, a: ClusterMember) -> None:
        self.core = FakeCore()
        self.health: list[bool] = []
        self.readied = 0
        self.monotonic = 0.0
        self.serving = ClusterServing(
            a,
            self.core,
            cast(grpc.aio.Server, None),  # not reached: nothing here drains
            self._health,
            self._ready,
            1.0,
            monotonic=lambda: self.monotonic,
        )

    async def _health(self, serving: bool) -> None:
        self.health.append(serving)

    def _ready(self) -> None:
        self.readied += 1


def shards_owned(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("postroom_shards_owned")


async def test_serving_hands_shards_off_once_none_of_their_jobs_is_leased(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    registry = CollectorRegistry()
    a, b = member(pg_store, shard_ownership, "a", registry), member(pg_store, shard_ownership, "b")
    s = Served(a)
    async with anyio.create_task_group() as actors:
        await a.turn(now=T0)
        assert await s.serving.serve_shards(actors, a.monotonic())
        assert s.core.calls == [("load", ALL), ("run",)]
        assert a.role.active and s.health == [True] and s.readied == 1
        took = await pg_store.list_audit(
            since=None, subject_id="", action=TOOK_OVER, after_seq=0, limit=10
        )
        assert [(e.subject_id, e.details["shards"]) for e in took] == [("a", SHARDS)]

        # b joins; a job of shard 40 is leased: the core stops dispatching the leaving shards
        # but cannot let them go yet, so a keeps them.
        s.core.leased = {40}
        await b.turn(now=T0 + 0.1)
        await a.turn(now=T0 + 0.2)
        del s.core.calls[:]
        await s.serving.reconcile()
        upper = list(range(32, 64))
        assert s.core.calls == [("leave", upper), ("evict", upper, False)]
        assert a.shards() == ALL and s.serving.serves() == list(range(32))
        assert (await b.turn(now=T0 + 0.3)).held == []

        # The lease ends (well within the hand-off timeout): the next turn's step lets them go.
        s.core.leased = set()
        s.monotonic = 10.0
        await a.turn(now=T0 + 0.2 + TURN_S)
        del s.core.calls[:]
        await s.serving.reconcile()
        assert s.core.calls == [("evict", upper, False)]  # leave_shards only once
        assert a.shards() == list(range(32)) and shards_owned(registry) == 32
        assert a.role.active
        assert (await b.turn(now=T0 + 0.3 + TURN_S)).gained == upper

        # b dies: past the TTL a's share is every shard again, and its core takes them.
        t = T0 + 0.3 + TURN_S + TTL_S + 0.1
        for n in range(1, 5):
            await a.turn(now=T0 + 0.2 + TURN_S + n * TURN_S)
        assert (await a.turn(now=t)).gained == upper
        del s.core.calls[:]
        await s.serving.reconcile()
        assert s.core.calls == [("take", upper)]
        assert s.serving.serves() == ALL
        await s.core.stop()


async def test_serving_lets_leaving_shards_go_by_force_after_the_handoff_timeout(
    pg_store: PostgresStore, shard_ownership: ShardOwnership
) -> None:
    registry = CollectorRegistry()
    a, b = member(pg_store, shard_ownership, "a", registry), member(pg_store, shard_ownership, "b")
    s = Served(a)
    async with anyio.create_task_group() as actors:
        await a.turn(now=T0)
        assert await s.serving.serve_shards(actors, a.monotonic())
        s.core.leased = {33, 63}  # two runs that never end
        await b.turn(now=T0 + 0.1)
        t = T0 + 0.2
        upper = list(range(32, 64))
        evicted: list[bool] = []
        # Each turn the core is asked to let them go, gently, until the hand-off timeout.
        for s.monotonic in (0.0, 10.0, 20.0, HANDOFF_S - 0.1):
            await a.turn(now=t)
            await b.turn(now=t + 0.05)
            del s.core.calls[:]
            await s.serving.reconcile()
            evicted += [call[2] is True for call in s.core.calls if call[0] == "evict"]
            assert a.shards() == ALL and b.shards() == []
            t += TURN_S
        assert evicted == [False, False, False, False]
        s.monotonic = HANDOFF_S
        await a.turn(now=t)
        del s.core.calls[:]
        await s.serving.reconcile()
        assert s.core.calls == [("evict", upper, True)]
        assert a.shards() == list(range(32)) and shards_owned(registry) == 32
        assert s.serving.serves() == list(range(32))
        assert (await b.turn(now=t + 0.05)).gained == upper
        await shared_once(shard_ownership, t + 0.05, a, b)
        await s.core.stop()


def test_shards_are_named_as_runs() -> None:
    assert spans([0, 1, 2, 20, 19, 18, 5]) == "0-2, 5, 18-20"
    assert spans([43]) == "43" and spans([]) == ""
