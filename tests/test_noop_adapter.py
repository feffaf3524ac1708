"""The no-op adapter used by benchmarks and dry runs: publishes nowhere, but never lies."""

from __future__ import annotations

import pytest

from postroom.clock import SystemClock
from worker.adapters.base import JobSpec
from worker.adapters.noop import NoopAdapter
from worker.main import build_adapters, build_parser, config_from_args


@pytest.mark.anyio
async def test_a_noop_commit_is_found_by_verify_and_only_then() -> None:
    job = JobSpec(job_id="j-1", platform="sandbox", account="acme", text="hi", platform_key="k1")
    adapter = NoopAdapter("sandbox")
    assert await adapter.verify(job) is None
    published = await adapter.commit(job, await adapter.prepare(job))
    assert await NoopAdapter("sandbox").verify(job) == published  # seen by the next attempt
    other = JobSpec(job_id="j-2", platform="sandbox", account="acme", text="hi", platform_key="k2")
    assert await adapter.verify(other) is None


def test_noop_flag_serves_every_platform_without_a_sandbox() -> None:
    args = build_parser().parse_args(
        [
            "--coordinator",
            "127.0.0.1:1",
            "--device-id",
            "d",
            "--platform",
            "sandbox",
            "--platform",
            "x:acme",
            "--noop",
        ]
    )
    registry = build_adapters(config_from_args(args), clock=SystemClock(), metrics=None)
    assert set(registry.platforms()) == {"sandbox", "x"}
    assert isinstance(registry.create("x"), NoopAdapter)
