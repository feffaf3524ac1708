"""A worker lost after its commit permit: its job is rerun (looking first) once the commit bound
the worker gave has passed, not at its lease deadline, and never earlier than either."""

from __future__ import annotations

from lease_harness import T0, Harness, assigns, make_post

from coordinator.domain import JobStatus, Target
from coordinator.leasing import commands as c
from coordinator.leasing.state import DEFAULT_EXPIRY_MARGIN_S, DEFAULT_LEASE_TTL_S

A = Target("sandbox", "a")
MARGIN = DEFAULT_EXPIRY_MARGIN_S


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
