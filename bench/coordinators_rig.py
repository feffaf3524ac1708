"""Several coordinators on one PostgreSQL, as the bench runs them (item 9's 9i..9m, item 12),
and what the bench reads of them: their shares of the shards, who holds which shard, when each
job was first leased.

`several(workdir, n, db_url)` starts the sandbox if asked and `n` coordinators on the database
(LocalCluster.start_coordinators). Placement "one" (9i..9m): one becomes active, the others stand
by, and the cluster's own calls go to the ACTIVE one (`c.coordinator` is its process), so the
figures measure the coordinators, not the extra hop of a standby's forwarding. Placement "spread"
(item 12): every coordinator serves; it waits until each holds its fair share of the 64 shards
and points the cluster's calls at coord-1 (which routes each to the coordinator that must execute
it, as any would). Workers started on it are given every address.

It imports no bench item: bench/postgres.py and bench/dispatch.py start their coordinators here,
and item 12 (bench/coordinators.py, bench/coordinators_kill.py) uses bench/postgres.py's database.
"""

from __future__ import annotations

import contextlib
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from bench.common import PRODUCT_HEARTBEAT_S, PRODUCT_LEASE_TTL_S
from coordinator.store.shards import DEFAULT_SHARD_COUNT, shard_of
from postroom_cli.cluster import ClusterConfig, LocalCluster, Peer

SPREAD = "spread"
FAIR_TIMEOUT_S = 90.0  # a hand-off waits for leased jobs up to 30 s, then a turn or two
_SHARDS_OWNED = re.compile(r"^postroom_shards_owned (\S+)$", re.MULTILINE)


@contextlib.contextmanager
def several(
    workdir: Path,
    n: int,
    db_url: str,
    *,
    sandbox: bool = False,
    heartbeat_s: float = PRODUCT_HEARTBEAT_S,
    lease_ttl_s: float = PRODUCT_LEASE_TTL_S,
    ownership_ttl_s: float | None = None,
    placement: str = "one",
) -> Iterator[LocalCluster]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = ClusterConfig(
        heartbeat_interval_s=heartbeat_s,
        lease_ttl_s=lease_ttl_s,
        coordinator_args=("--log-level", "WARNING"),
        ownership_ttl_s=ownership_ttl_s,
    )
    with LocalCluster(workdir, config) as c:
        c.db_url = db_url
        if sandbox:
            c.start_sandbox()
        else:
            c.sandbox_url = "http://127.0.0.1:9"  # never called by lean sessions / --noop workers
        c.start_coordinators(n, placement_args(placement))
        if placement == SPREAD:
            wait_fair(c)
            serving = c.peers["coord-1"]
        else:
            serving = c.wait_active()
        c.coordinator_address, c.metrics_url = serving.address, serving.metrics_url
        c.coordinator = serving.child  # what the bench watches (its CPU, its pid)
        yield c


def placement_args(placement: str) -> list[str]:
    return ["--placement", placement]


def shards_owned(peer: Peer) -> int:
    """What a coordinator says it holds (its gauge postroom_shards_owned); -1 if it is gone."""
    try:
        with urllib.request.urlopen(peer.metrics_url, timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return -1
    found = _SHARDS_OWNED.search(text)
    return int(float(found.group(1))) if found else -1


def fair(c: LocalCluster) -> dict[str, int] | None:
    """The shards each live coordinator holds, once they are shared fairly (else None)."""
    live = [p for p in c.peers.values() if p.child.alive()]
    held = {p.name: shards_owned(p) for p in live}
    shares = {DEFAULT_SHARD_COUNT // len(live), -(-DEFAULT_SHARD_COUNT // len(live))}
    if sum(held.values()) == DEFAULT_SHARD_COUNT and set(held.values()) <= shares:
        return held
    return None


def wait_fair(c: LocalCluster, timeout_s: float = FAIR_TIMEOUT_S) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while (held := fair(c)) is None:
        if time.monotonic() > deadline:
            now = {p.name: shards_owned(p) for p in c.peers.values()}
            raise TimeoutError(f"shards not shared fairly in {timeout_s:g} s: {now}")
        time.sleep(0.1)
    return held


async def shard_owners(db_url: str) -> dict[int, str]:
    """shard -> its holder, as the database has it."""
    conn = await asyncpg.connect(db_url, timeout=5.0)
    try:
        rows = await conn.fetch("SELECT shard, owner FROM shard_owners")
    finally:
        await conn.close()
    return {int(r["shard"]): str(r["owner"]) for r in rows}


def accounts_per_owner(owners: dict[int, str], accounts: list[str]) -> dict[str, int]:
    per: dict[str, int] = {}
    for account in accounts:
        owner = owners.get(shard_of("sandbox", account, DEFAULT_SHARD_COUNT), "?")
        per[owner] = per.get(owner, 0) + 1
    return dict(sorted(per.items()))


async def dispatch_delays(db_url: str) -> list[tuple[float, float, str]]:
    """Per job: when it fell due, how long after that it was first leased, its account."""
    conn = await asyncpg.connect(db_url, timeout=5.0)
    try:
        rows = await conn.fetch(
            "SELECT j.scheduled_at AS due, min(a.at) AS leased, j.account AS account "
            "FROM jobs j JOIN audit_events a ON a.subject_id = j.id AND a.action = 'JOB_LEASED' "
            "GROUP BY j.id, j.scheduled_at, j.account"
        )
    finally:
        await conn.close()
    return [
        (float(r["due"]), float(r["leased"]) - float(r["due"]), str(r["account"])) for r in rows
    ]


def nearest_rank(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of `values`, rounded; None if there are none."""
    if not values:
        return None
    ranked = sorted(values)
    return round(ranked[min(len(ranked) - 1, int(q * len(ranked)))], 3)
