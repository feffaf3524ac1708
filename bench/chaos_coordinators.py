"""The soak's coordinators when several share one PostgreSQL database (bench/chaos.py).

Placement "one": one coordinator is active and holds every shard, the others stand by. A kill
SIGKILLs the ACTIVE one and starts it again at once (it comes back as a standby); the soak then
notes who took over (`takeovers`). The soak's own calls go to a standby, which forwards them.

Placement "spread": every live coordinator serves a fair share of the shards. A kill SIGKILLs a
live coordinator picked by the soak's seeded random generator, and starts it again (same --name)
a few seeded seconds later: killed briefly, it takes its own shards back on its first turn; down
for longer, the survivors claim them first and it gets its share back as they hand shards over.
Which coordinators held the victim's shards once every one of them was claimed anew (its epoch
moved: taken over, or reclaimed by the victim restarted) by a live coordinator is read from the
database (ShardOwnership.live_holders, what the coordinators' own turns see) and noted as a
hand-off ("coord-2 (21) -> coord-1 11, coord-3 10"; "coord-2 (21) -> coord-2 21": back before
the survivors claimed any). One coordinator is down at a time, and
none is killed while a hand-off is still open. The soak's own calls go to a live coordinator
other than the last victim, which routes them to the shards' owners.

Either way a coordinator that exited by itself starts again, as a supervisor would: a step-down
(exit code 3, the crash-only way) is counted in `step_downs`, any other exit is a crash, noted in
`crashes` with its exit code (its log has why).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from coordinator.cluster.member import EXIT_STEPPED_DOWN
from coordinator.store.ownership import Holder, ShardOwnership
from coordinator.store.postgres import PostgresStore
from coordinator.store.shards import DEFAULT_SHARD_COUNT
from postroom_cli.cluster import LocalCluster, Peer

PLACEMENTS = ("one", "spread")
# A spread victim stays down this long (seeded): below the shard TTL it reclaims its own shards,
# above it the survivors take them over first.
DOWN_S = (0.5, 5.0)
SETTLE_TIMEOUT_S = 60.0
PENDING = "?"


class KillReport(Protocol):
    """What the soak's report keeps of coordinator kills (bench/chaos.py SoakReport)."""

    coordinator_restarts: int
    step_downs: int
    crashes: list[str]
    takeovers: list[str]
    kills: list[str]
    handoffs: list[str]


def live_holders(db_url: str) -> dict[int, Holder]:
    """Every shard held now by a live coordinator (its lease and heartbeat standing)."""

    async def read() -> dict[int, Holder]:
        store = PostgresStore(db_url, pool_max_size=2)
        await store.open()
        try:
            return await ShardOwnership(store).live_holders()
        finally:
            await store.close()

    return anyio.run(read)


def handoff(victim: str, epochs: Mapping[int, int], holders: Mapping[int, Holder]) -> str | None:
    """Who holds the victim's shards (shard -> its epoch at the kill) now, once each was claimed
    anew ("coord-2 (21) -> coord-1 11, coord-3 10"); None until then. A victim just killed still
    looks live until its heartbeat and leases run out: its old epochs do not count."""
    if any(s not in holders or holders[s].epoch <= e for s, e in epochs.items()):
        return None
    counts = Counter(holders[shard].owner for shard in epochs)
    spread = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
    return f"{victim} ({len(epochs)}) -> {spread or 'nobody'}"


@dataclass(slots=True)
class Coordinators:
    """Several coordinators of one LocalCluster under the soak: start, kill, revive, restore."""

    cluster: LocalCluster
    report: KillReport
    rng: random.Random
    placement: str = "one"
    # spread: a victim's name -> when it starts again; the open hand-off's victim and its
    # shards (shard -> epoch at the kill).
    down: dict[str, float] = field(default_factory=dict)
    victim: str = ""
    victim_shards: dict[int, int] = field(default_factory=dict)

    @property
    def extra(self) -> list[str]:
        # Always said: the coordinator's own default is spread (one under mutual TLS).
        return ["--placement", self.placement]

    def start(self, n: int) -> None:
        self.cluster.start_coordinators(n, self.extra)
        if self.placement == "spread":
            self._settle()
        self._call_another()

    def kill(self) -> None:
        if self.placement == "spread":
            self._kill_any()
        else:
            self._kill_the_active()

    def _kill_the_active(self) -> None:
        """SIGKILL the active coordinator and start it again (a standby now); note who took
        over once the soak looks again (`revive`)."""
        active = self.cluster.active_peer()
        if active is None:  # a takeover is under way already
            return
        takeovers = self.report.takeovers
        if takeovers and takeovers[-1] == PENDING:
            takeovers[-1] = active.name
        active.child.kill()
        self.report.coordinator_restarts += 1
        self.cluster.start_peer(active.name, self.extra)
        takeovers.append(PENDING)

    def _kill_any(self) -> None:
        """SIGKILL a live coordinator picked at random, noting the shards it held; it starts
        again after a few seconds (`revive`)."""
        if self.down or self.victim:  # one down at a time, and its hand-off closed first
            return
        live = [p for p in self.cluster.peers.values() if p.child.alive()]
        if len(live) < 2:
            return
        peer = self.rng.choice(live)
        holders = live_holders(self.cluster.db_url)
        peer.child.kill()
        self.victim = peer.name
        self.victim_shards = {s: h.epoch for s, h in holders.items() if h.owner == peer.name}
        self.down[peer.name] = time.monotonic() + self.rng.uniform(*DOWN_S)
        self.report.kills.append(peer.name)
        self.report.handoffs.append(PENDING)
        self._call_another()

    def revive(self) -> None:
        """Coordinators that exited by themselves (stepped down or crashed), or whose time down
        is over, start again; the open takeover or hand-off is noted once it is known."""
        now = time.monotonic()
        for peer in list(self.cluster.peers.values()):
            if peer.child.alive():
                continue
            if peer.name in self.down:
                if now < self.down[peer.name]:
                    continue
                del self.down[peer.name]
                self.report.coordinator_restarts += 1
            elif (code := peer.child.popen.returncode) == EXIT_STEPPED_DOWN:
                self.report.step_downs += 1
            else:
                self.report.crashes.append(f"{peer.name} exit {code}")
            self.cluster.start_peer(peer.name, self.extra)
        if self.placement == "spread":
            self._close_handoff()
            return
        takeovers = self.report.takeovers
        if takeovers and takeovers[-1] == PENDING:
            active = self.cluster.active_peer()
            if active is not None:
                takeovers[-1] = active.name
                self._call_another()

    def restore(self) -> None:
        """Every coordinator running again and serving: ("one") one of them active, ("spread")
        every shard held by a live one, the last hand-off noted."""
        for name in self.down:
            self.down[name] = 0.0
        self.revive()
        if self.placement == "spread":
            self._settle()
        else:
            self.cluster.wait_active()
        self.revive()
        self._call_another()

    def _close_handoff(self) -> None:
        if not self.victim:
            return
        found = handoff(self.victim, self.victim_shards, live_holders(self.cluster.db_url))
        if found is not None:
            self.report.handoffs[-1] = found
            self.victim = ""

    def _settle(self) -> None:
        """Wait until every shard has a live holder (and note the open hand-off)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while len(live_holders(self.cluster.db_url)) < DEFAULT_SHARD_COUNT:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every shard held after {SETTLE_TIMEOUT_S:g}s")
            time.sleep(0.2)
        self._close_handoff()

    def _call_another(self) -> None:
        """The soak's own calls go to a standby ("one"; forwarded) or to a live coordinator
        other than the last victim ("spread"; routed), unless none is up."""
        avoid: Peer | None = (
            self.cluster.active_peer()
            if self.placement == "one"
            else self.cluster.peers.get(self.report.kills[-1] if self.report.kills else "")
        )
        for peer in self.cluster.peers.values():
            if peer is not avoid and peer.child.alive():
                self.cluster.coordinator_address = peer.address
                return
