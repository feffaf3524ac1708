"""The short soak the tests run (bench/chaos.py, the checker of `make chaos`), and what every
one of them must find: nothing lost, nothing published twice, every job finished."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.chaos import SoakReport, soak

POSTS = 60


def short_soak(tmp_path: Path, *, chaos_s: float = 10.0, **more: Any) -> SoakReport:
    """60 posts, 3 workers, 4 accounts, seed 11 (the same disruptions every run), `more` for
    the database and coordinators; the report once the checker passed its invariants."""
    report = soak(
        posts=POSTS,
        workers=3,
        accounts=4,
        seed=11,
        chaos_s=chaos_s,
        drain_timeout_s=120.0,
        workdir=tmp_path,
        quiet=True,
        **more,
    )
    assert report.violations == []
    assert report.duplicates == 0 and report.lost == 0
    assert report.posts == POSTS and report.jobs >= POSTS
    assert report.succeeded + report.failed == report.jobs
    return report
