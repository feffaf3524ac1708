"""ClusterMember: one coordinator's ownership turns on a shared PostgreSQL, and its fenced commits.

Phase 1 of several coordinators (issue 14): the lease core still holds posts and jobs together,
so one coordinator serves at a time and the others stand by, ready to take over. The policy is
"one active": every turn (a quarter of the ownership TTL) a coordinator heartbeats (with the
address it advertises), renews what it holds and claims every shard that is free or whose lease
ran out. It is active while it holds them all. A standby that got only some keeps them and goes on
claiming until the old active's leases run out, unless another live coordinator holds shard 0
(two standbys that raced for a free database): then it lets its few go, so one of them wins.

The active writes every batch under a fence of all its shard leases (store.apply_fenced): once
another coordinator took a shard over (this one was paused, or cut off from the database, past
the TTL) nothing more of it can be written. It then steps down the crash-only way: one clear log
line, nothing of the batch sent, exit code 3; a supervisor starts it again, as a standby. So does
a renewal that comes back short, and so does going a TTL less one turn without a renewal
(self-fencing: its leases may have run out without its knowing).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, NoReturn

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, Gauge

from coordinator.cluster.role import ClusterRole
from coordinator.errors import StoreError
from coordinator.store.base import WriteBatch
from coordinator.store.ownership import ShardOwnership
from coordinator.store.postgres import PostgresStore
from coordinator.store.shards import Fence, OwnershipLost, ShardLease

log = logging.getLogger("postroom.coordinator")

# Well under the workers' lease TTL (15 s): workers reconnect to a new active before their
# leases end, and keep their jobs.
DEFAULT_OWNERSHIP_TTL_S = 6.0
TURNS_PER_TTL = 4  # a turn every TTL/4: DEFAULT_OWNERSHIP_TURN_S = 1.5 s
DEFAULT_OWNERSHIP_TURN_S = DEFAULT_OWNERSHIP_TTL_S / TURNS_PER_TTL
EXIT_STEPPED_DOWN = 3


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    ttl_s: float = DEFAULT_OWNERSHIP_TTL_S

    @property
    def turn_s(self) -> float:
        return self.ttl_s / TURNS_PER_TTL


@dataclass(frozen=True, slots=True)
class Turn:
    """What one turn found: the leases held now, whether that is all of them, and, for an
    active coordinator that lost some, one of the lost shards as its new holder has it."""

    held: list[ShardLease]
    active: bool
    lost: str | None = None


@dataclass(slots=True)
class _Gauges:
    active: Gauge | None = None
    shards: Gauge | None = None

    @classmethod
    def on(cls, registry: CollectorRegistry | None) -> _Gauges:
        if registry is None:
            return cls()
        return cls(
            Gauge(
                "postroom_coordinator_active",
                "1 while this coordinator is the active one (holds every shard), else 0",
                registry=registry,
            ),
            Gauge("postroom_shards_owned", "Shards this coordinator holds", registry=registry),
        )

    def show(self, active: bool, shards: int) -> None:
        if self.active is not None and self.shards is not None:
            self.active.set(1 if active else 0)
            self.shards.set(shards)


def _exit_now(code: int) -> NoReturn:
    """Crash-only: no clean-up that could still send or write anything."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@dataclass(slots=True)
class ClusterMember:
    store: PostgresStore
    ownership: ShardOwnership
    role: ClusterRole
    config: ClusterConfig = field(default_factory=ClusterConfig)
    registry: CollectorRegistry | None = None
    exit: Callable[[int], NoReturn] = _exit_now
    monotonic: Callable[[], float] = time.monotonic
    held: list[ShardLease] = field(default_factory=list)
    fence: Fence | None = None  # set once this coordinator holds every shard
    _claimed: bool = False  # a first claim was made (it reclaims this name's shards)
    _renewed_at: float = 0.0  # monotonic start of the last turn that kept every shard
    _gauges: _Gauges = field(init=False)

    def __post_init__(self) -> None:
        self._gauges = _Gauges.on(self.registry)

    @property
    def name(self) -> str:
        return self.role.name

    # ---- one turn ------------------------------------------------------------------------

    async def turn(self, now: float | None = None) -> Turn:
        """Heartbeat, renew, claim; `now` is virtual time for tests (None: the server's)."""
        o, ttl, count = self.ownership, self.config.ttl_s, self.ownership.shard_count
        started = self.monotonic()
        await o.heartbeat(self.name, ttl_s=ttl, address=self.role.address, now=now)
        before = self.held
        held = await o.renew(self.name, before, ttl_s=ttl, now=now) if before else []
        if self.fence is not None and len(held) < count:
            return Turn(held, active=False, lost=await self._lost(before, held, now))
        if len(held) < count:
            # The first turn also takes back what a predecessor of the same --name still holds.
            first, self._claimed = not self._claimed, True
            want = count - len(held)
            held += await o.claim(self.name, want=want, ttl_s=ttl, now=now, reclaim=first)
        self.held = held = sorted(
            held, key=lambda lease: lease.shard
        )  # kept even if the rest fails
        leader = await o.holder(0, now=now)
        if held and len(held) < count and leader is not None and leader.owner != self.name:
            await o.release(self.name, held)  # a live rival holds shard 0: let it have them all
            self.held = []
        self.role.leader_address = leader.address if leader is not None else None
        if active := len(self.held) == count:
            self.fence = Fence.of(self.name, count, self.held)
            self._renewed_at = started  # its leases hold at least ttl from here
        return Turn(self.held, active=active)

    async def _lost(
        self, before: list[ShardLease], held: list[ShardLease], now: float | None = None
    ) -> str:
        kept = {lease.shard for lease in held}
        gone = [lease for lease in before if lease.shard not in kept]
        shard = gone[0].shard if gone else 0
        holder = await self.ownership.holder(shard, now=now)
        if holder is None:
            return f"the lease of shard {shard} ran out"
        return (
            f"another coordinator ({holder.owner}) took over shard {shard} (epoch {holder.epoch})"
        )

    # ---- the loop ------------------------------------------------------------------------

    async def run(
        self,
        on_active: Callable[[Turn, float], Coroutine[Any, Any, None]],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Turns until cancelled. The first turn that holds every shard sets the fence and
        starts `on_active(turn, started)` (the take-over: load, then serve) in the background;
        turns go on meanwhile, renewing. A lost shard or a missed renewal steps down."""
        async with anyio.create_task_group() as tg:
            started = reported = False
            while True:
                t0 = self.monotonic()
                if self._overdue() is not None:
                    await self._step_down_overdue()
                turn = None
                # A turn stuck on a dead connection must not keep the self-fence from its check.
                with anyio.move_on_after(self.config.ttl_s - self.config.turn_s) as waited:
                    try:
                        turn = await self.turn()
                    except StoreError as exc:
                        log.warning("ownership turn failed (will retry): %s", exc)
                if waited.cancelled_caught:
                    log.warning("ownership turn timed out (will retry)")
                if turn is not None:
                    self._after(turn)
                    if turn.active and not started:
                        started = True
                        tg.start_soon(on_active, turn, t0)
                if not reported:
                    reported = True
                    task_status.started()  # up once its first turn is done
                await anyio.sleep(max(0.0, t0 + self.config.turn_s - self.monotonic()))

    def _after(self, turn: Turn) -> None:
        if turn.lost is not None:
            self.step_down(f"{turn.lost} while this one was paused or cut off")
        self._gauges.show(turn.active, len(turn.held))

    def _overdue(self) -> float | None:
        """Seconds since the last renewal of every shard, once past the TTL less one turn (its
        leases may have run out: self-fencing); None while in time or not active."""
        if self.fence is None:
            return None
        since = self.monotonic() - self._renewed_at
        return since if since > self.config.ttl_s - self.config.turn_s else None

    async def _step_down_overdue(self) -> NoReturn:
        since = self._overdue() or 0.0
        try:
            who = await self._lost(self.held, [])
        except StoreError:
            who = "its leases may have run out"
        self.step_down(
            f"{who} while this one was paused or cut off (no renewal for {since:.1f} s; "
            f"ownership TTL {self.config.ttl_s:g} s)"
        )

    def step_down(self, why: str, *, batch: bool = False) -> NoReturn:
        tail = "; nothing of the last batch was written" if batch else ""
        log.error("stepping down: %s%s", why, tail)
        self.exit(EXIT_STEPPED_DOWN)

    # ---- fenced commits ------------------------------------------------------------------

    async def commit(self, batch: WriteBatch) -> None:
        """The actor's commit: the batch under the fence of every shard, or step down."""
        if self.fence is None:
            self.step_down("a batch to write while this coordinator holds no shard", batch=True)
        if (since := self._overdue()) is not None:
            self.step_down(
                f"no renewal of its shard leases for {since:.1f} s (ownership TTL "
                f"{self.config.ttl_s:g} s): it was paused or cut off, and another may have "
                "taken over",
                batch=True,
            )
        try:
            await self.store.apply_fenced(batch, self.fence)
        except OwnershipLost as exc:
            why = await self._describe_loss(exc)
            self.step_down(f"{why} while this one was paused or cut off", batch=True)
        except StoreError as exc:
            # Paused mid-batch: the server ended the session (postgres.py) and the batch rolled
            # back. Otherwise the error goes up and the process ends, crash-only, as ever.
            if (since := self._overdue()) is None:
                raise
            self.step_down(
                f"the batch failed ({exc}) after {since:.1f} s without renewing its shard "
                "leases: it was paused or cut off",
                batch=True,
            )

    async def _describe_loss(self, exc: OwnershipLost) -> str:
        fence = self.fence
        if fence is None:
            return str(exc)
        try:
            for lease in await self.ownership.owners():
                if fence.shards.get(lease.shard) not in (None, lease.epoch):
                    return (
                        f"another coordinator ({lease.owner or 'none'}) took over shard "
                        f"{lease.shard} (epoch {lease.epoch})"
                    )
        except StoreError:
            pass
        return str(exc)

    async def leave(self) -> None:
        """A clean stop: let every shard go now, so a standby takes over at its next turn."""
        held, self.held = self.held, []
        self.fence = None
        await self.ownership.leave(self.name, held)
        self._gauges.show(False, 0)
