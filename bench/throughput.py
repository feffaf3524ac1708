"""Item 1: end-to-end throughput. N approved jobs, 4 worker processes, jobs/s from the first lease
to the last SUCCEEDED, every transition committed to SQLite before the worker hears of it.

Two kinds of worker, both 4 separate processes:
- `worker`: the real worker (`python -m worker.main`), with its no-op adapter (`--noop`) once that
  flag exists, else the sandbox adapter against the sandbox process. The product's figure.
- `lean`: `bench.wire complete`, the protocol's minimum per job (AssignAck + CommitRequest, then a
  successful JobResult on CommitGrant): the coordinator's own ceiling.

Set-up (untimed): the coordinator and the workers start and connect; posts (5 targets each) are
created, submitted and approved, then all scheduled for one instant T a little ahead, so every
job becomes due at once while every worker is idle. The figure is n / (last JOB_SUCCEEDED - first
JOB_LEASED), both from the coordinator's audit log (its own clock).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Literal

from bench.common import (
    Children,
    Context,
    CpuMeter,
    Figure,
    Publisher,
    cluster,
    coordinator_pid,
    count_jobs,
    cpu_seconds,
    say,
    worker_has_noop,
)
from bench.profile import Recorder, render, summarize
from postroom_cli.cluster import LocalCluster

Variant = Literal["worker", "lean"]
WORKERS = 4
SLOTS = 64
TARGETS_PER_POST = 5
TARGET_JOBS_PER_S = 3000.0


async def _setup_posts(address: str, n_posts: int) -> tuple[Publisher, list[str], float]:
    pubr = Publisher(address, concurrency=16)
    targets = [f"sandbox:acct-{k}" for k in range(TARGETS_PER_POST)]
    started = time.monotonic()
    ids = await pubr.approved_posts(n_posts, targets, text="throughput")
    return pubr, ids, time.monotonic() - started


def one_run(
    workdir: Path, variant: Variant, n_jobs: int, *, profile_out: Path | None = None
) -> dict[str, Any]:
    noop = worker_has_noop()
    n_posts = max(1, n_jobs // TARGETS_PER_POST)
    n_jobs = n_posts * TARGETS_PER_POST
    needs_sandbox = variant == "worker" and not noop
    with cluster(workdir, sandbox=needs_sandbox) as c, Children(workdir) as kids:
        worker_pids = _start_workers(c, kids, variant, noop)
        out = asyncio.run(_drain(c, n_posts, n_jobs, worker_pids, profile_out))
    return {"variant": variant, "adapter": "noop" if noop else "sandbox", **out}


def _start_workers(c: LocalCluster, kids: Children, variant: Variant, noop: bool) -> dict[str, int]:
    """WORKERS worker processes of the variant, connected; their PIDs by name."""
    worker_pids: dict[str, int] = {}
    if variant == "worker":
        extra = ["--log-level", "WARNING", *(["--noop"] if noop else [])]
        names = [f"w{i}" for i in range(WORKERS)]
        for name in names:
            worker_pids[name] = c.start_worker(name, concurrency=SLOTS, extra=extra).pid
        c.wait_online(names)
        return worker_pids
    address = c.coordinator_address
    procs = [
        kids.wire(
            f"lean{i}",
            "complete",
            "--address",
            address,
            "--prefix",
            f"lean{i}-",
            "--slots",
            str(SLOTS),
        )
        for i in range(WORKERS)
    ]
    for p in procs:
        p.wait_line("ready")
        worker_pids[p.name] = p.pid
    return worker_pids


async def _drain(
    c: LocalCluster,
    n_posts: int,
    n_jobs: int,
    worker_pids: dict[str, int],
    profile_out: Path | None,
) -> dict[str, Any]:
    """Schedule every post for one instant T, wait until all jobs SUCCEEDED, read the rate."""
    pubr, ids, prep_s = await _setup_posts(c.coordinator_address, n_posts)
    # SchedulePost is one call per post where preparing was three: twice the estimate, plus a
    # second, keeps T after the last schedule call on a loaded machine too.
    t_due = time.time() + 1.0 + 2 * prep_s / 3
    sched_started = time.time()
    await pubr.schedule(ids, lambda _i: t_due)
    slack = t_due - time.time()
    recorder = None
    if profile_out is not None:
        recorder = Recorder(coordinator_pid(c), profile_out)
    await asyncio.sleep(max(0.0, t_due - 0.05 - time.time()))
    pids = {"coordinator": coordinator_pid(c), **worker_pids}
    meter = CpuMeter(pids)
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    deadline = time.monotonic() + 600
    while count_jobs(c.db_url, "SUCCEEDED") < n_jobs:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n_jobs} jobs not all SUCCEEDED in 600 s")
        await asyncio.sleep(0.05)
    cpu = meter.percent()
    cpu_ms = {name: 1000 * (cpu_seconds(pid) - cpu0[name]) / n_jobs for name, pid in pids.items()}
    if recorder is not None:
        recorder.stop()
    leased = await pubr.audit_times("JOB_LEASED")
    # core.result() audits JOB_SUCCEEDED twice (the transition and the result): the last one of
    # a job is the later, so max() is right either way.
    succeeded = await pubr.audit_times("JOB_SUCCEEDED")
    await pubr.close()
    first, last = min(leased), max(succeeded)
    out: dict[str, Any] = {
        "jobs": n_jobs,
        "posts": n_posts,
        "workers": WORKERS,
        "slots_per_worker": SLOTS,
        "seconds": round(last - first, 3),
        "jobs_per_s": round(n_jobs / (last - first), 1),
        "leases": len(leased),
        "succeeded_audit_events": len(succeeded),
        "schedule_s": round(time.time() - sched_started - max(0.0, slack), 2),
        "schedule_slack_s": round(slack, 2),
        "cpu_percent_of_one_core": cpu,
        # CPU time per job over the drain (issue 13's figure: 2 cores bound jobs/s by it).
        "cpu_ms_per_job": {
            "coordinator": round(cpu_ms["coordinator"], 3),
            "workers": round(sum(v for k, v in cpu_ms.items() if k != "coordinator"), 3),
        },
    }
    if recorder is not None and profile_out is not None:
        out["profile"] = summarize(profile_out, recorder.seconds)
    return out


def run(ctx: Context) -> list[Figure]:
    n_jobs = 1000 if ctx.quick else 5000
    noop = worker_has_noop()
    real = Figure(
        "1",
        "throughput_worker",
        f"throughput, {WORKERS} real worker processes ({'no-op' if noop else 'sandbox'} adapter)",
        "jobs/s",
        ">=",
        TARGET_JOBS_PER_S,
        decimals=0,
    )
    lean = Figure(
        "1b",
        "throughput_lean",
        f"throughput, {WORKERS} lean protocol-minimum worker processes",
        "jobs/s",
        ">=",
        TARGET_JOBS_PER_S,
        decimals=0,
    )
    variants: list[tuple[Figure, Variant]] = [(real, "worker"), (lean, "lean")]
    for fig, variant in variants:
        for r in range(ctx.runs):
            res = one_run(ctx.workdir(f"throughput-{variant}-{r}"), variant, n_jobs)
            if res["schedule_slack_s"] < 0:  # scheduling ran into the window: that run is void
                say(f"  item {fig.item} run {r + 1}: scheduling overlapped; running it again")
                res = one_run(ctx.workdir(f"throughput-{variant}-{r}-again"), variant, n_jobs)
            cpu = res["cpu_percent_of_one_core"]
            per_job = res["cpu_ms_per_job"]
            say(
                f"  item {fig.item} run {r + 1}: {res['jobs_per_s']} jobs/s; cpu % {cpu}; "
                f"cpu ms per job {per_job}"
            )
            fig.add(res["jobs_per_s"], res)
            if res["schedule_slack_s"] < 0:
                fig.notes.append(f"run {r + 1}: scheduling overlapped the measured window")
        if ctx.profile:
            out_dir = ctx.profile_dir or ctx.workroot
            out_dir.mkdir(parents=True, exist_ok=True)
            raw = out_dir / f"profile-coordinator-{variant}.txt"
            res = one_run(
                ctx.workdir(f"throughput-{variant}-profile"), variant, n_jobs, profile_out=raw
            )
            prof = res.pop("profile")
            entry: dict[str, Any] = {"run": res, **prof}
            if ctx.profile_dir is not None:
                entry["raw_file"] = str(raw)
            ctx.results.setdefault("profiles", {})[f"item{fig.item}"] = entry
            say(
                f"  item {fig.item} profiled run (py-spy attached, not counted): "
                f"{res['jobs_per_s']} jobs/s\n{render(prof)}"
            )
    return [real, lean]
