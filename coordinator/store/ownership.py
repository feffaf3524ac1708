"""ShardOwnership: claim, renew, take over and release shards, and elect leaders, on PostgreSQL.

ownership = ShardOwnership(store)          # an open PostgresStore
await ownership.open()                     # the shard rows exist, as many as the database has
mine = await ownership.claim("coord-a", want=32, ttl_s=15)
fence = Fence.of("coord-a", ownership.shard_count, mine)
await store.apply_fenced(batch, fence)     # OwnershipLost once another owner took a shard
mine = await ownership.renew("coord-a", mine, ttl_s=15)   # the ones still held

Or let rebalance() do a whole turn: heartbeat, renew, release or claim to a fair share, at once.
(coordinator/cluster/member.py's placement "spread" runs the same turn, but holds the shards over
its share until its lease core has let them go: a hand-off.)

Times: `now` is the caller's clock (tests pass virtual time); None, the default, takes the
database server's clock, the one every coordinator shares. Take-overs add one to the epoch;
renewals keep it. Not here: the loop that turns on a timer and tells the lease core which shards
it serves, which belongs to the coordinator (coordinator/cluster/).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.errors import StoreError
from coordinator.store import rows
from coordinator.store.postgres import PostgresStore
from coordinator.store.rows import Row
from coordinator.store.shards import DEFAULT_SHARD_COUNT, LeaderLease, ShardLease, fair_share


@dataclass(frozen=True, slots=True)
class Holder:
    """A shard's current owner: its epoch, and its advertised address (None if not live)."""

    owner: str
    epoch: int
    address: str | None


def _lease(row: Row) -> ShardLease:
    return ShardLease(row["shard"], row["owner"], row["epoch"], row["expires_at"])


def _leases_json(leases: Sequence[ShardLease]) -> str:
    return rows.dumps([{"shard": lease.shard, "epoch": lease.epoch} for lease in leases])


class ShardOwnership:
    def __init__(self, store: PostgresStore, *, shard_count: int = DEFAULT_SHARD_COUNT) -> None:
        if shard_count < 1:
            raise ValueError(f"shard_count must be at least 1, not {shard_count}")
        self._store = store
        self.shard_count = shard_count

    async def open(self) -> None:
        """Make the shard rows on a fresh database; refuse one partitioned otherwise."""
        if await self._count() == 0:
            await self._store.run("create_shards", {"count": self.shard_count})
        if (found := await self._count()) != self.shard_count:
            raise StoreError(
                f"the database is partitioned into {found} shards, not {self.shard_count}: "
                "every coordinator on one database must use the same shard count"
            )

    async def _count(self) -> int:
        return int((await self._store.run("count_shards", {}))[0]["n"])

    async def claim(
        self,
        owner: str,
        *,
        want: int,
        ttl_s: float,
        now: float | None = None,
        only: Sequence[int] | None = None,
        reclaim: bool = False,
    ) -> list[ShardLease]:
        """Up to `want` shards that nobody holds or whose lease ran out (a dead or paused
        owner's: taken over), lowest first, or only among `only`; each one epoch up.
        `reclaim`: also those still held under `owner`'s name (a process restarted with the
        same name: its first claim)."""
        params = {
            "reclaim": reclaim,
            "owner": owner,
            "want": want,
            "ttl_s": ttl_s,
            "now": now,
            "only": None if only is None else rows.dumps(list(only)),
        }
        return sorted(map(_lease, await self._store.run("claim_shards", params)), key=_shard)

    async def renew(
        self, owner: str, leases: Sequence[ShardLease], *, ttl_s: float, now: float | None = None
    ) -> list[ShardLease]:
        """Extend the leases that still stand; a shard taken over meanwhile is not among them."""
        params = {"owner": owner, "leases": _leases_json(leases), "ttl_s": ttl_s, "now": now}
        return sorted(map(_lease, await self._store.run("renew_shards", params)), key=_shard)

    async def release(self, owner: str, leases: Sequence[ShardLease]) -> None:
        """Let the shards go now (a coordinator leaving): the next claim takes them at once."""
        await self._store.run("release_shards", {"owner": owner, "leases": _leases_json(leases)})

    async def owners(self) -> list[ShardLease]:
        """Every shard's row, by shard: owner '' and epoch 0 for one never held."""
        return [_lease(r) for r in await self._store.run("list_shard_owners", {})]

    async def heartbeat(
        self, owner: str, *, ttl_s: float, address: str = "", now: float | None = None
    ) -> None:
        """Say `owner` is alive for ttl_s more, reachable at `address` (its advertised one)."""
        params = {"owner": owner, "ttl_s": ttl_s, "now": now, "address": address}
        await self._store.run("heartbeat_coordinator", params)

    async def holder(self, shard: int, *, now: float | None = None) -> Holder | None:
        """Who holds `shard` now (its lease standing), with its address; None if nobody."""
        found = await self._store.run("shard_holder", {"shard": shard, "now": now})
        if not found:
            return None
        row = found[0]
        return Holder(row["owner"], row["epoch"], row["address"] or None)

    async def live_members(self, *, now: float | None = None) -> list[str]:
        """The coordinators alive (heartbeating), by name: what a fair share is counted by."""
        return [r["owner"] for r in await self._store.run("live_coordinators", {"now": now})]

    async def live_holders(self, *, now: float | None = None) -> dict[int, Holder]:
        """Every shard held now by a live coordinator, with the address it advertises."""
        found = await self._store.run("live_shard_holders", {"now": now})
        return {r["shard"]: Holder(r["owner"], r["epoch"], r["address"] or None) for r in found}

    async def rebalance(
        self,
        owner: str,
        leases: Sequence[ShardLease],
        *,
        ttl_s: float,
        now: float | None = None,
        address: str = "",
    ) -> list[ShardLease]:
        """One turn of a coordinator's ownership loop (run it well within ttl_s): say it is
        alive, renew what it holds, let go of what is over its fair share (its highest shards),
        or claim up to it. The leases it holds now. A coordinator that joins gets shards as the
        others let them go on their next turns; a dead one's are claimed once its leases and its
        membership have run out, so within ttl_s plus one turn."""
        await self.heartbeat(owner, ttl_s=ttl_s, address=address, now=now)
        share = fair_share(self.shard_count, await self.live_members(now=now), owner)
        held = await self.renew(owner, leases, ttl_s=ttl_s, now=now) if leases else []
        if len(held) > share:
            await self.release(owner, held[share:])
            return held[:share]
        if len(held) < share:
            held += await self.claim(owner, want=share - len(held), ttl_s=ttl_s, now=now)
        return sorted(held, key=_shard)

    async def leave(self, owner: str, leases: Sequence[ShardLease]) -> None:
        """A coordinator stopping: its shards can be claimed at once, and it no longer counts."""
        await self.release(owner, leases)
        await self._store.run("leave_coordinator", {"owner": owner})

    async def elect(
        self, duty: str, owner: str, *, ttl_s: float, now: float | None = None
    ) -> LeaderLease | None:
        """Become (or stay) the leader of `duty`; None while another leader's lease holds."""
        params = {"duty": duty, "owner": owner, "ttl_s": ttl_s, "now": now}
        found = await self._store.run("elect_leader", params)
        if not found:
            return None
        row = found[0]
        return LeaderLease(row["duty"], row["owner"], row["epoch"], row["expires_at"])

    async def resign(self, lease: LeaderLease) -> None:
        params = {"duty": lease.duty, "owner": lease.owner, "epoch": lease.epoch}
        await self._store.run("resign_leader", params)


def _shard(lease: ShardLease) -> int:
    return lease.shard
