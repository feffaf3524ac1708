"""The short chaos soak inside `make test` (the long one is `make chaos`): real processes, real
signals, sandbox faults, and the invariant checker of bench/chaos.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from chaos_rig import short_soak


@pytest.mark.timeout(300)
def test_short_soak_never_posts_twice_and_loses_nothing(tmp_path: Path) -> None:
    report = short_soak(tmp_path, chaos_s=12.0)
    # The soak really disrupted things (seeded, so this is the same every run).
    assert report.faults_injected > 0
    assert report.worker_kills + report.worker_pauses + report.coordinator_restarts > 0
