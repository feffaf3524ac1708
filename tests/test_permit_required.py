"""A success counts only after a commit permit, or as a post found by a verify_first attempt:
the lease core refuses anything else (a broken or hostile worker claiming a post it was never
allowed to make), audits it and runs the job again."""

from __future__ import annotations

from lease_harness import T0, Harness, assigns, make_post, messages, one_assign

from coordinator.domain import JobStatus, Target
from coordinator.leasing.core import LeaseConfig

ACME = Target("sandbox", "acme")
TTL = 15.0
CONFIG = LeaseConfig(
    heartbeat_interval_s=5.0, lease_ttl_s=TTL, expiry_margin_s=1.0, commit_min_left_s=2.0
)


def new_job(h: Harness) -> str:
    post, jobs = make_post("p1", (ACME,), h.now)
    h.add(post, jobs)
    return jobs[0].id


def test_a_success_without_a_permit_is_refused_and_the_job_runs_again() -> None:
    h = Harness(config=CONFIG)
    job_id = new_job(h)
    a = one_assign(h.open("s1", device="A"), "s1")
    fx = h.success("s1", job_id, a.lease_epoch, permit=False)
    ack = messages(fx, "result_ack", "s1")[0].result_ack
    assert not ack.accepted and "commit permit" in ack.reason
    assert len(messages(fx, "drop", "s1")) == 1
    job = h.job(job_id)
    assert job.status is not JobStatus.SUCCEEDED and job.result_post_id == ""
    assert len(h.store.actions("JOB_RESULT_REFUSED", job_id)) == 1
    # The job went back to the queue and out again (here to the only worker there is), under a
    # new epoch: the refused claim counted as a lost lease, never as a publish.
    again = [x for x in assigns(fx, "s1") if x.job_id == job_id]
    assert again and again[0].lease_epoch == a.lease_epoch + 1


def test_found_existing_counts_only_on_an_attempt_that_was_told_to_look() -> None:
    h = Harness(config=CONFIG)
    job_id = new_job(h)
    a = one_assign(h.open("s1", device="A"), "s1")
    assert not a.verify_first
    fx = h.success("s1", job_id, a.lease_epoch, found_existing=True)
    assert not messages(fx, "result_ack", "s1")[0].result_ack.accepted

    # A lease lost after its permit makes the next attempt verify_first: its find counts.
    b = next(x for x in assigns(fx, "s1") if x.job_id == job_id)
    h.commit("s1", job_id, b.lease_epoch)
    h.lost("s1")
    h.advance(TTL + 2)
    h.tick()
    c = one_assign(h.open("s2", device="B"), "s2")
    assert c.verify_first and c.job_id == job_id
    fx = h.success("s2", job_id, c.lease_epoch, found_existing=True)
    assert messages(fx, "result_ack", "s2")[0].result_ack.accepted
    assert h.job(job_id).status is JobStatus.SUCCEEDED
    assert h.now > T0
