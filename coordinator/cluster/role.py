"""ClusterRole: whether this coordinator is the active one, and where the active one is.

Several coordinators on one PostgreSQL (phase 1): one of them holds every shard and serves; the
others stand by (coordinator/cluster/member.py decides, each ownership turn). What the gRPC side
needs to know of that is small and read often: a standby relays workers' streams and forwards
operators' calls to the active's address (relay.py, forward.py) or, when it cannot, refuses them
naming it, and the health service says NOT_SERVING. Only the ownership loop writes this object;
every reader is in the same event loop, so plain attributes do.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ClusterRole:
    """`name`: this coordinator's id in the coordinators table; `address`: what it advertises."""

    name: str
    address: str
    active: bool = False
    # The advertised address of the coordinator holding shard 0 at the last turn (this one's
    # own when active); None when nobody live holds it.
    leader_address: str | None = None

    def is_active(self) -> bool:
        return self.active

    def active_address(self) -> str | None:
        return self.address if self.active else self.leader_address

    def refusal(self) -> str | None:
        """Why a worker's stream is refused here; None on the active coordinator."""
        if self.active:
            return None
        where = self.active_address()
        other = f"the active one is {where}" if where else "no coordinator is active yet"
        return f"standby: this coordinator is not active; {other}"
