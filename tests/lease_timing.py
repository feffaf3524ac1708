"""The lease core tests' timing: 15 s leases, heartbeats every 5 s, a 1 s expiry margin, a commit
needing 2 s of lease left; each test file changes what it is about."""

from __future__ import annotations

import dataclasses
from typing import Any

from coordinator.leasing.core import LeaseConfig

TTL = 15.0


def lease_config(**changes: Any) -> LeaseConfig:
    base = LeaseConfig(
        heartbeat_interval_s=5.0, lease_ttl_s=TTL, expiry_margin_s=1.0, commit_min_left_s=2.0
    )
    return dataclasses.replace(base, **changes)
