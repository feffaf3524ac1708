"""How many job transitions per second the SQLite store commits, batched as the lease actor does.

    python -m bench.store_bench [--jobs 5000] [--batch 100]

Inserts n jobs (untimed), then times two passes in batches: claim (QUEUED -> CLAIMED, epoch + 1,
plus a Run insert) and complete (CLAIMED -> SUCCEEDED, the Run updated, one audit event). Batches
are built before the clock starts, so the figure is the store's, not the caller's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from coordinator.domain import AuditEvent, Job, JobStatus, Post, PostStatus, Run, Target
from coordinator.store import JobWrite, SqliteStore, WriteBatch

T0 = 1_800_000_000.0
TARGET = Target("sandbox", "bench")


def _post(n: int) -> Post:
    return Post(
        id=f"post-{n}",
        text=f"benchmark post {n}",
        media=(),
        targets=(TARGET,),
        scheduled_at=T0,
        status=PostStatus.SCHEDULED,
        content_hash="h",
        created_at=T0 + n,
        updated_at=T0 + n,
    )


def _job(n: int) -> Job:
    return Job(
        id=f"job-{n}",
        post_id=f"post-{n}",
        platform=TARGET.platform,
        account=TARGET.account,
        status=JobStatus.QUEUED,
        idempotency_key=f"post-{n}:{TARGET}:bench",
        platform_key=f"pk-{n}",
        content_hash="h",
        text=f"benchmark post {n}",
        media=(),
        scheduled_at=T0,
        created_at=T0 + n,
        updated_at=T0 + n,
        not_before=T0,
    )


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


async def measure_store(
    path: str | os.PathLike[str], n_jobs: int = 5000, batch: int = 100
) -> dict[str, Any]:
    store = SqliteStore(path)
    await store.open()
    try:
        jobs = [_job(n) for n in range(n_jobs)]
        for chunk in _chunks(n_jobs, 1000):
            posts = [_post(n) for n in chunk]
            await store.apply(WriteBatch(new_posts=posts, new_jobs=[jobs[n] for n in chunk]))

        claimed = [
            dataclasses.replace(j, status=JobStatus.CLAIMED, lease_epoch=1, device_id="dev-1")
            for j in jobs
        ]
        runs = [Run(f"run-{n}", j.id, 1, "dev-1", 1, T0 + 10) for n, j in enumerate(jobs)]
        claims = [
            WriteBatch(
                job_writes=[JobWrite(claimed[n], frozenset({JobStatus.QUEUED}), 0) for n in chunk],
                runs=[runs[n] for n in chunk],
            )
            for chunk in _chunks(n_jobs, batch)
        ]
        completes = [
            WriteBatch(
                job_writes=[
                    JobWrite(
                        dataclasses.replace(claimed[n], status=JobStatus.SUCCEEDED),
                        frozenset({JobStatus.CLAIMED}),
                        1,
                    )
                    for n in chunk
                ],
                runs=[
                    dataclasses.replace(
                        runs[n], ended_at=T0 + 20, outcome="succeeded", committed=True
                    )
                    for n in chunk
                ],
                audits=[AuditEvent("JOB_SUCCEEDED", jobs[n].id, "dev-1", T0 + 20) for n in chunk],
            )
            for chunk in _chunks(n_jobs, batch)
        ]

        started = time.perf_counter()
        for b in claims:
            await store.apply(b)
        claimed_at = time.perf_counter()
        for b in completes:
            await store.apply(b)
        finished = time.perf_counter()
    finally:
        await store.close()
    return {
        "jobs": n_jobs,
        "batch": batch,
        "transitions": 2 * n_jobs,
        "seconds": round(finished - started, 4),
        "claims_per_s": round(n_jobs / (claimed_at - started)),
        "completes_per_s": round(n_jobs / (finished - claimed_at)),
        "transitions_per_s": round(2 * n_jobs / (finished - started)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="postroom-bench-") as tmp:
        result = anyio.run(measure_store, Path(tmp) / "bench.db", args.jobs, args.batch)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
