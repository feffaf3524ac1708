"""Shards and fences: the values of ownership for several coordinators on one PostgreSQL.

Jobs are partitioned by (platform, account) into a fixed number of shards by a stable hash, so
an account's jobs, its rate-limit gate and its quota all live in one shard. A coordinator holds
a shard through a lease (ShardLease: owner, epoch, expiry); a singleton duty through a
LeaderLease. A Fence is what a batch is written under: the store checks, inside the batch's
transaction, that every lease it names still stands at its epoch, and locks those rows until
commit, so an owner that lost a shard (paused past its TTL while another took it over) writes
nothing: OwnershipLost. The operations are coordinator/store/ownership.py's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from coordinator.errors import ConcurrentUpdate, StoreError
from coordinator.store import rows
from coordinator.store.base import WriteBatch
from coordinator.store.rows import Params, Row

# Fixed for the life of a database: changing it would move every account to another shard.
DEFAULT_SHARD_COUNT = 64


class OwnershipLost(ConcurrentUpdate):
    """A write under a shard or leader lease that no longer stands (another owner took over, or
    it was never held); nothing of the batch was written."""


def shard_of(platform: str, account: str, shard_count: int) -> int:
    """The shard of a (platform, account): the same in every process and release."""
    key = f"{platform}\0{account}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % shard_count


def fair_share(shard_count: int, members: Sequence[str], owner: str) -> int:
    """How many shards `owner` should hold among the live `members` (it among them): an even
    split, the remainder going one each to the first members by name."""
    ranked = sorted(set(members) | {owner})
    base, extra = divmod(shard_count, len(ranked))
    return base + (1 if ranked.index(owner) < extra else 0)


@dataclass(frozen=True, slots=True)
class ShardLease:
    shard: int
    owner: str
    epoch: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class LeaderLease:
    duty: str
    owner: str
    epoch: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class Fence:
    """The leases a batch is written under. Jobs and gates may only be written in shards the
    fence holds; a leader lease guards the rest of a singleton duty's writes."""

    owner: str
    shard_count: int
    shards: Mapping[int, int]  # shard -> epoch held
    leader: LeaderLease | None = None

    @classmethod
    def of(
        cls,
        owner: str,
        shard_count: int,
        leases: Iterable[ShardLease],
        leader: LeaderLease | None = None,
    ) -> Fence:
        return cls(owner, shard_count, {lease.shard: lease.epoch for lease in leases}, leader)

    def check_batch(self, batch: WriteBatch) -> None:
        """OwnershipLost if the batch writes a job or gate of a shard this fence does not hold,
        or marks done a post task of one. New post tasks may go to any shard (that is what
        they are for: asking its owner)."""
        targets = [(j.platform, j.account) for j in batch.new_jobs]
        targets += [(w.job.platform, w.job.account) for w in batch.job_writes]
        targets += [(g.target.platform, g.target.account) for g in batch.gates]
        shards = {shard_of(platform, account, self.shard_count) for platform, account in targets}
        if outside := sorted(shards - self.shards.keys()):
            raise OwnershipLost(f"{self.owner} writes shards {outside} it does not hold")
        done = {task.shard for task in batch.done_post_tasks}
        if outside := sorted(done - self.shards.keys()):
            raise OwnershipLost(
                f"{self.owner} marks done post tasks of shards {outside} it does not hold"
            )
        if wrong := sorted({t.shard for t in batch.post_tasks} - set(range(self.shard_count))):
            # Nobody would ever take them: a caller's bug, not a lost lease.
            raise StoreError(f"post tasks for shards {wrong}, not in 0..{self.shard_count - 1}")

    def lease_params(self) -> str:
        return rows.dumps([{"shard": s, "epoch": e} for s, e in sorted(self.shards.items())])


Fetch = Callable[[str, Params], Awaitable[Sequence[Row]]]


async def hold(fence: Fence, fetch: Fetch) -> None:
    """Inside a batch's transaction, before its writes: every lease of the fence still stands
    (its rows locked FOR SHARE until commit), else OwnershipLost."""
    if fence.shards:
        params = {"owner": fence.owner, "leases": fence.lease_params()}
        held = {r["shard"] for r in await fetch("hold_shards", params)}
        if lost := sorted(fence.shards.keys() - held):
            raise OwnershipLost(f"{fence.owner} lost shards {lost}: another owner took them over")
    if fence.leader is not None:
        lead = fence.leader
        leader: Params = {"duty": lead.duty, "owner": lead.owner, "epoch": lead.epoch}
        if not await fetch("hold_leader", leader):
            raise OwnershipLost(f"{lead.owner} is no longer the leader of {lead.duty}")
