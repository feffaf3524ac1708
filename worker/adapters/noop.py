"""An adapter that publishes nowhere: every commit "succeeds" at once without any I/O.

For benchmarks (`make bench` measures the coordinator and the worker runtime, not a platform)
and for dry runs of a deployment. It keeps what it "published" in memory, so `verify` answers
truthfully within one worker process.
"""

from __future__ import annotations

from collections.abc import Callable

from worker.adapters.base import JobSpec, Prepared, Published

# Shared by every NoopAdapter of the process: the "platform" they pretend to publish to.
_PUBLISHED: dict[tuple[str, str, str], Published] = {}


class NoopAdapter:
    def __init__(self, platform: str) -> None:
        self.platform = platform

    async def prepare(self, job: JobSpec) -> Prepared:
        return Prepared(payload={"text": job.text}, summary="no-op: nothing is sent")

    async def screenshot(self, label: str) -> bytes | None:
        return None

    async def commit(self, job: JobSpec, prepared: Prepared) -> Published:
        published = Published(post_id=f"noop-{job.platform_key or job.job_id}", url="")
        _PUBLISHED[(job.platform, job.account, job.platform_key)] = published
        return published

    async def verify(self, job: JobSpec) -> Published | None:
        return _PUBLISHED.get((job.platform, job.account, job.platform_key))

    async def check_login(self, account: str) -> bool:
        return True

    async def close(self) -> None:
        return None


def noop_factory() -> Callable[[str], NoopAdapter]:
    return NoopAdapter
