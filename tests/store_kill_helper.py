"""Child of test_store's SIGKILL test: commits numbered batches forever, printing each number
(flushed) only after its batch is committed, until it is killed.

    python tests/store_kill_helper.py DBPATH
"""

from __future__ import annotations

import sys

import anyio

from coordinator.domain import AuditEvent, Job, JobStatus, Post, PostStatus, Target
from coordinator.store import SqliteStore, WriteBatch

T0 = 1_800_000_000.0


def post_id(n: int) -> str:
    return f"kill-post-{n}"


def job_id(n: int) -> str:
    return f"kill-job-{n}"


def batch(n: int) -> WriteBatch:
    at = T0 + n
    post = Post(
        id=post_id(n),
        text=f"post {n}",
        media=(),
        targets=(Target("sandbox", "acme"),),
        scheduled_at=at,
        status=PostStatus.SCHEDULED,
        content_hash="h",
        created_at=at,
        updated_at=at,
    )
    job = Job(
        id=job_id(n),
        post_id=post.id,
        platform="sandbox",
        account="acme",
        status=JobStatus.QUEUED,
        idempotency_key=f"{post.id}:sandbox/acme",
        platform_key=f"pk-{n}",
        content_hash="h",
        text=post.text,
        media=(),
        scheduled_at=at,
        created_at=at,
        updated_at=at,
        not_before=at,
    )
    audit = AuditEvent(action="POST_SCHEDULED", subject_id=post.id, actor="system", at=at)
    return WriteBatch(new_posts=[post], new_jobs=[job], audits=[audit])


async def main(path: str) -> None:
    store = SqliteStore(path)
    await store.open()
    n = 0
    while True:  # until SIGKILL: the store is never closed, on purpose
        n += 1
        await store.apply(batch(n))
        print(n, flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
