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

Placement "spread" (phase 2): every live coordinator holds a fair share of the shards
(shards.fair_share among the live members) and serves those. Each turn it heartbeats, renews,
and claims up to its share; over its share (a coordinator joined), its highest shards become
LEAVING: still held and fenced, until serve.py has had its core let them go and calls
release(). A turn that finds a shard gone steps down as above; so does the self-fence. The fence
covers every shard held, leaving ones included, and is rebuilt every turn. The role learns where
every shard is served (role.owners) each turn.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, Gauge

from coordinator.cluster.role import ClusterRole
from coordinator.errors import StoreError
from coordinator.store.base import WriteBatch
from coordinator.store.ownership import Holder, ShardOwnership
from coordinator.store.postgres import PostgresStore
from coordinator.store.shards import Fence, OwnershipLost, ShardLease, fair_share

log = logging.getLogger("postroom.coordinator")

# Well under the workers' lease TTL (15 s): workers reconnect to a new active before their
# leases end, and keep their jobs.
DEFAULT_OWNERSHIP_TTL_S = 6.0
TURNS_PER_TTL = 4  # a turn every TTL/4: DEFAULT_OWNERSHIP_TURN_S = 1.5 s
DEFAULT_OWNERSHIP_TURN_S = DEFAULT_OWNERSHIP_TTL_S / TURNS_PER_TTL
# "spread": how long a leaving shard waits for its leased jobs to end before its core lets
# them go anyway (a run's report then reaches the shard's new owner).
DEFAULT_HANDOFF_TIMEOUT_S = 30.0
EXIT_STEPPED_DOWN = 3

Placement = Literal["one", "spread"]
PLACEMENTS: tuple[Placement, ...] = ("one", "spread")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    ttl_s: float = DEFAULT_OWNERSHIP_TTL_S
    placement: Placement = "one"
    handoff_timeout_s: float = DEFAULT_HANDOFF_TIMEOUT_S

    @property
    def turn_s(self) -> float:
        return self.ttl_s / TURNS_PER_TTL


@dataclass(frozen=True, slots=True)
class Turn:
    """What one turn found: the leases held now, whether this coordinator may serve ("one":
    it holds them all; "spread": it holds any), and, for one that lost some, one of the lost
    shards as its new holder has it. "spread" also says which shards are new since the last
    turn (`gained`) and which of those held are leaving (`leaving`: every one, not only new)."""

    held: list[ShardLease]
    active: bool
    lost: str | None = None
    gained: list[int] = field(default_factory=list)
    leaving: list[int] = field(default_factory=list)

    @property
    def shards(self) -> list[int]:
        return [lease.shard for lease in self.held]


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
                "1 while this coordinator serves (placement one: it holds every shard; spread: "
                "it holds any), else 0",
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
    # "one": set once this coordinator holds every shard; "spread": every turn, over all held.
    fence: Fence | None = None
    leaving: set[int] = field(default_factory=set)  # "spread": held shards being handed off
    _claimed: bool = False  # a first claim was made (it reclaims this name's shards)
    _renewed_at: float = 0.0  # monotonic start of the last turn that kept every shard
    _gauges: _Gauges = field(init=False)
    # A turn and a release never interleave: a release between a turn's renewal and its end
    # would be undone by that turn (the lease renewed, the shard held again).
    _turning: anyio.Lock = field(default_factory=anyio.Lock)

    def __post_init__(self) -> None:
        self._gauges = _Gauges.on(self.registry)
        self.role.placement = self.config.placement

    @property
    def name(self) -> str:
        return self.role.name

    @property
    def spread(self) -> bool:
        return self.config.placement == "spread"

    def shards(self) -> list[int]:
        """The shards held now, leaving ones included, lowest first."""
        return [lease.shard for lease in self.held]

    # ---- one turn ------------------------------------------------------------------------

    async def turn(self, now: float | None = None) -> Turn:
        """Heartbeat, renew, claim; `now` is virtual time for tests (None: the server's)."""
        async with self._turning:
            return await (self._spread_turn(now) if self.spread else self._one_turn(now))

    async def _one_turn(self, now: float | None) -> Turn:
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

    async def _spread_turn(self, now: float | None) -> Turn:
        o, ttl, count = self.ownership, self.config.ttl_s, self.ownership.shard_count
        started = self.monotonic()
        await o.heartbeat(self.name, ttl_s=ttl, address=self.role.address, now=now)
        share = fair_share(count, await o.live_members(now=now), self.name)
        before = self.held
        held = await o.renew(self.name, before, ttl_s=ttl, now=now) if before else []
        if len(held) < len(before):
            return Turn(held, active=False, lost=await self._lost(before, held, now))
        # Leaving shards stay leaving until released, even if the share grows back meanwhile:
        # the core already stopped dispatching them. They do not count toward the share.
        keep = [lease for lease in held if lease.shard not in self.leaving]
        gained: list[ShardLease] = []
        if len(keep) < share:
            # The first turn also takes back what a predecessor of the same --name still holds.
            first, self._claimed = not self._claimed, True
            want = share - len(keep)
            gained = await o.claim(self.name, want=want, ttl_s=ttl, now=now, reclaim=first)
        elif len(keep) > share:
            self.leaving.update(lease.shard for lease in keep[share:])  # the highest ones
        self.held = sorted(held + gained, key=lambda lease: lease.shard)
        self.fence = Fence.of(self.name, count, self.held)
        self._renewed_at = started  # every shard held now holds at least ttl from here
        self._place(await o.live_holders(now=now))
        return Turn(
            self.held,
            active=bool(self.held),
            gained=[lease.shard for lease in gained],
            leaving=sorted(self.leaving),
        )

    def _place(self, holders: dict[int, Holder]) -> None:
        """The role's map of where each shard is served: the live holders' addresses, this
        coordinator's own for its own shards (whatever the table said of them)."""
        owners = {
            shard: h.address
            for shard, h in holders.items()
            if h.owner != self.name and h.address is not None
        }
        owners.update((lease.shard, self.role.address) for lease in self.held)
        self.role.owners = dict(sorted(owners.items()))
        self.role.leader_address = owners.get(0)

    async def release(self, shards: Iterable[int]) -> list[int]:
        """Let `shards` go now ("spread": their hand-off is done, the core holds nothing of
        them), so a coordinator short of its share claims them at its next turn. The fence
        shrinks first, so no batch begun from here names them. The shards let go."""
        wanted = set(shards)
        async with self._turning:
            going = [lease for lease in self.held if lease.shard in wanted]
            self.held = [lease for lease in self.held if lease.shard not in wanted]
            self.leaving -= wanted
            self.fence = Fence.of(self.name, self.ownership.shard_count, self.held)
            for lease in going:
                self.role.owners.pop(lease.shard, None)
            await self.ownership.release(self.name, going)
            self._gauges.show(bool(self.held), len(self.held))
        return [lease.shard for lease in going]

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
        on_turn: Callable[[Turn], None] | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Turns until cancelled. The first turn that may serve ("one": holds every shard;
        "spread": holds any) starts `on_active(turn, started)` (the take-over: load, then serve)
        in the background; turns go on meanwhile, renewing, each told to `on_turn` once done.
        A lost shard or a missed renewal steps down."""
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
                    if on_turn is not None:
                        on_turn(turn)
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
        leases may have run out: self-fencing); None while in time or holding nothing."""
        if self.fence is None or not self.fence.shards:
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
        """The actor's commit: the batch under the fence of every shard held, or step down."""
        if self.fence is None:
            self.step_down("a batch to write while this coordinator holds no shard", batch=True)
        if (since := self._overdue()) is not None:
            self.step_down(
                f"no renewal of its shard leases for {since:.1f} s (ownership TTL "
                f"{self.config.ttl_s:g} s): it was paused or cut off, and another may have "
                "taken over",
                batch=True,
            )
        fence = self.fence
        try:
            try:
                await self.store.apply_fenced(batch, fence, derive_posts=self.spread)
            except OwnershipLost:
                if self.fence is None or self.fence == fence:
                    raise
                # "spread": shards were released while the batch waited to start, and may be
                # another's already; nothing was written, so write it under what is held now.
                await self.store.apply_fenced(batch, self.fence, derive_posts=self.spread)
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
        """A clean stop: let every shard go now, so the others claim them at their next turn."""
        held, self.held = self.held, []
        self.fence = None
        self.leaving.clear()
        await self.ownership.leave(self.name, held)
        self._gauges.show(False, 0)
