"""Several coordinators on one PostgreSQL, as the bench runs them (item 9's 9i..9m, item 12).

`several(workdir, n, db_url)` starts the sandbox if asked and `n` coordinators on the database
(LocalCluster.start_coordinators). Placement "one" (9i..9m): one becomes active, the others stand
by, and the cluster's own calls go to the ACTIVE one (`c.coordinator` is its process), so the
figures measure the coordinators, not the extra hop of a standby's forwarding. Placement "spread"
(item 12): every coordinator serves; it waits until each holds its fair share of the 64 shards
and points the cluster's calls at coord-1 (which routes each to the coordinator that must execute
it, as any would). Workers started on it are given every address.

Item 12, placement "spread" (`--placement spread`: every live coordinator owns a fair share of
the shards and serves those; a worker's stream is fanned out to every owner):
- 12a/12b/12c drain throughput as 9b/9i/9j (4 real --noop workers, 64 slots each, 5,000 jobs due
  at one instant, posts to the same 5 accounts) with 1, 2 and 3 spread coordinators. The 5
  accounts are 5 shards: how many of them each coordinator owns is in the run's details, and so
  is every coordinator's CPU per job. Operators' calls go to coord-1 (each post command is routed
  to the post's home; its other shards' jobs become post tasks for their owners).
- 12d/12e a coordinator joins 2 spread ones at the product's settings (shard lease TTL 6 s, a
  turn every 1.5 s; workers' heartbeat 5 s), 2 --noop workers given the first two addresses,
  jobs of 32 accounts falling due at 10/s: 12d the third one started -> every coordinator holds
  its fair share (the others handed over their surplus: stopped dispatching it, let it go once
  none of its jobs was leased, released it; the joiner claimed it); 12e the worst dispatch delay
  (JOB_LEASED - due) of the jobs due from the join on, which adds the workers' streams being
  re-established (a fanned-out stream ends when the owners change; noticed at a heartbeat).
- 12f/12g one of 3 spread coordinators SIGKILLed at the same settings, 2 --noop workers given
  every address, jobs of 32 accounts falling due at 10/s as in 12d/12e. The victim is not shard
  0's owner (that one also answers tokens and enrollments) and holds some of the accounts'
  shards (of those, the one holding most). A noop job is leased for milliseconds, so a burst of
  jobs of the victim's accounts falls due at the kill, which comes once some are leased: 12f
  kill -> every shard it held is held by a survivor (their postroom_shards_owned sum to 64);
  12g kill -> the first job of its shards dispatched by a survivor (its JOB_LEASED), which adds
  the workers' reconnect (every fanned-out stream had a leg to the victim; backoff capped at
  5 s). The details say how many jobs of its shards were leased at the kill and how each ended:
  resumed (finished under the same lease epoch: its worker reconnected in time and the new owner
  took the lease over) or re-run (leased again, a new epoch).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from bench.common import (
    PRODUCT_HEARTBEAT_S,
    PRODUCT_LEASE_TTL_S,
    Children,
    Context,
    Figure,
    Publisher,
    cpu_seconds,
    say,
    worker_has_noop,
)
from bench.throughput import TARGETS_PER_POST, _setup_posts, _start_workers
from coordinator.cluster.member import DEFAULT_OWNERSHIP_TTL_S, DEFAULT_OWNERSHIP_TURN_S
from coordinator.domain import LEASED_STATUSES
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
        c.start_coordinators(n, _placement_args(placement))
        if placement == SPREAD:
            wait_fair(c)
            serving = c.peers["coord-1"]
        else:
            serving = c.wait_active()
        c.coordinator_address, c.metrics_url = serving.address, serving.metrics_url
        c.coordinator = serving.child  # what the bench watches (its CPU, its pid)
        yield c


def _placement_args(placement: str) -> list[str]:
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


async def _owners(db_url: str) -> dict[int, str]:
    """shard -> its holder, as the database has it."""
    conn = await asyncpg.connect(db_url, timeout=5.0)
    try:
        rows = await conn.fetch("SELECT shard, owner FROM shard_owners")
    finally:
        await conn.close()
    return {int(r["shard"]): str(r["owner"]) for r in rows}


def _accounts_per_owner(owners: dict[int, str], accounts: list[str]) -> dict[str, int]:
    per: dict[str, int] = {}
    for account in accounts:
        owner = owners.get(shard_of("sandbox", account, DEFAULT_SHARD_COUNT), "?")
        per[owner] = per.get(owner, 0) + 1
    return dict(sorted(per.items()))


# ---- 12a..12c drain ------------------------------------------------------------------------


def spread_drain_run(workdir: Path, coordinators: int, n_jobs: int) -> dict[str, Any]:
    from bench import postgres  # it imports this module: not at the top

    noop = worker_has_noop()
    n_posts = max(1, n_jobs // TARGETS_PER_POST)
    accounts = [f"acct-{k}" for k in range(TARGETS_PER_POST)]  # throughput._setup_posts's
    with contextlib.ExitStack() as stack:
        url = str(stack.enter_context(postgres.database("postgresql")))
        c = stack.enter_context(
            several(workdir, coordinators, url, sandbox=not noop, placement=SPREAD)
        )
        kids = stack.enter_context(Children(workdir))
        workers = _start_workers(c, kids, "worker", noop)
        held = fair(c)
        per_owner = _accounts_per_owner(asyncio.run(_owners(url)), accounts)
        out = asyncio.run(_drain(c, n_posts))
    return {
        "placement": SPREAD,
        "coordinators": coordinators,
        "workers": len(workers),
        "shards_held": held,
        "accounts_per_coordinator": per_owner,
        **out,
    }


async def _drain(c: LocalCluster, n_posts: int) -> dict[str, Any]:
    """postgres._drain with every coordinator's CPU (all of them serve)."""
    from bench.postgres import succeeded_counter

    pubr, ids, prep_s = await _setup_posts(c.coordinator_address, n_posts)
    n_jobs = n_posts * TARGETS_PER_POST
    t_due = time.time() + 1.0 + 2 * prep_s / 3  # after the last schedule call (as item 1)
    await pubr.schedule(ids, lambda _i: t_due)
    slack = t_due - time.time()
    pids = {p.name: p.child.pid for p in c.peers.values()}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    async with succeeded_counter(c.db_url) as succeeded:
        deadline = time.monotonic() + 600
        while await succeeded() < n_jobs:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n_jobs} jobs not all SUCCEEDED in 600 s")
            await asyncio.sleep(0.05)
    used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    leased = await pubr.audit_times("JOB_LEASED")
    done = await pubr.audit_times("JOB_SUCCEEDED")
    await pubr.close()
    seconds = max(done) - min(leased)
    return {
        "jobs": n_jobs,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(n_jobs / seconds, 1),
        "schedule_slack_s": round(slack, 2),
        # From the schedule calls' end to the last job: every coordinator's CPU per job.
        "coordinators_cpu_ms_per_job": round(1000 * sum(used.values()) / n_jobs, 3),
        "cpu_ms_per_job": {name: round(1000 * u / n_jobs, 3) for name, u in used.items()},
    }


# ---- 12d/12e a third coordinator joins -----------------------------------------------------

JOIN_ACCOUNTS = 32  # enough accounts that the joiner surely gets some of their shards
JOIN_RATE_PER_S = 10.0
JOIN_WINDOW_S = 30.0  # jobs fall due this long; the third coordinator starts JOIN_AFTER_S in
JOIN_AFTER_S = 5.0


def join_run(workdir: Path) -> dict[str, Any]:
    from bench import postgres

    noop = worker_has_noop()
    with (
        postgres.database("postgresql") as url,
        several(workdir, 2, str(url), sandbox=not noop, placement=SPREAD) as c,
    ):
        extra = ["--log-level", "WARNING", *(["--noop"] if noop else [])]
        names = ["join-w0", "join-w1"]
        for name in names:
            c.start_worker(name, concurrency=8, extra=extra)
        c.wait_online(names)
        out = asyncio.run(_join(c, str(url)))
    return {"coordinators": "2 -> 3", "workers": len(names), **out}


async def _join(c: LocalCluster, db_url: str) -> dict[str, Any]:
    from bench.postgres import succeeded_counter

    pubr = Publisher(c.coordinator_address, concurrency=16)
    per = int(JOIN_RATE_PER_S * JOIN_WINDOW_S) // JOIN_ACCOUNTS
    groups = [
        await pubr.approved_posts(per, [f"sandbox:join-{k}"], text=f"join {k}")
        for k in range(JOIN_ACCOUNTS)
    ]
    ids = [group[j] for j in range(per) for group in groups]  # the accounts in turn
    t0 = time.time() + 1.0
    await pubr.schedule(ids, lambda i: t0 + i / JOIN_RATE_PER_S)
    await pubr.close()
    await asyncio.sleep(max(0.0, t0 + JOIN_AFTER_S - time.time()))
    joined_at = time.time()
    await asyncio.to_thread(c.start_peer, "coord-3", _placement_args(SPREAD))
    listening_at = time.time()
    held = await asyncio.to_thread(wait_fair, c)
    fair_at = time.time()
    async with succeeded_counter(db_url) as succeeded:
        deadline = time.monotonic() + 120
        while await succeeded() < len(ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids)} jobs not all SUCCEEDED in 120 s")
            await asyncio.sleep(0.1)
    delays = await _dispatch_delays(db_url)
    owners = await _owners(db_url)
    accounts = [f"join-{k}" for k in range(JOIN_ACCOUNTS)]
    joiner = {
        a for a in accounts if owners.get(shard_of("sandbox", a, DEFAULT_SHARD_COUNT)) == "coord-3"
    }
    before = [d for due, d, _ in delays if due < joined_at]
    after = [d for due, d, _ in delays if due >= joined_at]
    moved = [d for due, d, account in delays if due >= joined_at and account in joiner]
    return {
        "jobs": len(ids),
        "listening_s": round(listening_at - joined_at, 3),
        "fair_s": round(fair_at - joined_at, 3),
        "shards_held": held,
        "joiner_accounts": len(joiner),
        "delay_before_join_p50_s": _q(before, 0.5),
        "delay_before_join_max_s": _q(before, 1.0),
        "delay_after_join_p50_s": _q(after, 0.5),
        "delay_after_join_max_s": _q(after, 1.0),
        "delay_moved_shards_max_s": _q(moved, 1.0),
    }


async def _dispatch_delays(db_url: str) -> list[tuple[float, float, str]]:
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


def _q(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of `values`, rounded; None if there are none."""
    if not values:
        return None
    ranked = sorted(values)
    return round(ranked[min(len(ranked) - 1, int(q * len(ranked)))], 3)


# ---- 12f/12g a spread coordinator SIGKILLed ------------------------------------------------

KILL_ACCOUNTS = 32
KILL_RATE_PER_S = 10.0
KILL_WINDOW_S = 30.0  # jobs fall due this long; the burst falls due KILL_AFTER_S in
KILL_AFTER_S = 5.0
BURST_PER_ACCOUNT = 8  # of each victim account: more than its slots, so some wait leased
KILL_WHEN_LEASED = 3  # the kill comes once this many of the victim's jobs are leased ...
KILL_LATEST_S = 3.0  # ... or this long after the burst fell due, whatever is leased then
TAKEN_TIMEOUT_S = 60.0
_LEASED = sorted(s.value for s in LEASED_STATUSES)


def kill_run(workdir: Path) -> dict[str, Any]:
    from bench import postgres

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
    per = _accounts_per_owner(owners, accounts)
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
    from bench.postgres import succeeded_counter

    accounts = [f"kill-{k}" for k in range(KILL_ACCOUNTS)]
    owners = await _owners(db_url)
    victim = c.peers[victim_of(owners, accounts)]
    mine = [
        a for a in accounts if owners[shard_of("sandbox", a, DEFAULT_SHARD_COUNT)] == victim.name
    ]
    survivors = [p for p in c.peers.values() if p is not victim]
    pubr = Publisher(c.coordinator_address, concurrency=16)
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
    conn = await asyncpg.connect(db_url, timeout=5.0)
    try:
        await asyncio.sleep(max(0.0, t_burst - time.time()))
        leased = "SELECT id, lease_epoch FROM jobs WHERE account = ANY($1) AND status = ANY($2)"
        while True:
            n = len(await conn.fetch(leased, mine, _LEASED))
            if n >= KILL_WHEN_LEASED or time.time() > t_burst + KILL_LATEST_S:
                break
            await asyncio.sleep(0.01)
        killed_at = time.time()
        victim.child.kill()
        dead_at = time.time()  # a lease it made before dying may be stamped up to here
        # The victim wrote its last; nobody else may write its shards before they are claimed.
        at_kill = {
            str(r["id"]): int(r["lease_epoch"]) for r in await conn.fetch(leased, mine, _LEASED)
        }
        taken, first = await asyncio.gather(
            asyncio.to_thread(_wait_taken, survivors),
            _first_lease_after(conn, dead_at, mine),
        )
        taken_at, held = taken
        async with succeeded_counter(db_url) as succeeded:
            total = len(ids) + len(burst)
            deadline = time.monotonic() + 120
            while await succeeded() < total:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{total} jobs not all SUCCEEDED in 120 s")
                await asyncio.sleep(0.1)
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
    delays = await _dispatch_delays(db_url)
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
            "first_to_last_max_s": _q([float(r["gap"]) for r in again], 1.0),
        },
        "delay_victim_accounts_after_kill_max_s": _q(after, 1.0),
        "delay_other_accounts_after_kill_max_s": _q(others, 1.0),
    }


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


# ---- the item ------------------------------------------------------------------------------


def _figures() -> dict[str, Figure]:
    drain = "drain throughput, 4 real workers, PostgreSQL, placement spread"
    joined = "a 3rd spread coordinator joins 2 (product settings):"
    killed = "1 of 3 spread coordinators SIGKILLed (product settings): kill ->"
    bound = DEFAULT_OWNERSHIP_TTL_S + DEFAULT_OWNERSHIP_TURN_S
    return {
        "drain1": Figure("12a", "spread_drain_1", f"{drain}, 1 coordinator", "jobs/s",
                         target_note="expect 9b", decimals=0),
        "drain2": Figure("12b", "spread_drain_2", f"{drain}, 2 coordinators", "jobs/s",
                         target_note="compare 9i (placement one)", decimals=0),
        "drain3": Figure("12c", "spread_drain_3", f"{drain}, 3 coordinators", "jobs/s",
                         target_note="compare 9j (placement one)", decimals=0),
        "fair": Figure("12d", "spread_join_fair", f"{joined} started -> every share held", "s",
                       target_note="start-up + hand-off (<= 30 s with jobs leased) + turns",
                       decimals=2),
        "delay": Figure("12e", "spread_join_dispatch_delay",
                        f"{joined} worst dispatch delay of jobs due from then on", "s",
                        target_note="+ workers' streams re-established (heartbeat 5 s)",
                        decimals=2),
        "taken": Figure("12f", "spread_kill_taken",
                        f"{killed} every shard it held held by a survivor", "s", op="<=",
                        target=bound, target_note=f"shard TTL {DEFAULT_OWNERSHIP_TTL_S:g} s + one "
                        f"turn {DEFAULT_OWNERSHIP_TURN_S:g} s (+ its load)", decimals=2),
        "first": Figure("12g", "spread_kill_first_dispatch",
                        f"{killed} first job of its shards dispatched by a survivor", "s",
                        target_note="12f + the workers' reconnect (backoff capped at 5 s)",
                        decimals=2),
    }  # fmt: skip


def run(ctx: Context) -> list[Figure]:
    from bench import postgres

    why = postgres.unreachable()
    if why:
        say(
            f"  item 12 skipped: no PostgreSQL at {postgres.admin_url()} ({why}); start it "
            f"(pg_ctlcluster ... main start) or point {postgres.ENV_ADMIN_URL} at one"
        )
        return []
    n_jobs = 1000 if ctx.quick else 5000
    figs = _figures()
    for r in range(ctx.runs):
        for n in (1, 2, 3):
            res = spread_drain_run(ctx.workdir(f"spread-drain-{n}c-{r}"), n, n_jobs)
            say(
                f"  item 12 spread, {n} coordinator(s), run {r + 1}: drain {res['jobs_per_s']} "
                f"jobs/s (coordinators' CPU {res['coordinators_cpu_ms_per_job']} ms/job: "
                f"{res['cpu_ms_per_job']}; accounts per coordinator "
                f"{res['accounts_per_coordinator']})"
            )
            figs[f"drain{n}"].add(res["jobs_per_s"], res)
        res = join_run(ctx.workdir(f"spread-join-{r}"))
        say(
            f"  item 12 join run {r + 1}: shares {res['shards_held']} {res['fair_s']} s after "
            f"the start; dispatch delay after the join p50 {res['delay_after_join_p50_s']} s, "
            f"max {res['delay_after_join_max_s']} s (before: max "
            f"{res['delay_before_join_max_s']} s)"
        )
        figs["fair"].add(res["fair_s"], res)
        figs["delay"].add(res["delay_after_join_max_s"], res)
        res = kill_run(ctx.workdir(f"spread-kill-{r}"))
        say(
            f"  item 12 kill run {r + 1}: {res['killed']} killed ({res['victim_shards']} shards, "
            f"{res['victim_accounts']} accounts), its shards held by the survivors after "
            f"{res['taken_s']} s ({res['shards_held_after']}), first of its jobs dispatched "
            f"after {res['first_dispatch_s']} s; {res['leased_at_kill']} of its jobs leased at "
            f"the kill: {res['leased_at_kill_ended']}"
        )
        figs["taken"].add(res["taken_s"], res)
        figs["first"].add(res["first_dispatch_s"], res)
    return list(figs.values())
