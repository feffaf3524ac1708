"""A worker's heartbeat says which leases it still holds; a lease it dropped silently (its own
deadline passed while the coordinator was away) is not kept alive by its heartbeats."""

from __future__ import annotations

from lease_harness import Harness, make_post, one_assign, wire

from coordinator.domain import JobStatus, Target
from coordinator.leasing.effects import Effects


def beat(h: Harness, sid: str, held: list[tuple[str, int]]) -> Effects:
    return h.run(h.core.heartbeat(sid, 1, h.now, active=held))


def test_a_lease_the_worker_no_longer_reports_is_recovered_and_rerun() -> None:
    h = Harness()
    post, jobs = make_post("p1", [Target("sandbox", "acme")], h.now)
    h.add(post, jobs)
    assign = one_assign(h.open("s1", slots=1))
    h.ack("s1", assign.job_id, assign.lease_epoch)
    h.advance(h.config.heartbeat_interval_s * 3)
    fx = beat(h, "s1", [])  # the worker holds nothing any more
    again = one_assign(fx)  # the slot is free again: the job is rerun at once
    assert again.job_id == assign.job_id and again.lease_epoch == assign.lease_epoch + 1
    assert "JOB_STUCK_RECOVERY" in [e.action for e in h.store.actions("JOB_STUCK_RECOVERY")]


def test_a_fresh_lease_missing_from_a_heartbeat_is_kept_its_assign_may_be_in_flight() -> None:
    h = Harness()
    post, jobs = make_post("p1", [Target("sandbox", "acme")], h.now)
    h.add(post, jobs)
    assign = one_assign(h.open("s1"))
    h.advance(h.config.heartbeat_interval_s / 2)
    beat(h, "s1", [])
    assert h.core.leases[assign.job_id].session_id == "s1"
    assert h.job(assign.job_id).status is JobStatus.CLAIMED


def test_a_reported_lease_is_renewed() -> None:
    h = Harness()
    post, jobs = make_post("p1", [Target("sandbox", "acme")], h.now)
    h.add(post, jobs)
    assign = one_assign(h.open("s1"))
    for _ in range(5):
        h.advance(h.config.heartbeat_interval_s)
        beat(h, "s1", [(assign.job_id, assign.lease_epoch)])
    assert h.core.leases[assign.job_id].session_id == "s1"
    assert h.core.leases[assign.job_id].deadline == h.now + h.config.lease_ttl_s


def test_a_dropped_lease_that_held_a_commit_permit_waits_for_its_deadline_then_verifies() -> None:
    h = Harness()
    post, jobs = make_post("p1", [Target("sandbox", "acme")], h.now)
    h.add(post, jobs)
    assign = one_assign(h.open("s1"))
    h.ack("s1", assign.job_id, assign.lease_epoch)
    h.commit("s1", assign.job_id, assign.lease_epoch)
    h.advance(h.config.heartbeat_interval_s * 3)
    assert wire(beat(h, "s1", []))[0][1].WhichOneof("msg") == "heartbeat_ack"
    assert h.core.leases[assign.job_id].session_id is None  # no longer renewed
    h.advance(h.config.lease_ttl_s + h.config.expiry_margin_s + 0.01)
    beat(h, "s1", [])
    rerun = one_assign(h.tick())
    assert rerun.job_id == assign.job_id and rerun.verify_first
