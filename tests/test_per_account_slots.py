"""Hello.per_account_slots in the lease core: a worker that runs one job per account at a time (a
browser worker: one page per account profile) never holds two jobs of one (platform, account),
whatever their state, and keeps getting work for its other accounts meanwhile."""

from __future__ import annotations

from lease_harness import Harness, assigns, make_post, one_assign
from lease_timing import TTL, lease_config

from coordinator.domain import JobStatus, Target
from postroom.v1 import types_pb2 as pb

A = Target("sandbox", "a")
B = Target("sandbox", "b")
CONFIG = lease_config(claim_timeout_s=40.0, run_timeout_s=60.0)


def queue_posts(h: Harness, target: Target, n: int, prefix: str = "") -> list[str]:
    """n posts to `target`, one job each, queued in order (a second apart)."""
    ids = []
    for i in range(n):
        post, jobs = make_post(f"{prefix or target.account}{i}", (target,), h.now)
        h.add(post, jobs)
        ids.append(jobs[0].id)
        h.advance(1.0)
    return ids


def held_targets(h: Harness, sid: str) -> list[Target]:
    return sorted(h.core.jobs[j].target for j in h.core.sessions[sid].jobs)


def test_one_job_per_account_and_the_other_account_goes_on() -> None:
    h = Harness(config=CONFIG)
    a_jobs = queue_posts(h, A, 3)
    b_jobs = queue_posts(h, B, 3)
    fx = h.open("s1", slots=4, per_account_slots=1)
    got = sorted(x.job_id for x in assigns(fx, "s1"))
    # Four free slots, but only one job per account: the oldest of each.
    assert got == sorted([a_jobs[0], b_jobs[0]])
    assert h.job(a_jobs[1]).status is JobStatus.QUEUED

    # Account b's job finishes: the next job of b goes out, a's still runs alone.
    first_b = next(x for x in assigns(fx, "s1") if x.job_id == b_jobs[0])
    fx = h.success("s1", first_b.job_id, first_b.lease_epoch)
    assert one_assign(fx, "s1").job_id == b_jobs[1]
    assert held_targets(h, "s1") == [A, B]


def test_without_a_bound_every_slot_is_used() -> None:
    h = Harness(config=CONFIG)
    queue_posts(h, A, 3)
    queue_posts(h, B, 3)
    fx = h.open("s1", slots=4)
    assert len(assigns(fx, "s1")) == 4


def test_awaiting_confirmation_and_committing_jobs_hold_their_account() -> None:
    h = Harness(config=CONFIG)
    post, jobs = make_post("c0", (A,), h.now, require_confirm=True)
    h.add(post, jobs)
    h.advance(1.0)
    a_jobs = queue_posts(h, A, 2, prefix="q")
    a = one_assign(h.open("s1", slots=4, per_account_slots=1), "s1")
    assert a.job_id == jobs[0].id
    h.ack("s1", a.job_id, a.lease_epoch)
    fx = h.run(h.core.awaiting_confirm("s1", a.job_id, a.lease_epoch, h.now))
    assert h.job(a.job_id).status is JobStatus.AWAITING_CONFIRM
    fx = h.heartbeat("s1")
    assert assigns(fx) == [] and h.job(a_jobs[0]).status is JobStatus.QUEUED
    h.run(h.core.confirm(a.job_id, "user:op", h.now))
    fx = h.commit("s1", a.job_id, a.lease_epoch)  # publishing now: still holds account a
    h.tick()
    assert assigns(fx) == [] and h.job(a_jobs[0]).status is JobStatus.QUEUED
    fx = h.success("s1", a.job_id, a.lease_epoch)
    assert one_assign(fx, "s1").job_id == a_jobs[0]


def test_another_worker_takes_the_waiting_jobs_of_a_busy_account() -> None:
    h = Harness(config=CONFIG)
    a_jobs = queue_posts(h, A, 2)
    assert one_assign(h.open("s1", slots=4, per_account_slots=1), "s1").job_id == a_jobs[0]
    assert one_assign(h.open("s2", slots=4, per_account_slots=1), "s2").job_id == a_jobs[1]


def test_a_stuck_committed_job_still_holds_its_account_until_its_lease_is_over() -> None:
    """A run stuck after its commit permit is dropped, but its worker may be publishing right
    now: no second job of that account goes to the same worker until that lease is over."""
    h = Harness(config=CONFIG)
    a_jobs = queue_posts(h, A, 2)
    a = one_assign(h.open("s1", slots=4, per_account_slots=1), "s1")
    h.ack("s1", a.job_id, a.lease_epoch)
    h.commit("s1", a.job_id, a.lease_epoch)
    for _ in range(int(CONFIG.run_timeout_s // 5) + 1):  # alive, but the run never ends
        h.advance(5.0)
        fx = h.heartbeat("s1")
        fx.extend(h.tick())
        assert a_jobs[1] not in [x.job_id for x in assigns(fx)]
    assert a.job_id not in h.core.sessions["s1"].jobs  # dropped as stuck...
    assert h.job(a_jobs[1]).status is JobStatus.QUEUED  # ...yet it still holds account a
    h.advance(TTL + 2.0)
    h.heartbeat("s1")
    fx = h.tick()  # the stuck lease is over (recovered, verify first): account a is free again
    assert {x.job_id for x in assigns(fx, "s1")} == {a_jobs[1]}


def test_a_forced_retry_waits_for_the_account_to_be_free_on_that_worker() -> None:
    h = Harness(config=CONFIG)
    first, second = queue_posts(h, A, 2)
    a = one_assign(h.open("s1", slots=4, per_account_slots=1), "s1")
    assert a.job_id == first
    fx = h.failure("s1", first, a.lease_epoch, pb.ERROR_CLASS_INVALID_CONTENT)
    assert h.job(first).status is JobStatus.FAILED
    b = one_assign(fx, "s1")
    assert b.job_id == second
    # Forced through the gate, but not past the worker's one page for account a.
    fx = h.run(h.core.retry_now(first, "user:op", True, h.now))
    assert assigns(fx) == [] and h.job(first).status is JobStatus.QUEUED
    fx = h.success("s1", second, b.lease_epoch)
    assert one_assign(fx, "s1").job_id == first


def test_a_negative_or_absent_bound_means_no_bound() -> None:
    h = Harness(config=CONFIG)
    queue_posts(h, A, 3)
    fx = h.open("s1", slots=2, per_account_slots=0)
    assert len(assigns(fx, "s1")) == 2
    assert h.store.devices["dev-s1"].per_account_slots == 0
    h2 = Harness(config=CONFIG)
    h2.open("s9", slots=2, per_account_slots=1)
    assert h2.store.devices["dev-s9"].per_account_slots == 1
