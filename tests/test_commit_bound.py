"""A worker lost after its commit permit: its job is rerun (looking first) once the commit bound
the worker gave has passed, not at its lease deadline, and never earlier than either."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lease_harness import T0, Harness, assigns, make_post
from polling import wait_until

from coordinator.domain import JobStatus, Target
from coordinator.leasing import commands as c
from coordinator.leasing.state import (
    DEFAULT_EXPIRY_MARGIN_S,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_LEASE_TTL_S,
)
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.client import PublishingClient
from postroom_cli.cluster import ClusterConfig, LocalCluster
from sandbox.admin import SandboxAdmin

A = Target("sandbox", "a")
MARGIN = DEFAULT_EXPIRY_MARGIN_S
DEFAULT_HEARTBEAT_S, DEFAULT_TTL_S = DEFAULT_HEARTBEAT_INTERVAL_S, DEFAULT_LEASE_TTL_S


def succeeded(client: PublishingClient, job_id: str) -> pb.Job | None:
    job = client.get_job(job_id)
    return job if job.status == pb.JOB_STATUS_SUCCEEDED else None


def events(client: PublishingClient, job_id: str, action: str) -> list[tuple[float, Any]]:
    page = client.list_audit_events(pub.ListAuditEventsRequest(subject_id=job_id, action=action))
    return [(e.at.seconds + e.at.nanos / 1e9, json.loads(e.details_json)) for e in page.events]


def committed(bound_s: float) -> Harness:
    """p1-j0 leased to s1, which got its permit (with `bound_s`) and then vanished (EOF)."""
    h = Harness()
    h.add(*make_post("p1", [A], T0))
    h.open("s1")
    h.ack("s1", "p1-j0", 1)
    h.command(c.CommitRequest("s1", "p1-j0", 1, bound_s))
    assert h.job("p1-j0").committed_epoch == 1
    h.lost("s1")
    h.open("s2")  # a fresh worker waits for it
    return h


def rerun_at(h: Harness, step_s: float = 0.05) -> float:
    """Seconds after the loss when s2 gets the job (ticks at every wake-up and step)."""
    start, seq = h.now, 0
    while h.now - start < 3 * DEFAULT_LEASE_TTL_S:
        seq += 1
        h.heartbeat("s2", seq)  # s2 stays alive
        got = assigns(h.tick(), "s2")
        if got:
            assert [a.job_id for a in got] == ["p1-j0"] and got[0].verify_first
            return h.now - start
        h.advance(step_s)
    raise AssertionError("never rerun")


def test_the_job_is_rerun_with_verify_first_once_the_bound_and_margin_passed() -> None:
    h = committed(bound_s=2.0)
    wake = h.core.next_wakeup()
    assert wake is not None and abs(wake - (T0 + 2.0 + MARGIN)) < 0.01  # the actor ticks then
    waited = rerun_at(h)
    assert 2.0 + MARGIN < waited <= 2.0 + MARGIN + 0.05  # not one step earlier
    assert h.store.jobs["p1-j0"].status is JobStatus.CLAIMED
    (recovered,) = h.store.actions("JOB_STUCK_RECOVERY", "p1-j0")
    assert recovered.details["reason"] == "the worker's commit bound passed"
    assert recovered.details["phase"] == "committed"


def test_without_a_bound_or_with_one_past_the_deadline_the_deadline_stands() -> None:
    for bound_s in (0.0, 10 * DEFAULT_LEASE_TTL_S):
        waited = rerun_at(committed(bound_s), step_s=0.25)
        assert DEFAULT_LEASE_TTL_S + MARGIN < waited <= DEFAULT_LEASE_TTL_S + MARGIN + 0.25


def test_a_worker_killed_right_after_its_permit_is_rerun_after_its_bound_and_posts_once(
    tmp_path: Path,
) -> None:
    """Real processes with the product's lease settings (heartbeat 5 s, TTL 15 s): the job of a
    worker SIGKILLed during its commit runs again, looking first, once the commit bound it gave
    has passed (plus the margin), long before its lease deadline; the post exists once."""
    config = ClusterConfig(heartbeat_interval_s=DEFAULT_HEARTBEAT_S, lease_ttl_s=DEFAULT_TTL_S)
    with LocalCluster(tmp_path, config) as cluster:
        cluster.start_sandbox()
        cluster.start_coordinator()
        first = cluster.start_worker("bound-w1", platforms=["sandbox:bound"])
        cluster.wait_online(["bound-w1"])
        with cluster.client() as client, SandboxAdmin(cluster.sandbox_url) as admin:
            admin.inject("accept_then_hang", account="bound", hang_seconds=60)
            post_id = cluster.publish(client, "killed in its commit", ["sandbox:bound"])
            wait_until("the post at the sandbox", lambda: admin.posts(account="bound"), poll_s=0.01)
            first.kill()
            cluster.start_worker("bound-w2", platforms=["sandbox:bound"])
            [job] = client.list_jobs(pub.ListJobsRequest(post_id=post_id)).jobs
            done = wait_until("success", lambda: succeeded(client, job.id), timeout_s=30)
            [made] = admin.posts(account="bound")  # exactly one
            assert (done.result_post_id, done.device_id) == (made["id"], "bound-w2")
            [granted] = events(client, job.id, "JOB_COMMIT_GRANTED")
            leased = events(client, job.id, "JOB_LEASED")
            assert len(leased) == 2 and leased[1][1]["verify_first"]
            waited = leased[1][0] - granted[0]  # the coordinator's own clock, both
            bound_s = 0.8 * 0.2 * DEFAULT_TTL_S  # worker/job_task.py: 0.8 x its lease margin
            assert bound_s + MARGIN <= waited < DEFAULT_TTL_S  # never before; not the deadline
        cluster.workers["bound-w2"].stop()
