"""ClusterRole: whether this coordinator serves, and where every shard is served.

Several coordinators on one PostgreSQL, placed one of two ways (coordinator/cluster/member.py):
"one": one of them holds every shard and serves; the others stand by. A standby relays workers'
streams and forwards operators' calls to the active's address (relay.py, forward.py) or, when it
cannot, refuses them naming it, and the health service says NOT_SERVING.
"spread": every live coordinator holds a fair share of the shards and serves those; `owners`
says where each shard is served (fanout.py, forward.py route by it), and a coordinator is
active while it holds at least one shard and its core runs.
Only the ownership loop and serve.py write this object; every reader is in the same event loop,
so plain attributes do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PLACEMENT_ONE = "one"
PLACEMENT_SPREAD = "spread"


@dataclass(slots=True)
class ClusterRole:
    """`name`: this coordinator's id in the coordinators table; `address`: what it advertises."""

    name: str
    address: str
    active: bool = False
    # The advertised address of the coordinator holding shard 0 at the last turn (this one's
    # own when it holds it); None when nobody live holds it.
    leader_address: str | None = None
    placement: str = PLACEMENT_ONE
    # "spread": shard -> the advertised address of its live holder at the last turn, this one's
    # own shards included (with its own address); a shard nobody live holds is missing.
    owners: dict[int, str] = field(default_factory=dict)

    def is_active(self) -> bool:
        return self.active

    def active_address(self) -> str | None:
        return self.address if self.active else self.leader_address

    def owner_address(self, shard: int) -> str | None:
        """Where `shard` is served now; None while nobody live holds it. Under "one": the
        active coordinator's address, whatever the shard."""
        if self.placement == PLACEMENT_ONE:
            return self.active_address()
        return self.owners.get(shard)

    def owner_addresses(self) -> list[str]:
        """Every coordinator serving some shard, once each, this one's own address first."""
        if self.placement == PLACEMENT_ONE:
            return [where] if (where := self.active_address()) is not None else []
        distinct = dict.fromkeys(self.owners.values())
        if self.address in distinct:
            return [self.address, *(a for a in distinct if a != self.address)]
        return list(distinct)

    def refusal(self) -> str | None:
        """Why a worker's stream is refused here; None on the active coordinator."""
        if self.active:
            return None
        where = self.active_address()
        other = f"the active one is {where}" if where else "no coordinator is active yet"
        return f"standby: this coordinator is not active; {other}"
