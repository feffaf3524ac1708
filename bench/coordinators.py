"""Several coordinators on one PostgreSQL, as the bench runs them (item 9).

`several(workdir, n, db_url)` starts the sandbox if asked and `n` coordinators on the database
(LocalCluster.start_coordinators: one becomes active, the others stand by) and points the
cluster's own calls at the ACTIVE one (`c.coordinator` is its process), so the figures measure the
coordinators, not the extra hop of a standby's forwarding. Workers started on it are given every
address.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from bench.common import PRODUCT_HEARTBEAT_S, PRODUCT_LEASE_TTL_S
from postroom_cli.cluster import ClusterConfig, LocalCluster


@contextlib.contextmanager
def several(
    workdir: Path,
    n: int,
    db_url: str,
    *,
    sandbox: bool = False,
    heartbeat_s: float = PRODUCT_HEARTBEAT_S,
    lease_ttl_s: float = PRODUCT_LEASE_TTL_S,
    ownership_ttl_s: float | None = None,
) -> Iterator[LocalCluster]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = ClusterConfig(
        heartbeat_interval_s=heartbeat_s,
        lease_ttl_s=lease_ttl_s,
        coordinator_args=("--log-level", "WARNING"),
        ownership_ttl_s=ownership_ttl_s,
    )
    with LocalCluster(workdir, config) as c:
        c.db_url = db_url
        if sandbox:
            c.start_sandbox()
        else:
            c.sandbox_url = "http://127.0.0.1:9"  # never called by lean sessions / --noop workers
        c.start_coordinators(n)
        active = c.wait_active()
        c.coordinator_address, c.metrics_url = active.address, active.metrics_url
        c.coordinator = active.child  # what the bench watches (its CPU, its pid)
        yield c
