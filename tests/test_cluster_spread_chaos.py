"""`make chaos` on placement "spread": three coordinators, each serving a share of the shards,
and the soak's coordinator kills hitting any of them.

Real processes (bench/chaos.py soak on a PostgreSQL database of the test's own): a sandbox
injecting faults, three `postroom coordinator --placement spread`, three workers killed, paused
and restarted, and at least one coordinator SIGKILLed (seeded) and started again later. Once
everything drained, the soak's checker finds no target published twice, no job unfinished, every
SUCCEEDED job's post at the sandbox and no post there without one, no job FAILED in doubt
without a look, and no gap in the audit log; each kill's shards had live holders again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chaos_rig import short_soak
from pg_rig import own_database


@pytest.mark.timeout(300)
def test_a_short_soak_that_kills_any_spread_coordinator_loses_nothing_and_posts_nothing_twice(
    tmp_path: Path,
) -> None:
    with own_database() as url:
        report = short_soak(tmp_path, db_url=url, coordinators=3, placement="spread")
    assert len(report.kills) >= 1 and report.coordinator_restarts == len(report.kills)
    assert report.crashes == []  # no coordinator ended by itself (only the kills)
    assert len(report.handoffs) == len(report.kills) and "?" not in report.handoffs
    for victim, handoff in zip(report.kills, report.handoffs, strict=True):
        assert handoff.startswith(f"{victim} ("), handoff  # who held its shards afterwards
