"""End to end on PostgreSQL: `coordinator --db postgresql://...` as a real process, with the
sandbox and real workers. The coordinator is SIGKILLed with jobs in flight and started again on
the same database: every post is published once, none lost, none twice (the scenario of
test_e2e_processes.py, run as it is, on a database of its own on the PostgreSQL server)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from pg_rig import own_database, run_apart
from polling import wait_until
from test_e2e_processes import (
    admin,
    client,
)
from test_e2e_processes import (
    test_coordinator_killed_with_jobs_in_flight_then_every_post_published_once as killed_scenario,
)

from postroom_cli.client import PublishingClient
from postroom_cli.cluster import ClusterConfig, LocalCluster
from sandbox.admin import SandboxAdmin

__all__ = ["admin", "client"]  # fixtures of test_e2e_processes.py, served by this cluster


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A database of this module's own: its coordinator holds it for the module's life."""
    with own_database() as url:
        yield url


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[LocalCluster]:
    config = ClusterConfig(heartbeat_interval_s=0.5, lease_ttl_s=2.0, retry_initial_s=0.3)
    with LocalCluster(tmp_path_factory.mktemp("pg-e2e"), config) as c:
        c.db_url = pg_url
        c.start_sandbox()
        c.start_coordinator()
        yield c


async def _succeeded_jobs(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'SUCCEEDED'"))
    finally:
        await conn.close()


def test_coordinator_on_postgres_killed_mid_flight_then_every_post_published_once(
    cluster: LocalCluster, client: PublishingClient, admin: SandboxAdmin, pg_url: str
) -> None:
    killed_scenario(cluster, client, admin)
    # What the operators saw came from PostgreSQL: the jobs are there, all succeeded.
    assert run_apart(_succeeded_jobs(pg_url)) == 12


def test_a_second_coordinator_on_the_same_postgres_database_takes_its_share_and_gives_it_back(
    cluster: LocalCluster, pg_url: str, tmp_path: Path
) -> None:
    """The default placement (spread): a coordinator that joins gets half the shards, handed
    over by the first; when it stops, the first takes them back."""
    assert cluster.coordinator is not None and cluster.coordinator.alive()
    argv = [
        sys.executable, "-m", "coordinator.main", "--db", pg_url, "--assets", str(tmp_path),
        "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--name", "second",
    ]  # fmt: skip
    log = tmp_path / "second.log"
    first_log = cluster.coordinator.log_path
    before = first_log.read_text()
    with open(log, "wb") as out:
        second = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until("the second one serving its share", lambda: "(32) in" in log.read_text())
        assert "serving: took shards" in log.read_text()
        handed = first_log.read_text()[len(before) :]
        assert "handing shards" in handed and "released shards" in handed and "(32)" in handed
    finally:
        second.terminate()
        assert second.wait(60) == 0
    wait_until(
        "the first one taking them back",
        lambda: "took shards" in first_log.read_text()[len(before) :],
    )
    assert cluster.coordinator.alive()
