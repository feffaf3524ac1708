"""CPU per job of a drain in the peer harness's shape (not a `make bench` item; run it by hand).

    python -m bench.drain_cpu [--jobs 5000] [--workers 2] [--profile-dir DIR]

N posts of one target each (one account, as ../shared/bench-peers does), created, approved and
scheduled for one instant T in CreatePosts calls of 1,000 while W real `worker --noop` processes
(64 slots each) sit idle; from T until every job SUCCEEDED, the CPU time of each process (and of
each thread of the coordinator and the first worker, from /proc) is divided by N. On this 2-core
machine the total CPU per job bounds jobs/s, and unlike jobs/s it holds up under other load:
compare commits in paired, alternating runs (`git archive` each into a directory, run this with
PYTHONPATH set to it). --profile-dir: py-spy on the coordinator and the first worker meanwhile,
their summaries (bench/profile.py) printed as JSON too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.common import cluster, count_jobs, cpu_seconds, rfc3339
from bench.profile import Recorder, summarize
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb

SLOTS = 64
CREATE_CALL = 1000


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process, by "name/tid"."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[f"{name}/{tid}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


async def _create(address: str, n: int, t_due: float) -> None:
    channel = grpc.aio.insecure_channel(address)
    stub = publishing_pb2_grpc.PublishingStub(channel)
    target = [pb.Target(platform="sandbox", account="q")]
    for start in range(0, n, CREATE_CALL):
        posts = [
            pub.CreatePostRequest(
                text=f"noop {i}",
                targets=target,
                actor="bench",
                approve=True,
                schedule=True,
                scheduled_at=rfc3339(t_due),
            )
            for i in range(start, min(n, start + CREATE_CALL))
        ]
        await stub.CreatePosts(pub.CreatePostsRequest(posts=posts))
    await channel.close(None)


def drain(n: int, workers: int, profile_dir: Path | None) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="drain-cpu-"))
    with cluster(workdir) as c:
        assert c.coordinator is not None
        names = [f"w{i}" for i in range(workers)]
        pids = {"coordinator": c.coordinator.pid}
        for name in names:
            extra = ["--log-level", "WARNING", "--noop"]
            pids[name] = c.start_worker(name, concurrency=SLOTS, extra=extra).pid
        c.wait_online(names)
        t_due = time.time() + 3 + n / 3000
        asyncio.run(_create(c.coordinator_address, n, t_due))
        while time.time() < t_due - 0.05:
            time.sleep(0.01)
        recorders = []
        if profile_dir is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
            for name in ("coordinator", "w0"):
                recorders.append((name, Recorder(pids[name], profile_dir / f"{name}.txt")))
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        threads0 = {k: thread_cpu(pids[k]) for k in ("coordinator", "w0")}
        deadline = time.monotonic() + 600
        while count_jobs(c.db_url, "SUCCEEDED") < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} jobs not all SUCCEEDED in 600 s")
            time.sleep(0.02)
        cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
        threads1 = {k: thread_cpu(pids[k]) for k in ("coordinator", "w0")}
        for _, rec in recorders:
            rec.stop()
        db = sqlite3.connect(c.db_url.removeprefix("sqlite:///"))
        first = db.execute("SELECT min(at) FROM audit_events WHERE action = 'JOB_LEASED'")
        last = db.execute("SELECT max(at) FROM audit_events WHERE action = 'JOB_SUCCEEDED'")
        seconds = last.fetchone()[0] - first.fetchone()[0]
        db.close()
    ms = {k: 1000 * (cpu1[k] - cpu0[k]) / n for k in pids}
    workers_ms = sum(v for k, v in ms.items() if k != "coordinator")
    out: dict[str, Any] = {
        "jobs": n,
        "workers": workers,
        "jobs_per_s": round(n / seconds),
        "cpu_ms_per_job": {
            "coordinator": round(ms["coordinator"], 3),
            "workers": round(workers_ms, 3),
            "total": round(ms["coordinator"] + workers_ms, 3),
        },
        "threads_cpu_ms_per_job": {
            k: {
                t: round(1000 * (v - threads0[k].get(t, 0.0)) / n, 3)
                for t, v in threads1[k].items()
                if v - threads0[k].get(t, 0.0) >= 0.005 * n / 1000
            }
            for k in threads1
        },
        "load_average": os.getloadavg(),
    }
    if recorders:
        out["profiles"] = {name: summarize(rec.out, rec.seconds, top=20) for name, rec in recorders}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--profile-dir", type=Path, default=None)
    args = parser.parse_args()
    print(json.dumps(drain(args.jobs, args.workers, args.profile_dir)))


if __name__ == "__main__":
    main()
