"""Which shards a lease core holds: its scope (issue 14's "spread" placement).

Jobs are partitioned by (platform, account) into shards (coordinator/store/shards.py shard_of).
A coordinator that owns only some shards runs a core holding only their jobs: it makes jobs only
for targets it owns, hands out only jobs of targets it serves (owned and not leaving), and
refuses an operator's command on a target it does not own (NotOwner: the caller retries and is
routed to the owner). A leaving shard is still owned (its leases finish and its writes are still
fenced) but gets no new lease; once evicted it is no longer owned.

The default scope (`owned is None`) owns and serves every shard: a single coordinator's path,
which must cost nothing more than that one check on the dispatch path. A scope is a value:
taking, leaving and evicting shards make a new one (sharing the per-target shard cache, since
the shard of a target never changes for a given shard count).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from coordinator.domain import Target
from coordinator.errors import NotOwner
from coordinator.store.shards import DEFAULT_SHARD_COUNT, shard_of


class ShardScope:
    __slots__ = ("_shards", "count", "leaving", "owned")

    def __init__(
        self,
        count: int = DEFAULT_SHARD_COUNT,
        owned: frozenset[int] | None = None,
        leaving: frozenset[int] = frozenset(),
        *,
        _shards: dict[Target, int] | None = None,
    ) -> None:
        if count < 1:
            raise ValueError(f"shard count must be at least 1, not {count}")
        self.count = count
        self.owned = owned  # None: every shard
        self.leaving = leaving if owned is None else leaving & owned
        # target -> shard: shard_of hashes, and dispatch asks for every candidate target.
        self._shards: dict[Target, int] = {} if _shards is None else _shards

    def __repr__(self) -> str:
        owned = "all" if self.owned is None else sorted(self.owned)
        return f"ShardScope(count={self.count}, owned={owned}, leaving={sorted(self.leaving)})"

    @property
    def everything(self) -> bool:
        """Owns and serves every shard (a single coordinator): nothing needs checking."""
        return self.owned is None

    def shard(self, target: Target) -> int:
        shard = self._shards.get(target)
        if shard is None:
            shard = self._shards[target] = shard_of(target.platform, target.account, self.count)
        return shard

    def owns(self, target: Target) -> bool:
        """Its jobs are this core's (leaving ones included: their leases still finish here)."""
        return self.owned is None or self.shard(target) in self.owned

    def serves(self, target: Target) -> bool:
        """Its jobs may get new leases here: owned and not leaving."""
        if self.owned is None:
            return True
        shard = self.shard(target)
        return shard in self.owned and shard not in self.leaving

    def serving(self) -> Callable[[Target], bool] | None:
        """The filter dispatch applies to targets, or None when it serves all of them."""
        return None if self.owned is None else self.serves

    def check_owner(self, target: Target) -> None:
        """NotOwner unless this core owns the target's shard."""
        if not self.owns(target):
            raise NotOwner(self.shard(target), target)

    def all_shards(self) -> frozenset[int]:
        return frozenset(range(self.count)) if self.owned is None else self.owned

    def taking(self, shards: Iterable[int]) -> ShardScope:
        """This scope and `shards` too (new ones are served at once, not leaving)."""
        new = self._valid(shards)
        owned = None if self.owned is None else self.owned | new
        return ShardScope(self.count, owned, self.leaving - new, _shards=self._shards)

    def leaving_too(self, shards: Iterable[int]) -> ShardScope:
        """`shards` (those owned) stop getting new leases; they stay owned until evicted."""
        owned = self.all_shards()
        return ShardScope(
            self.count, owned, self.leaving | (self._valid(shards) & owned), _shards=self._shards
        )

    def without(self, shards: Iterable[int]) -> ShardScope:
        """`shards` no longer owned (evicted)."""
        gone = self._valid(shards)
        return ShardScope(
            self.count, self.all_shards() - gone, self.leaving - gone, _shards=self._shards
        )

    def _valid(self, shards: Iterable[int]) -> frozenset[int]:
        out = frozenset(shards)
        if bad := sorted(s for s in out if not 0 <= s < self.count):
            raise ValueError(f"shards {bad} are outside 0..{self.count - 1}")
        return out
