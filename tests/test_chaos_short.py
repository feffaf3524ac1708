"""The short chaos soak inside `make test` (the long one is `make chaos`): real processes, real
signals, sandbox faults, and the invariant checker of bench/chaos.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import soak


@pytest.mark.timeout(300)
def test_short_soak_never_posts_twice_and_loses_nothing(tmp_path: Path) -> None:
    report = soak(
        posts=60,
        workers=3,
        accounts=4,
        seed=11,
        chaos_s=12.0,
        drain_timeout_s=120.0,
        workdir=tmp_path,
        quiet=True,
    )
    assert report.violations == []
    assert report.duplicates == 0 and report.lost == 0
    assert report.posts == 60 and report.jobs >= 60
    assert report.succeeded + report.failed == report.jobs
    # The soak really disrupted things (seeded, so this is the same every run).
    assert report.faults_injected > 0
    assert report.worker_kills + report.worker_pauses + report.coordinator_restarts > 0
