"""A worker outlives a coordinator that stalls: the coordinator process is stopped (SIGSTOP) for
20 s with jobs in flight and then continued (SIGCONT). The worker process stays up (it
reconnects or carries on), every post is published, and no target is published twice."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from polling import wait_until

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.cluster import ClusterConfig, LocalCluster
from sandbox.admin import SandboxAdmin

STALL_S = 20.0
ACCOUNTS = ("stall-a", "stall-b")


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    config = ClusterConfig(heartbeat_interval_s=0.5, lease_ttl_s=2.0, retry_initial_s=0.3)
    with LocalCluster(tmp_path_factory.mktemp("stall"), config) as c:
        c.start_sandbox()
        c.start_coordinator()
        yield c


@pytest.mark.timeout(120)
def test_worker_survives_a_20s_sigstop_of_the_coordinator(cluster: LocalCluster) -> None:
    worker = cluster.start_worker(
        "stall-w1", platforms=[f"sandbox:{a}" for a in ACCOUNTS], concurrency=2
    )
    cluster.wait_online(["stall-w1"])
    assert cluster.coordinator is not None
    with cluster.client() as client, SandboxAdmin(cluster.sandbox_url) as admin:
        # Commits hang a little, so jobs are surely in flight (some past their commit permit)
        # when the coordinator stops.
        admin.inject("hang", account="stall-a", count=2, hang_seconds=1.5)
        before = [
            cluster.publish(client, f"stall {n}", [f"sandbox:{ACCOUNTS[n % 2]}"]) for n in range(4)
        ]
        wait_until(
            "a job in flight",
            lambda: client.list_jobs(pub.ListJobsRequest(status=pb.JOB_STATUS_RUNNING)).jobs,
        )
    cluster.coordinator.signal(signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        while time.monotonic() - stopped_at < STALL_S:
            # The point of the test: the worker process is still there throughout the stall.
            assert worker.alive(), f"worker exited during the stall:\n{worker.log_tail()}"
            time.sleep(0.5)
    finally:
        cluster.coordinator.signal(signal.SIGCONT)

    with cluster.client() as client, SandboxAdmin(cluster.sandbox_url) as admin:
        after = cluster.publish(client, "after the stall", ["sandbox:stall-b"])
        posts = [*before, after]
        wait_until(
            "every post published",
            lambda: all(client.get_post(p).status == pb.POST_STATUS_PUBLISHED for p in posts),
            60,
        )
        assert worker.alive(), worker.log_tail()
        made = [p for a in ACCOUNTS for p in admin.posts(account=a)]
        assert len(made) == len(posts)
        assert admin.duplicates() == []
    log = worker.log_path.read_text()
    assert "Traceback" not in log, log
