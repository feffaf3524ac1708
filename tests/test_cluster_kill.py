"""Three coordinators on one PostgreSQL, six workers, posts flowing; the active one SIGKILLed.

Real processes (LocalCluster): a sandbox, three coordinators on a PostgreSQL database of the
test's own (one active, two standing by), six API workers each given all three addresses in a
different order. The operator's client calls a STANDBY, which forwards to the active one. Some
posts are in the workers' hands (the sandbox holds their answers) when the active coordinator is
SIGKILLed; another takes over, the workers reconnect to it and resume the jobs they hold, more
posts are created, and in the end every post is PUBLISHED, the sandbox holds each (post, target)
exactly once, no job is left leased, and every surviving coordinator answers the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_rig import short_soak
from pg_rig import cluster_on_own_database, own_database
from polling import wait_until

from postroom.client.errors import Unavailable
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.client import PublishingClient
from postroom_cli.cluster import ClusterConfig, LocalCluster, Peer
from sandbox.admin import SandboxAdmin

WORKERS = [f"kill-w{i}" for i in range(6)]
ACCOUNTS = [f"acct{i}" for i in range(5)]
HELD_ACCOUNTS = ACCOUNTS[:2]  # their answers hang: those jobs are in flight at the kill
HANG_S = 5.0
# Shard leases of 3 s (a turn every 0.75 s): the kill is noticed within ~4 s. The workers' leases
# (15 s, the product default) outlast that, so they keep their jobs through the takeover.
OWNERSHIP_TTL_S = 3.0
WAIT_S = 45.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    config = ClusterConfig(
        heartbeat_interval_s=1.0,
        lease_ttl_s=15.0,
        retry_initial_s=0.3,
        ownership_ttl_s=OWNERSHIP_TTL_S,
    )
    with cluster_on_own_database(tmp_path, config, coordinators=3, placement="one") as c:
        yield c


def _publish(cluster: LocalCluster, client: PublishingClient, n: int, first: int) -> list[str]:
    ids = []
    for i in range(first, first + n):
        targets = [ACCOUNTS[i % len(ACCOUNTS)], ACCOUNTS[(i + 2) % len(ACCOUNTS)]]
        ids.append(
            cluster.publish(client, f"kill test post {i}", [f"sandbox:{a}" for a in targets])
        )
    return ids


def _standby(cluster: LocalCluster, active: Peer) -> Peer:
    return next(p for p in cluster.peers.values() if p is not active and p.child.alive())


def _answers(client: PublishingClient) -> bool:
    try:
        client.list_posts()
    except Unavailable:
        return False
    return True


def _statuses(cluster: LocalCluster, address: str, post_ids: list[str]) -> dict[str, int]:
    with PublishingClient(address, timeout_s=10) as client:
        return {pid: client.get_post(pid).status for pid in post_ids}


def test_the_active_coordinator_is_killed_and_nothing_is_lost_or_posted_twice(
    cluster: LocalCluster,
) -> None:
    first = cluster.wait_active()
    cluster.coordinator_address = _standby(cluster, first).address  # call a standby
    for device_id in WORKERS:  # each with all three addresses, each list in another order
        cluster.start_worker(device_id, concurrency=2)
    cluster.wait_online(WORKERS, timeout_s=WAIT_S)
    with cluster.sandbox_admin() as admin:
        _kill_mid_flow(cluster, admin, first)


def _kill_mid_flow(cluster: LocalCluster, admin: SandboxAdmin, first: Peer) -> None:
    for account in HELD_ACCOUNTS:
        admin.inject("accept_then_hang", account=account, count=3, hang_seconds=HANG_S)
    with cluster.client() as client:
        post_ids = _publish(cluster, client, 20, 0)
    wait_until("jobs in the workers' hands", lambda: admin.stats()["hanging"] >= 2, WAIT_S)

    killed_at = time.time()
    first.child.kill()
    second = cluster.wait_active(timeout_s=WAIT_S)
    assert second is not first
    cluster.coordinator_address = _standby(cluster, second).address  # the other survivor
    with cluster.client() as client:
        # Until its next ownership turn it may still forward to the dead one (UNAVAILABLE,
        # "retry in a few seconds"): an operator's retry.
        wait_until("the standby to forward to the new active", lambda: _answers(client), WAIT_S)
        post_ids += _publish(cluster, client, 10, 20)
        wait_until(
            "every post published",
            lambda: all(
                client.get_post(pid).status == pb.POST_STATUS_PUBLISHED for pid in post_ids
            ),
            WAIT_S,
            poll_s=0.3,
        )
        jobs = [
            j for pid in post_ids for j in client.list_jobs(pub.ListJobsRequest(post_id=pid)).jobs
        ]
        connected = client.list_audit_events(
            pub.ListAuditEventsRequest(action="DEVICE_CONNECTED", page_size=10_000)
        ).events
    _every_target_once(admin, jobs)
    # The workers came back to the new active one with the jobs they held, and kept them.
    after = [e for e in connected if e.at.seconds + e.at.nanos / 1e9 >= killed_at - 1]
    resumed = [job for e in after for job in json.loads(e.details_json)["resumed"]]
    assert resumed, [e.details_json for e in after]
    # Reads through every surviving coordinator give the same answer.
    survivors = [p.address for p in cluster.peers.values() if p.child.alive()]
    assert len(survivors) == 2
    views = [_statuses(cluster, address, post_ids) for address in survivors]
    assert views[0] == views[1] == {pid: pb.POST_STATUS_PUBLISHED for pid in post_ids}


def _every_target_once(admin: SandboxAdmin, jobs: list[pb.Job]) -> None:
    """Every job SUCCEEDED (none left leased), and the sandbox holds each exactly once."""
    assert len(jobs) == 60
    assert {pb.JobStatus.Name(j.status) for j in jobs} == {"JOB_STATUS_SUCCEEDED"}
    made = admin.posts()
    assert admin.duplicates() == []
    assert sorted(p["client_key"] for p in made) == sorted(j.platform_key for j in jobs)


@pytest.mark.timeout(300)
def test_a_short_soak_that_kills_the_active_coordinator_loses_nothing_and_posts_nothing_twice(
    tmp_path: Path,
) -> None:
    """`make chaos`'s checker (bench/chaos.py) on two coordinators sharing a PostgreSQL
    database: its coordinator kills SIGKILL the active one (seeded: at least once here)."""
    with own_database() as url:
        report = short_soak(tmp_path, db_url=url, coordinators=2, placement="one")
    assert report.coordinator_restarts >= 1
    assert len(report.takeovers) == report.coordinator_restarts and "?" not in report.takeovers
