"""Item 9: the coordinator on PostgreSQL next to SQLite, same workers, same jobs.

- 9a/9b drain throughput: item 1's set-up (4 real worker processes, --noop, 64 slots each), N
  jobs due at one instant; jobs/s from the first JOB_LEASED to the last JOB_SUCCEEDED.
- 9c/9d dispatch latency p99: item 2 as it is (jobs due at 200/s, idle lean sessions).
- 9e/9f restart: a `bench.wire hold` session holds K leased jobs; the coordinator and that session
  are SIGKILLed together (this worker does not come back), the coordinator is started again on
  the same database and port, and a rescuer session waits. 9e/9f: kill -> the new coordinator
  ready; 9g/9h: kill -> the rescuer holds all K jobs again (a new epoch each). By design that is
  the restart, then the restart grace (one lease TTL, 3 s here) for workers to come back and
  claim their jobs, then the expiry margin (1 s).

Several coordinators on one PostgreSQL (bench/coordinators_rig.py; phase 1: one active, the
others standing by, ready to take over):
- 9i/9j drain throughput as 9b (its 1-coordinator point) with 2 and 3 coordinators: the same
  workers (given every address) and jobs. Only the active one serves in phase 1, so the curve is
  expected flat; what the standbys cost is a heartbeat and a renew on PostgreSQL per turn.
- 9k dispatch latency p99 as 9d with 3 coordinators.
- 9l/9m takeover at the product's settings (shard lease TTL 6 s, a turn every 1.5 s; workers'
  heartbeat 5 s, lease TTL 15 s): 3 coordinators, 2 --noop workers, jobs falling due at 10/s;
  the active one is SIGKILLed: 9l kill -> another says SERVING (health), 9m kill -> the first job
  dispatched by it (its JOB_LEASED), which adds the workers' reconnect (their backoff is capped
  at 5 s).

PostgreSQL: the server of POSTROOM_BENCH_PG (an admin URL; default the project machine's
postgresql://postgres@127.0.0.1:5432/postgres). Each run makes a database postroom_bench_<hex>
and drops it. Without a server the item says so in one line and measures nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import grpc

from bench import dispatch
from bench.common import (
    ChildProcess,
    Children,
    Context,
    Figure,
    Publisher,
    cluster,
    count_jobs,
    cpu_seconds,
    say,
    worker_has_noop,
)
from bench.coordinators_rig import several
from bench.throughput import TARGETS_PER_POST, _setup_posts, _start_workers
from bench.wire import LeanSession
from postroom_cli.cluster import LocalCluster

ENV_ADMIN_URL = "POSTROOM_BENCH_PG"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT_S = 5.0
HEARTBEAT_S = 1.0
LEASE_TTL_S = 3.0
EXPIRY_MARGIN_S = 1.0
Store = Literal["sqlite", "postgresql"]
STORES: tuple[Store, ...] = ("sqlite", "postgresql")


def admin_url() -> str:
    return os.environ.get(ENV_ADMIN_URL, DEFAULT_ADMIN_URL)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(admin_url(), timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def unreachable() -> str:
    """Why the PostgreSQL server cannot be used; "" when it can."""
    try:
        asyncio.run(_admin("SELECT 1"))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


@contextlib.contextmanager
def database(store: Store) -> Iterator[str | None]:
    """None for SQLite (the cluster's file); for PostgreSQL the URL of a new database, dropped
    on exit."""
    if store == "sqlite":
        yield None
        return
    name = f"postroom_bench_{secrets.token_hex(6)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield urlsplit(admin_url())._replace(path=f"/{name}").geturl()
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.asynccontextmanager
async def succeeded_counter(db_url: str) -> AsyncIterator[Callable[[], Awaitable[int]]]:
    """Counts SUCCEEDED jobs straight from the database (one connection kept open: a
    PostgreSQL connection per poll would cost the server a process each time)."""
    if db_url.startswith("sqlite:"):

        async def from_file() -> int:
            return count_jobs(db_url, "SUCCEEDED")

        yield from_file
        return
    conn = await asyncpg.connect(db_url, timeout=CONNECT_TIMEOUT_S)

    async def from_server() -> int:
        return int(await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'SUCCEEDED'"))

    try:
        yield from_server
    finally:
        await conn.close()


# ---- 9a/9b drain throughput -----------------------------------------------------------------


def drain_run(workdir: Path, store: Store, n_jobs: int, coordinators: int = 1) -> dict[str, Any]:
    noop = worker_has_noop()
    n_posts = max(1, n_jobs // TARGETS_PER_POST)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(database(store))
        if url is not None and coordinators > 1:
            c = stack.enter_context(several(workdir, coordinators, url, sandbox=not noop))
        else:
            c = stack.enter_context(cluster(workdir, sandbox=not noop, db_url=url))
        kids = stack.enter_context(Children(workdir))
        workers = _start_workers(c, kids, "worker", noop)
        out = asyncio.run(_drain(c, n_posts))
    return {"store": store, "coordinators": coordinators, "workers": len(workers), **out}


async def _drain(c: LocalCluster, n_posts: int) -> dict[str, Any]:
    pubr, ids, prep_s = await _setup_posts(c.coordinator_address, n_posts)
    n_jobs = n_posts * TARGETS_PER_POST
    t_due = time.time() + 1.0 + 2 * prep_s / 3  # after the last schedule call (as item 1)
    await pubr.schedule(ids, lambda _i: t_due)
    slack = t_due - time.time()
    cpu = _CoordinatorCpu(c)  # from here to the last job: the drain itself
    async with succeeded_counter(c.db_url) as succeeded:
        deadline = time.monotonic() + 600
        while await succeeded() < n_jobs:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n_jobs} jobs not all SUCCEEDED in 600 s")
            await asyncio.sleep(0.05)
    active_cpu_s, standby_cpu_pct = cpu.spent()
    leased = await pubr.audit_times("JOB_LEASED")
    done = await pubr.audit_times("JOB_SUCCEEDED")
    await pubr.close()
    seconds = max(done) - min(leased)
    return {
        "jobs": n_jobs,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(n_jobs / seconds, 1),
        "schedule_slack_s": round(slack, 2),
        # Less bent by the machine's other work than jobs/s: the active coordinator's CPU per
        # job, and what a standby burns meanwhile (% of one core).
        "coordinator_cpu_ms_per_job": round(1000 * active_cpu_s / n_jobs, 3),
        "standby_cpu_pct": standby_cpu_pct,
    }


class _CoordinatorCpu:
    """CPU seconds of the cluster's coordinator (the active one) and of its standbys."""

    def __init__(self, c: LocalCluster) -> None:
        assert c.coordinator is not None
        self.active = c.coordinator.pid
        self.standbys = [p.child.pid for p in c.peers.values() if p.child.pid != self.active]
        self.started = time.monotonic()
        self.at_start = {pid: cpu_seconds(pid) for pid in [self.active, *self.standbys]}

    def spent(self) -> tuple[float, float | None]:
        wall = time.monotonic() - self.started
        used = {pid: cpu_seconds(pid) - before for pid, before in self.at_start.items()}
        standby = [used[pid] for pid in self.standbys]
        pct = round(100 * max(standby) / wall, 2) if standby else None
        return used[self.active], pct


# ---- 9e..9h restart on the same database ----------------------------------------------------


def restart_run(workdir: Path, store: Store, k_jobs: int) -> dict[str, Any]:
    with (
        database(store) as url,
        cluster(workdir, heartbeat_s=HEARTBEAT_S, lease_ttl_s=LEASE_TTL_S, db_url=url) as c,
        Children(workdir) as kids,
    ):
        address = c.coordinator_address
        args = ["--address", address, "--device-id", "victim", "--slots", str(k_jobs)]
        victim = kids.wire("victim", "hold", *args)
        victim.wait_line("ready")
        out = asyncio.run(_restart(c, victim, k_jobs))
    return {"store": store, "jobs": k_jobs, "lease_ttl_s": LEASE_TTL_S, **out}


async def _restart(c: LocalCluster, victim: ChildProcess, k_jobs: int) -> dict[str, Any]:
    pubr = Publisher(c.coordinator_address)
    ids = await pubr.approved_posts(k_jobs, ["sandbox:restart"], text="restart")
    await pubr.schedule(ids, lambda _i: None)
    await pubr.close()
    held = set()
    for _ in range(k_jobs):
        held.add((await asyncio.to_thread(victim.wait_line, "held", 30.0)).split()[1])
    assert c.coordinator is not None
    killed_at = time.time()
    victim.signal(signal.SIGKILL)
    c.coordinator.kill()
    await asyncio.to_thread(c.start_coordinator)  # same database, same port
    ready_at = time.time()
    channel = grpc.aio.insecure_channel(c.coordinator_address)
    again: dict[str, float] = {}
    everything = asyncio.get_running_loop().create_future()

    def on_message(s: LeanSession, msg: Any, at: float) -> None:
        if msg.HasField("assign") and msg.assign.job_id in held:
            again.setdefault(msg.assign.job_id, at)
            if len(again) == len(held) and not everything.done():
                everything.set_result(None)

    rescuer = LeanSession(channel, "rescuer", slots=k_jobs, on_message=on_message)
    await rescuer.start()
    async with asyncio.timeout(LEASE_TTL_S + EXPIRY_MARGIN_S + 60):
        await everything
    await rescuer.close()
    await channel.close(None)
    return {
        "restart_s": round(ready_at - killed_at, 3),
        "recovered_s": round(max(again.values()) - killed_at, 3),
    }


# ---- 9l/9m takeover after a SIGKILL of the active coordinator --------------------------------

TAKEOVER_RATE_PER_S = 10.0
TAKEOVER_WINDOW_S = 40.0  # jobs fall due this long; the kill comes KILL_AFTER_S in
KILL_AFTER_S = 5.0


def takeover_run(workdir: Path, coordinators: int = 3) -> dict[str, Any]:
    noop = worker_has_noop()
    with (
        database("postgresql") as url,
        several(workdir, coordinators, str(url), sandbox=not noop) as c,
    ):
        extra = ["--log-level", "WARNING", *(["--noop"] if noop else [])]
        names = ["takeover-w0", "takeover-w1"]
        for name in names:
            c.start_worker(name, concurrency=8, extra=extra)
        c.wait_online(names)
        out = asyncio.run(_takeover(c))
    return {"coordinators": coordinators, "workers": len(names), **out}


async def _takeover(c: LocalCluster) -> dict[str, Any]:
    first = c.wait_active()
    pubr = Publisher(first.address)
    n = int(TAKEOVER_RATE_PER_S * TAKEOVER_WINDOW_S)
    ids = await pubr.approved_posts(n, ["sandbox:takeover"], text="takeover")
    t0 = time.time() + 1.0
    await pubr.schedule(ids, lambda i: t0 + i / TAKEOVER_RATE_PER_S)
    await pubr.close()
    await asyncio.sleep(max(0.0, t0 + KILL_AFTER_S - time.time()))
    killed_at = time.time()
    first.child.kill()
    second = await asyncio.to_thread(c.wait_active, 60.0)
    active_at = time.time()
    reader = Publisher(second.address)
    leased_after: list[float] = []
    deadline = time.monotonic() + 60
    while not leased_after and time.monotonic() < deadline:
        leased_after = [t for t in await reader.audit_times("JOB_LEASED") if t > killed_at]
        await asyncio.sleep(0.1)
    await reader.close()
    if not leased_after:
        raise TimeoutError("no job dispatched by the new active coordinator within 60 s")
    return {
        "killed": first.name,
        "took_over": second.name,
        "active_s": round(active_at - killed_at, 3),
        "first_dispatch_s": round(min(leased_after) - killed_at, 3),
    }


# ---- the item -------------------------------------------------------------------------------


def _figures() -> dict[str, tuple[Figure, Figure]]:
    def pair(key: str, items: str, name: str, unit: str, **kw: Any) -> tuple[Figure, Figure]:
        first, second = items[0], items[1]
        return (
            Figure(f"9{first}", f"{key}_sqlite", f"{name}, SQLite", unit, **kw),
            Figure(f"9{second}", f"{key}_postgresql", f"{name}, PostgreSQL", unit, **kw),
        )

    bound = LEASE_TTL_S + EXPIRY_MARGIN_S
    return {
        "drain": pair("drain", "ab", "drain throughput, 4 real workers", "jobs/s", decimals=0),
        "p99": pair(
            "dispatch_p99",
            "cd",
            "dispatch latency p99, 200 jobs/s due",
            "ms",
            op="<=",
            target=dispatch.TARGET_P99_MS,
            decimals=2,
        ),
        "restart": pair(
            "restart", "ef", "coordinator SIGKILLed: kill -> restarted and ready", "s", decimals=2
        ),
        "recovered": pair(
            "restart_recovered",
            "gh",
            "coordinator and its worker SIGKILLed: kill -> every job leased again",
            "s",
            target_note=f"restart + grace (TTL {LEASE_TTL_S:g} s) + margin = restart + {bound:g} s",
            decimals=2,
        ),
    }


PRODUCT_OWNERSHIP_TTL_S = 6.0  # coordinator/cluster/member.py DEFAULT_OWNERSHIP_TTL_S
PRODUCT_OWNERSHIP_TURN_S = PRODUCT_OWNERSHIP_TTL_S / 4


def _cluster_figures() -> dict[str, Figure]:
    drain = "drain throughput, 4 real workers, PostgreSQL"
    killed = "active coordinator SIGKILLed (3 on PostgreSQL, product settings): kill ->"
    bound = PRODUCT_OWNERSHIP_TTL_S + PRODUCT_OWNERSHIP_TURN_S
    return {
        "drain2": Figure("9i", "drain_postgresql_2", f"{drain}, 2 coordinators", "jobs/s",
                         target_note="phase 1: one active; expect 9b", decimals=0),
        "drain3": Figure("9j", "drain_postgresql_3", f"{drain}, 3 coordinators", "jobs/s",
                         target_note="phase 1: one active; expect 9b", decimals=0),
        "p99_3": Figure("9k", "dispatch_p99_postgresql_3",
                        "dispatch latency p99, 200 jobs/s due, PostgreSQL, 3 coordinators", "ms",
                        op="<=", target=dispatch.TARGET_P99_MS, decimals=2),
        "active": Figure("9l", "takeover_active", f"{killed} another one active", "s",
                         op="<=", target=bound,
                         target_note=f"shard TTL {PRODUCT_OWNERSHIP_TTL_S:g} s + one turn "
                         f"{PRODUCT_OWNERSHIP_TURN_S:g} s (+ its load)", decimals=2),
        "first": Figure("9m", "takeover_first_dispatch", f"{killed} first job dispatched by it",
                        "s", target_note="9l + the workers' reconnect (backoff capped at 5 s)",
                        decimals=2),
    }  # fmt: skip


def _run_cluster(
    ctx: Context, figs: dict[str, Figure], r: int, n_jobs: int, seconds: float
) -> None:
    """One run of 9i..9m."""
    for n, key in ((2, "drain2"), (3, "drain3")):
        res = drain_run(ctx.workdir(f"pg-drain-{n}c-{r}"), "postgresql", n_jobs, coordinators=n)
        say(
            f"  item 9 postgresql, {n} coordinators, run {r + 1}: drain {res['jobs_per_s']} "
            f"jobs/s (active CPU {res['coordinator_cpu_ms_per_job']} ms/job, a standby "
            f"{res['standby_cpu_pct']} % of a core)"
        )
        figs[key].add(res["jobs_per_s"], res)
    with database("postgresql") as url:
        res = dispatch.one_run(ctx.workdir(f"pg-dispatch-3c-{r}"), seconds, url, coordinators=3)
    say(f"  item 9 postgresql, 3 coordinators, run {r + 1}: dispatch p99 {res['p99_ms']} ms")
    figs["p99_3"].add(res["p99_ms"], res)
    res = takeover_run(ctx.workdir(f"pg-takeover-{r}"))
    say(
        f"  item 9 takeover run {r + 1}: {res['killed']} killed, {res['took_over']} active "
        f"after {res['active_s']} s, first job dispatched after {res['first_dispatch_s']} s"
    )
    figs["active"].add(res["active_s"], res)
    figs["first"].add(res["first_dispatch_s"], res)


def run(ctx: Context) -> list[Figure]:
    why = unreachable()
    if why:
        say(
            f"  item 9 skipped: no PostgreSQL at {admin_url()} ({why}); start it "
            f"(pg_ctlcluster ... main start) or point {ENV_ADMIN_URL} at one"
        )
        return []
    n_jobs = 1000 if ctx.quick else 5000
    seconds = 3.0 if ctx.quick else 15.0
    k_jobs = 20 if ctx.quick else 100
    figs = _figures()
    several_figs = _cluster_figures()
    for r in range(ctx.runs):
        for i, store in enumerate(STORES):
            res = drain_run(ctx.workdir(f"pg-drain-{store}-{r}"), store, n_jobs)
            say(
                f"  item 9 {store} run {r + 1}: drain {res['jobs_per_s']} jobs/s "
                f"(coordinator CPU {res['coordinator_cpu_ms_per_job']} ms/job)"
            )
            figs["drain"][i].add(res["jobs_per_s"], res)
            with database(store) as url:
                res = dispatch.one_run(ctx.workdir(f"pg-dispatch-{store}-{r}"), seconds, url)
            say(f"  item 9 {store} run {r + 1}: dispatch p99 {res['p99_ms']} ms")
            figs["p99"][i].add(res["p99_ms"], res)
            res = restart_run(ctx.workdir(f"pg-restart-{store}-{r}"), store, k_jobs)
            say(
                f"  item 9 {store} run {r + 1}: restart {res['restart_s']} s, "
                f"{k_jobs} jobs leased again {res['recovered_s']} s after the kill"
            )
            figs["restart"][i].add(res["restart_s"], res)
            figs["recovered"][i].add(res["recovered_s"], res)
        _run_cluster(ctx, several_figs, r, n_jobs, seconds)
    return [fig for pair in figs.values() for fig in pair] + list(several_figs.values())
