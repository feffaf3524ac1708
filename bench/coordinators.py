"""Item 12, placement "spread" on PostgreSQL (`--placement spread`: every live coordinator owns a
fair share of the shards and serves those; a worker's stream is fanned out to every owner), the
coordinators started by bench/coordinators_rig.py:
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
- 12f/12g one of 3 spread coordinators SIGKILLed at the same settings (bench/coordinators_kill.py):
  kill -> every shard it held is held by a survivor; kill -> the first job of its shards
  dispatched by a survivor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from bench import postgres
from bench.common import Children, Context, Figure, Publisher, cpu_seconds, say, worker_has_noop
from bench.coordinators_kill import kill_run
from bench.coordinators_rig import (
    SPREAD,
    accounts_per_owner,
    dispatch_delays,
    fair,
    nearest_rank,
    placement_args,
    several,
    shard_owners,
    wait_fair,
)
from bench.throughput import TARGETS_PER_POST, _setup_posts, _start_workers
from coordinator.cluster.member import DEFAULT_OWNERSHIP_TTL_S, DEFAULT_OWNERSHIP_TURN_S
from coordinator.store.shards import DEFAULT_SHARD_COUNT, shard_of
from postroom_cli.cluster import LocalCluster

# ---- 12a..12c drain ------------------------------------------------------------------------


def spread_drain_run(workdir: Path, coordinators: int, n_jobs: int) -> dict[str, Any]:
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
        per_owner = accounts_per_owner(asyncio.run(shard_owners(url)), accounts)
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
    pubr, ids, prep_s = await _setup_posts(c.coordinator_address, n_posts)
    n_jobs = n_posts * TARGETS_PER_POST
    t_due = time.time() + 1.0 + 2 * prep_s / 3  # after the last schedule call (as item 1)
    await pubr.schedule(ids, lambda _i: t_due)
    slack = t_due - time.time()
    pids = {p.name: p.child.pid for p in c.peers.values()}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    async with postgres.succeeded_counter(c.db_url) as succeeded:
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
    await asyncio.to_thread(c.start_peer, "coord-3", placement_args(SPREAD))
    listening_at = time.time()
    held = await asyncio.to_thread(wait_fair, c)
    fair_at = time.time()
    async with postgres.succeeded_counter(db_url) as succeeded:
        deadline = time.monotonic() + 120
        while await succeeded() < len(ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids)} jobs not all SUCCEEDED in 120 s")
            await asyncio.sleep(0.1)
    delays = await dispatch_delays(db_url)
    owners = await shard_owners(db_url)
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
        "delay_before_join_p50_s": nearest_rank(before, 0.5),
        "delay_before_join_max_s": nearest_rank(before, 1.0),
        "delay_after_join_p50_s": nearest_rank(after, 0.5),
        "delay_after_join_max_s": nearest_rank(after, 1.0),
        "delay_moved_shards_max_s": nearest_rank(moved, 1.0),
    }


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
