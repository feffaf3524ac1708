"""Item 12f/12g (bench/coordinators.py runs it): one of 3 spread coordinators SIGKILLed.

At the product's settings (shard lease TTL 6 s, a turn every 1.5 s; workers' heartbeat 5 s),
2 --noop workers given every address, jobs of 32 accounts falling due at 10/s as in 12d/12e. The
victim is not shard 0's owner (that one also answers tokens and enrollments) and holds some of
the accounts' shards (of those, the one holding most). A noop job is leased for milliseconds, so
a burst of jobs of the victim's accounts falls due at the kill, which comes once some are
leased: 12f kill -> every shard it held is held by a survivor (their postroom_shards_owned sum
to 64); 12g kill -> the first job of its shards dispatched by a survivor (its JOB_LEASED), which
adds the workers' reconnect (every fanned-out stream had a leg to the victim; backoff capped at
5 s). The details say how many jobs of its shards were leased at the kill and how each ended:
resumed (finished under the same lease epoch: its worker reconnected in time and the new owner
took the lease over) or re-run (leased again, a new epoch).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from bench import postgres
from bench.common import Publisher, worker_has_noop
from bench.coordinators_rig import (
    SPREAD,
    accounts_per_owner,
    dispatch_delays,
    nearest_rank,
    several,
    shard_owners,
    shards_owned,
)
from coordinator.domain import LEASED_STATUSES
from coordinator.store.shards import DEFAULT_SHARD_COUNT, shard_of
from postroom_cli.cluster import LocalCluster, Peer

KILL_ACCOUNTS = 32
KILL_RATE_PER_S = 10.0
KILL_WINDOW_S = 30.0  # jobs fall due this long; the burst falls due KILL_AFTER_S in
KILL_AFTER_S = 5.0
BURST_PER_ACCOUNT = 8  # of each victim account: more than its slots, so some wait leased
KILL_WHEN_LEASED = 3  # the kill comes once this many of the victim's jobs are leased ...
KILL_LATEST_S = 3.0  # ... or this long after the burst fell due, whatever is leased then
TAKEN_TIMEOUT_S = 60.0
_LEASED = sorted(s.value for s in LEASED_STATUSES)
_LEASED_OF = "SELECT id, lease_epoch FROM jobs WHERE account = ANY($1) AND status = ANY($2)"


def kill_run(workdir: Path) -> dict[str, Any]:
    noop = worker_has_noop()
    with (
        postgres.database("postgresql") as url,
        several(workdir, 3, str(url), sandbox=not noop, placement=SPREAD) as c,
    ):
        extra = ["--log-level", "WARNING", *(["--noop"] if noop else [])]
        names = ["kill-w0", "kill-w1"]
        for name in names:
            c.start_worker(name, concurrency=8, extra=extra)
        c.wait_online(names)
        out = asyncio.run(_kill(c, str(url)))
    return {"coordinators": "3 -> 2", "workers": len(names), **out}


def victim_of(owners: dict[int, str], accounts: list[str]) -> str:
    """The coordinator 12f kills: not shard 0's owner; of the others, the one holding the
    shards of most of `accounts` (ties: the first by name)."""
    per = accounts_per_owner(owners, accounts)
    candidates = {name: n for name, n in per.items() if name not in (owners.get(0), "?")}
    if not candidates:
        raise RuntimeError(f"only shard 0's owner holds shards of {len(accounts)} accounts")
    return max(sorted(candidates), key=lambda name: candidates[name])


def endings(at_kill: dict[str, int], final: dict[str, tuple[str, int]]) -> dict[str, int]:
    """How the jobs leased at the kill (job -> its lease epoch then) ended, given each one's
    final (status, lease epoch): "resumed" (SUCCEEDED under that epoch), "rerun" (a later
    epoch), else its status."""
    out: dict[str, int] = {}
    for job_id, epoch in at_kill.items():
        status, last = final.get(job_id, ("GONE", epoch))
        kind = "rerun" if last > epoch else "resumed" if status == "SUCCEEDED" else status
        out[kind] = out.get(kind, 0) + 1
    return dict(sorted(out.items()))


async def _kill(c: LocalCluster, db_url: str) -> dict[str, Any]:
    accounts = [f"kill-{k}" for k in range(KILL_ACCOUNTS)]
    owners = await shard_owners(db_url)
    victim = c.peers[victim_of(owners, accounts)]
    mine = [
        a for a in accounts if owners[shard_of("sandbox", a, DEFAULT_SHARD_COUNT)] == victim.name
    ]
    survivors = [p for p in c.peers.values() if p is not victim]
    ids, burst, t_burst = await _schedule(c.coordinator_address, accounts, mine)
    total = len(ids) + len(burst)
    conn = await asyncpg.connect(db_url, timeout=5.0)
    try:
        killed_at, dead_at, at_kill = await _kill_in_burst(conn, victim, mine, t_burst)
        taken, first = await asyncio.gather(
            asyncio.to_thread(_wait_taken, survivors),
            _first_lease_after(conn, dead_at, mine),
        )
        taken_at, held = taken
        await _all_succeeded(db_url, total)
        rows = await conn.fetch(
            "SELECT id, status, lease_epoch FROM jobs WHERE id = ANY($1)", list(at_kill)
        )
        final = {str(r["id"]): (str(r["status"]), int(r["lease_epoch"])) for r in rows}
        again = await conn.fetch(
            "SELECT j.account AS account, max(a.at) - min(a.at) AS gap FROM audit_events a "
            "JOIN jobs j ON j.id = a.subject_id WHERE a.action = 'JOB_LEASED' "
            "GROUP BY j.id, j.account HAVING count(*) > 1"
        )
    finally:
        await conn.close()
    delays = await dispatch_delays(db_url)
    after = [d for due, d, a in delays if due >= killed_at and a in mine]
    others = [d for due, d, a in delays if due >= killed_at and a not in mine]
    return {
        "jobs": total,
        "killed": victim.name,
        "victim_shards": sum(1 for owner in owners.values() if owner == victim.name),
        "victim_accounts": len(mine),
        "burst_jobs": len(burst),
        "taken_s": round(taken_at - killed_at, 3),
        "first_dispatch_s": round(first - killed_at, 3),
        "shards_held_after": held,
        "leased_at_kill": len(at_kill),
        "leased_at_kill_ended": endings(at_kill, final),
        # Any job leased twice (of the victim's accounts or the survivors'), and the longest
        # from a job's first lease to its last.
        "leased_again": {
            "victim_accounts": sum(1 for r in again if r["account"] in mine),
            "other_accounts": sum(1 for r in again if r["account"] not in mine),
            "first_to_last_max_s": nearest_rank([float(r["gap"]) for r in again], 1.0),
        },
        "delay_victim_accounts_after_kill_max_s": nearest_rank(after, 1.0),
        "delay_other_accounts_after_kill_max_s": nearest_rank(others, 1.0),
    }


async def _schedule(
    address: str, accounts: list[str], mine: list[str]
) -> tuple[list[str], list[str], float]:
    """The accounts' posts due in turn at KILL_RATE_PER_S from 1 s on, and the burst of the
    victim's accounts due at once KILL_AFTER_S later: (those posts, the burst, its due time)."""
    pubr = Publisher(address, concurrency=16)
    per = int(KILL_RATE_PER_S * KILL_WINDOW_S) // KILL_ACCOUNTS
    groups = [await pubr.approved_posts(per, [f"sandbox:{a}"], text=f"kill {a}") for a in accounts]
    ids = [group[j] for j in range(per) for group in groups]  # the accounts in turn
    burst = [
        post
        for a in mine
        for post in await pubr.approved_posts(BURST_PER_ACCOUNT, [f"sandbox:{a}"], text="burst")
    ]
    t0 = time.time() + 1.0
    t_burst = t0 + KILL_AFTER_S
    await pubr.schedule(ids, lambda i: t0 + i / KILL_RATE_PER_S)
    await pubr.schedule(burst, lambda _i: t_burst)
    await pubr.close()
    return ids, burst, t_burst


async def _kill_in_burst(
    conn: Any, victim: Peer, mine: list[str], t_burst: float
) -> tuple[float, float, dict[str, int]]:
    """SIGKILL the victim once the burst has KILL_WHEN_LEASED of its accounts' jobs leased (or
    KILL_LATEST_S after it fell due): (killed at, dead by, job -> lease epoch of those leased
    then)."""
    await asyncio.sleep(max(0.0, t_burst - time.time()))
    while True:
        n = len(await conn.fetch(_LEASED_OF, mine, _LEASED))
        if n >= KILL_WHEN_LEASED or time.time() > t_burst + KILL_LATEST_S:
            break
        await asyncio.sleep(0.01)
    killed_at = time.time()
    victim.child.kill()
    dead_at = time.time()  # a lease it made before dying may be stamped up to here
    # The victim wrote its last; nobody else may write its shards before they are claimed.
    at_kill = {
        str(r["id"]): int(r["lease_epoch"]) for r in await conn.fetch(_LEASED_OF, mine, _LEASED)
    }
    return killed_at, dead_at, at_kill


async def _all_succeeded(db_url: str, total: int) -> None:
    async with postgres.succeeded_counter(db_url) as succeeded:
        deadline = time.monotonic() + 120
        while await succeeded() < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{total} jobs not all SUCCEEDED in 120 s")
            await asyncio.sleep(0.1)


def _wait_taken(survivors: list[Peer]) -> tuple[float, dict[str, int]]:
    """When the survivors say they hold every shard between them, and what each holds."""
    deadline = time.monotonic() + TAKEN_TIMEOUT_S
    while True:
        held = {p.name: shards_owned(p) for p in survivors}
        if sum(held.values()) == DEFAULT_SHARD_COUNT and min(held.values()) >= 0:
            return time.time(), held
        if time.monotonic() > deadline:
            raise TimeoutError(f"the dead one's shards not taken in {TAKEN_TIMEOUT_S:g} s: {held}")
        time.sleep(0.05)


async def _first_lease_after(conn: Any, since: float, accounts: list[str]) -> float:
    """The first JOB_LEASED after `since` of a job of `accounts` (by a survivor: the victim is
    dead by then)."""
    deadline = time.monotonic() + TAKEN_TIMEOUT_S
    while True:
        first = await conn.fetchval(
            "SELECT min(a.at) FROM audit_events a JOIN jobs j ON j.id = a.subject_id "
            "WHERE a.action = 'JOB_LEASED' AND a.at > $1 AND j.account = ANY($2)",
            since,
            accounts,
        )
        if first is not None:
            return float(first)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no job of the dead one's shards leased in {TAKEN_TIMEOUT_S:g} s")
        await asyncio.sleep(0.05)
