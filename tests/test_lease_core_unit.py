"""The lease protocol, scenario by scenario, against the pure LeaseCore in virtual time.

Every effect batch goes through tests/lease_harness.py's model store, whose compare-and-set check
fails the test on any write over a row that moved. What is asserted is what a worker or an
operator would see: the messages sent, and the jobs, posts, devices and audit log as stored.
"""

from __future__ import annotations

import dataclasses

import pytest
from lease_harness import (
    T0,
    Harness,
    assigns,
    make_post,
    messages,
    one_assign,
)

from coordinator.convert import job_pb
from coordinator.domain import (
    ErrorClass,
    Job,
    JobStatus,
    LoginState,
    PostStatus,
    StepLogEntry,
    Target,
)
from coordinator.errors import FailedPrecondition
from coordinator.gates import Quota
from coordinator.leasing.core import LeaseConfig
from coordinator.leasing.effects import Effects
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

ACME = Target("sandbox", "acme")
OTHER = Target("sandbox", "other")
TTL = 15.0
MARGIN = 1.0
CONFIG = LeaseConfig(
    heartbeat_interval_s=5.0,
    lease_ttl_s=TTL,
    expiry_margin_s=MARGIN,
    commit_min_left_s=2.0,
    claim_timeout_s=40.0,
    run_timeout_s=60.0,
    restart_grace_s=TTL,
)


@pytest.fixture
def h() -> Harness:
    return Harness(config=CONFIG)


def publish(h: Harness, post_id: str, *targets: Target, **kw: object) -> list[str]:
    post, jobs = make_post(post_id, targets or (ACME,), h.now, **kw)  # type: ignore[arg-type]
    h.add(post, jobs)
    return [j.id for j in jobs]


def snapshot(h: Harness) -> dict[str, Job]:
    return {k: dataclasses.replace(v) for k, v in h.store.jobs.items()}


def post_status(h: Harness, post_id: str) -> PostStatus:
    return h.store.posts[post_id].status


def assert_changed_nothing(h: Harness, before: dict[str, Job], fx: Effects) -> None:
    assert fx.batch.job_writes == []
    assert snapshot(h) == before


# ---- assignment ----------------------------------------------------------------------------


def test_assign_carries_epoch_attempt_deadline_and_the_content(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1", device="A"), "s1")
    assert (a.job_id, a.lease_epoch, a.attempt, a.max_attempts) == (job_id, 1, 1, 3)
    assert a.lease_deadline_unix_ms == int((T0 + TTL) * 1000)
    assert (a.platform, a.account, a.text) == ("sandbox", "acme", "hello")
    assert a.platform_key.startswith("pr-") and not a.verify_first
    stored = h.job(job_id)
    assert (stored.status, stored.lease_epoch, stored.attempt, stored.device_id) == (
        JobStatus.CLAIMED,
        1,
        1,
        "A",
    )
    assert stored.lease_expires_at == T0 + TTL
    (leased,) = h.store.actions("JOB_LEASED", job_id)
    assert leased.details["epoch"] == 1

    # The next lease of the same job is epoch + 1 and counts another attempt.
    h.lost("s1")
    b = one_assign(h.open("s2", device="B"), "s2")
    assert (b.job_id, b.lease_epoch, b.attempt) == (job_id, 2, 2)


def test_never_more_assigns_than_slots_and_a_result_frees_one(h: Harness) -> None:
    ids = publish(h, "p1", *(Target("sandbox", f"a{n}") for n in range(5)))
    first = assigns(h.open("s1", slots=2))
    assert len(first) == 2
    assert sum(h.job(j).status is JobStatus.CLAIMED for j in ids) == 2
    assert assigns(h.run(h.core.dispatch(h.now))) == []  # no credit left
    assert assigns(h.tick()) == []

    done = first[0]
    fx = h.success("s1", done.job_id, done.lease_epoch)
    (ack,) = messages(fx, "result_ack", "s1")
    assert ack.result_ack.accepted
    nxt = one_assign(fx, "s1")
    assert nxt.job_id not in (first[0].job_id, first[1].job_id)
    assert len(h.core.sessions["s1"].jobs) == 2


def test_a_draining_worker_gets_no_new_work(h: Harness) -> None:
    publish(h, "p1", ACME, OTHER)
    a = one_assign(h.open("s1", slots=1))
    h.run(h.core.goodbye("s1", h.now))
    fx = h.success("s1", a.job_id, a.lease_epoch)
    assert messages(fx, "result_ack")[0].result_ack.accepted
    assert assigns(fx) == []
    assert one_assign(h.open("s2"), "s2").job_id != a.job_id


def test_a_worker_gets_only_targets_it_serves(h: Harness) -> None:
    (x_job,) = publish(h, "p1", Target("x", "acme"))
    assert assigns(h.open("s1", capabilities=(Target("sandbox", "*"),))) == []
    assert assigns(h.open("s2", capabilities=(Target("x", "other"),))) == []
    assert one_assign(h.open("s3", capabilities=(Target("x", "acme"),))).job_id == x_job


# ---- fencing: stale epochs -----------------------------------------------------------------


def test_stale_epoch_messages_are_refused_and_change_nothing(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    old = one_assign(h.open("s1", device="A"))
    h.lost("s1")
    new = one_assign(h.open("s2", device="B"))
    assert new.lease_epoch == old.lease_epoch + 1
    before = snapshot(h)

    for sid in ("s2", "s3"):  # the new holder quoting the old epoch; another stream
        if sid == "s3":
            h.open("s3", device="C")
            before = snapshot(h)
        fx = h.ack(sid, job_id, old.lease_epoch)
        (drop,) = messages(fx, "drop", sid)
        assert (drop.drop.job_id, drop.drop.lease_epoch) == (job_id, old.lease_epoch)
        assert "stale lease epoch 1" in drop.drop.reason
        assert_changed_nothing(h, before, fx)

        entry = StepLogEntry("compose", "INFO", "typing", h.now)
        fx = h.run(h.core.log(sid, job_id, old.lease_epoch, entry, h.now))
        assert len(messages(fx, "drop", sid)) == 1
        assert fx.batch.logs == []

        fx = h.commit(sid, job_id, old.lease_epoch)
        assert messages(fx, "commit_grant") == []
        (deny,) = messages(fx, "commit_deny", sid)
        assert deny.commit_deny.lease_epoch == old.lease_epoch
        assert_changed_nothing(h, before, fx)

        fx = h.success(sid, job_id, old.lease_epoch)
        (ack,) = messages(fx, "result_ack", sid)
        assert not ack.result_ack.accepted
        assert_changed_nothing(h, before, fx)

        fx = h.failure(sid, job_id, old.lease_epoch, pb.ERROR_CLASS_INVALID_CONTENT)
        assert not messages(fx, "result_ack", sid)[0].result_ack.accepted
        assert_changed_nothing(h, before, fx)

    # Someone else's current epoch from another stream is refused just the same.
    fx = h.commit("s3", job_id, new.lease_epoch)
    assert messages(fx, "commit_grant") == [] and len(messages(fx, "commit_deny")) == 1
    fx = h.success("s3", job_id, new.lease_epoch)
    assert not messages(fx, "result_ack")[0].result_ack.accepted
    # The holder of the current epoch is unaffected.
    assert len(messages(h.commit("s2", job_id, new.lease_epoch), "commit_grant", "s2")) == 1


def test_a_success_for_epoch_zero_is_not_a_late_success(h: Harness) -> None:
    """Epoch 0 means "no permit was ever granted": a default-valued or forged result for it must
    not mark an unpublished job SUCCEEDED."""
    (job_id,) = publish(h, "p1")
    h.open("s1", device="A")
    before = snapshot(h)
    fx = h.success("s1", job_id, 0)
    assert not messages(fx, "result_ack")[0].result_ack.accepted
    assert_changed_nothing(h, before, fx)


def test_unknown_job_is_refused(h: Harness) -> None:
    h.open("s1")
    fx = h.success("s1", "nope", 1)
    (ack,) = messages(fx, "result_ack")
    assert not ack.result_ack.accepted and "nope" in ack.result_ack.reason
    assert "nope" in messages(h.ack("s1", "nope", 1), "drop")[0].drop.reason


# ---- commit permits ------------------------------------------------------------------------


def test_commit_grant_is_written_before_it_is_sent(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1", device="A"))
    h.ack("s1", job_id, a.lease_epoch)
    fx = h.commit("s1", job_id, a.lease_epoch)
    (grant,) = messages(fx, "commit_grant", "s1")
    assert (grant.commit_grant.job_id, grant.commit_grant.lease_epoch) == (job_id, 1)
    assert grant.commit_grant.lease_deadline_unix_ms == int((T0 + TTL) * 1000)
    # The batch the shell commits first carries the permit.
    (write,) = fx.batch.job_writes
    assert write.job.committed_epoch == 1
    assert write.expected_epoch == 1 and write.expected_statuses == {JobStatus.RUNNING}
    assert h.job(job_id).committed_epoch == 1
    assert [r.committed for r in fx.batch.runs] == [True]
    assert len(h.store.actions("JOB_COMMIT_GRANTED", job_id)) == 1


def test_commit_is_denied_near_the_deadline_until_renewed(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1"))
    h.advance(TTL - 1.0)  # 1 s left, 2 s needed
    fx = h.commit("s1", job_id, a.lease_epoch)
    (deny,) = messages(fx, "commit_deny")
    assert "renew first" in deny.commit_deny.reason
    assert h.job(job_id).committed_epoch == 0
    ack = messages(h.heartbeat("s1", seq=7), "heartbeat_ack")[0].heartbeat_ack
    assert (ack.seq, ack.lease_deadline_unix_ms) == (7, int((h.now + TTL) * 1000))
    assert len(messages(h.commit("s1", job_id, a.lease_epoch), "commit_grant")) == 1


def test_require_confirm_denies_the_commit_until_an_operator_confirms(h: Harness) -> None:
    (job_id,) = publish(h, "p1", require_confirm=True)
    a = one_assign(h.open("s1"))
    assert a.require_confirm
    h.ack("s1", job_id, a.lease_epoch)
    deny = messages(h.commit("s1", job_id, a.lease_epoch), "commit_deny")[0].commit_deny
    assert "confirmation" in deny.reason
    h.run(h.core.awaiting_confirm("s1", job_id, a.lease_epoch, h.now))
    assert h.job(job_id).status is JobStatus.AWAITING_CONFIRM
    deny = messages(h.commit("s1", job_id, a.lease_epoch), "commit_deny")[0].commit_deny
    assert "AWAITING_CONFIRM" in deny.reason

    fx = h.run(h.core.confirm(job_id, "user:alice", h.now))
    (confirm,) = messages(fx, "confirm", "s1")
    assert confirm.confirm.lease_epoch == a.lease_epoch
    assert h.job(job_id).status is JobStatus.RUNNING
    assert h.store.actions("JOB_CONFIRMED", job_id)[0].actor == "user:alice"
    assert len(messages(h.commit("s1", job_id, a.lease_epoch), "commit_grant")) == 1


def test_only_an_awaiting_job_can_be_confirmed(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    with pytest.raises(FailedPrecondition, match="QUEUED"):
        h.core.confirm(job_id, "user:alice", h.now)


# ---- stream loss ---------------------------------------------------------------------------


def test_stream_lost_before_the_permit_requeues_at_once(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1", device="A"))
    h.ack("s1", job_id, a.lease_epoch)
    fx = h.lost("s1", "EOF")
    stored = h.job(job_id)
    assert (stored.status, stored.attempt, stored.verify_first) == (JobStatus.QUEUED, 1, False)
    assert stored.not_before == h.now and stored.lease_expires_at is None
    (audit,) = h.store.actions("JOB_STUCK_RECOVERY", job_id)
    assert audit.details["phase"] == "running" and audit.details["next"] == "QUEUED"
    assert "stream lost" in str(audit.details["reason"])
    assert [a.action for a in fx.batch.audits].count("DEVICE_DISCONNECTED") == 1
    b = one_assign(h.open("s2", device="B"))
    assert (b.lease_epoch, b.attempt, b.verify_first) == (2, 2, False)


def test_stream_lost_on_the_last_attempt_fails_the_job(h: Harness) -> None:
    (job_id,) = publish(h, "p1", max_attempts=1)
    one_assign(h.open("s1"))
    h.lost("s1")
    stored = h.job(job_id)
    assert stored.status is JobStatus.FAILED
    assert "lease lost" in stored.last_error


def test_stream_lost_after_the_permit_waits_for_the_deadline_then_verifies(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1", device="A"))
    h.ack("s1", job_id, a.lease_epoch)
    h.commit("s1", job_id, a.lease_epoch)
    h.lost("s1")
    h.open("s2", device="B", slots=1)
    assert h.job(job_id).status is JobStatus.RUNNING  # still A's: it may be publishing

    h.now = T0 + TTL + MARGIN  # the deadline plus the margin, not past it
    h.heartbeat("s2")
    assert assigns(h.tick()) == []
    assert h.job(job_id).status is JobStatus.RUNNING

    h.now = T0 + TTL + MARGIN + 0.01
    h.heartbeat("s2")
    fx = h.tick()
    b = one_assign(fx, "s2")
    assert (b.job_id, b.lease_epoch, b.verify_first) == (job_id, 2, True)
    assert h.job(job_id).verify_first
    (audit,) = h.store.actions("JOB_STUCK_RECOVERY", job_id)
    assert audit.details["phase"] == "committed"


def detach(h: Harness, sid: str) -> Effects:
    """The stream ended after Goodbye(reconnecting): its worker lives and dials again."""
    return h.run(h.core.session_lost(sid, h.now, reason="fan-out ended", detached=True))


def test_a_detached_stream_keeps_an_uncommitted_lease_for_the_reconnect(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1", device="A"))
    h.ack("s1", job_id, a.lease_epoch)
    h.advance(2)
    fx = detach(h, "s1")
    assert "s1" not in h.core.sessions
    stored = h.job(job_id)
    assert (stored.status, stored.lease_epoch, stored.attempt) == (JobStatus.RUNNING, 1, 1)
    assert h.store.actions("JOB_STUCK_RECOVERY", job_id) == []
    (lost,) = h.store.actions("DEVICE_DISCONNECTED", "A")
    assert str(lost.details["reason"]).startswith("detached: reconnecting")
    assert lost.details["held"] == [job_id]
    # Another worker gets nothing of it meanwhile.
    assert assigns(h.open("s2", device="B")) == []
    assert assigns(fx) == []

    h.advance(1)  # the worker's reconnect resumes it by epoch, with a new deadline
    fx = h.open("s3", device="A", held=[(job_id, a.lease_epoch)])
    (welcome,) = messages(fx, "welcome", "s3")
    assert list(welcome.welcome.resumed) == [
        wg.HeldJob(job_id=job_id, lease_epoch=a.lease_epoch, committed=False)
    ]
    assert h.core.leases[job_id].deadline == h.now + TTL
    h.commit("s3", job_id, a.lease_epoch)
    fx = h.success("s3", job_id, a.lease_epoch)
    assert messages(fx, "result_ack")[0].result_ack.accepted
    stored = h.job(job_id)
    assert (stored.status, stored.attempt) == (JobStatus.SUCCEEDED, 1)


def test_a_detached_lease_nobody_resumes_is_recovered_at_its_deadline(h: Harness) -> None:
    """As after heartbeat silence: a worker that said it reconnects and never did (it died, or
    lied) keeps the job no longer than its lease's deadline, plus the margin."""
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1", device="A"))
    h.ack("s1", job_id, a.lease_epoch)
    detach(h, "s1")
    h.open("s2", device="B")
    h.now = T0 + TTL + MARGIN  # the deadline plus the margin, not past it
    h.heartbeat("s2")
    assert assigns(h.tick()) == []
    assert h.job(job_id).status is JobStatus.RUNNING

    h.now = T0 + TTL + MARGIN + 0.01
    h.heartbeat("s2")
    b = one_assign(h.tick(), "s2")
    assert (b.job_id, b.lease_epoch, b.attempt, b.verify_first) == (job_id, 2, 2, False)
    (audit,) = h.store.actions("JOB_STUCK_RECOVERY", job_id)
    assert audit.details["reason"] == "lease deadline passed"
    # The worker coming back this late holds an epoch that is over: refused, it drops the job.
    fx = h.open("s3", device="A", held=[(job_id, a.lease_epoch)])
    assert list(messages(fx, "welcome", "s3")[0].welcome.resumed) == []


def test_a_late_success_from_the_committed_epoch_wins_over_a_newer_lease(h: Harness) -> None:
    publish(h, "p1", ACME, OTHER)  # the other job keeps the post open
    a = one_assign(h.open("s1", device="A"), "s1")
    job_id = a.job_id
    h.commit("s1", job_id, a.lease_epoch)
    h.lost("s1")
    h.advance(TTL + MARGIN + 1)
    h.tick()
    fx = h.open("s2", device="B", slots=2)
    b = next(x for x in assigns(fx, "s2") if x.job_id == job_id)
    assert b.verify_first and b.lease_epoch == 2

    h.open("s3", device="A")  # A comes back and reports what it published
    fx = h.success("s3", job_id, a.lease_epoch)
    assert messages(fx, "result_ack", "s3")[0].result_ack.accepted
    (cancel,) = messages(fx, "cancel", "s2")
    assert (cancel.cancel.job_id, cancel.cancel.lease_epoch) == (job_id, 2)
    stored = h.job(job_id)
    assert stored.status is JobStatus.SUCCEEDED
    assert stored.result_post_id == f"p-{job_id}"
    assert job_id not in h.core.sessions["s2"].jobs  # B's slot is free again

    # B's own report afterwards is a harmless no-op.
    fx = h.success("s2", job_id, b.lease_epoch, found_existing=True)
    ack = messages(fx, "result_ack")[0].result_ack
    assert ack.accepted and ack.reason == "already succeeded"
    assert fx.batch.job_writes == []


def test_a_late_success_finds_a_job_that_met_a_login_wall_meanwhile(h: Harness) -> None:
    (job_id, _) = publish(h, "p1", ACME, OTHER)
    a = next(x for x in assigns(h.open("s1", device="A", slots=2)) if x.job_id == job_id)
    h.commit("s1", job_id, a.lease_epoch)
    h.lost("s1")
    h.advance(TTL + MARGIN + 1)
    h.tick()
    b = next(x for x in assigns(h.open("s2", device="B", slots=2)) if x.job_id == job_id)
    assert b.verify_first
    h.failure("s2", job_id, b.lease_epoch, pb.ERROR_CLASS_AUTH_REQUIRED, message="login wall")
    assert h.job(job_id).status is JobStatus.NEEDS_LOGIN

    h.open("s3", device="A")
    fx = h.success("s3", job_id, a.lease_epoch)
    assert messages(fx, "result_ack")[0].result_ack.accepted
    assert h.job(job_id).status is JobStatus.SUCCEEDED


# ---- heartbeats and stuck leases -----------------------------------------------------------


def test_heartbeat_silence_past_the_ttl_kills_the_session_and_recovers(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1", device="A"))
    h.open("s2", device="B")
    h.advance(TTL - 1)
    h.heartbeat("s2")
    assert h.tick().close_sessions == []
    h.advance(1.5)  # s1 silent for TTL + 0.5 s; s2 heard 1.5 s ago
    fx = h.tick()
    assert fx.close_sessions == ["s1"]
    assert "s1" not in h.core.sessions and "s2" in h.core.sessions
    b = one_assign(fx, "s2")
    assert (b.job_id, b.lease_epoch) == (job_id, a.lease_epoch + 1)
    (lost,) = h.store.actions("DEVICE_DISCONNECTED", "A")
    assert "no heartbeat" in str(lost.details["reason"])
    # Last seen is when A was last heard from (its Hello), not when it was declared dead.
    assert h.store.devices["A"].last_seen_at == T0
    assert h.core.devices["B"].last_seen_at == T0 + TTL - 1  # heartbeats are not written


def test_a_job_claimed_but_never_started_is_recovered(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1", slots=1))
    for _ in range(4):
        h.advance(10)
        h.heartbeat("s1")
        h.tick()
    assert h.job(job_id).status is JobStatus.CLAIMED  # 40 s: at the limit, not past it
    h.advance(1)
    h.heartbeat("s1")
    fx = h.tick()
    (drop,) = messages(fx, "drop", "s1")
    assert drop.drop.lease_epoch == a.lease_epoch and "stuck" in drop.drop.reason
    again = one_assign(fx, "s1")  # the slot it held is free: the job comes back, re-leased
    assert again.lease_epoch == a.lease_epoch + 1 and not again.verify_first
    (audit,) = h.store.actions("JOB_STUCK_RECOVERY", job_id)
    assert audit.details["phase"] == "claimed"


def test_a_run_past_its_timeout_is_recovered(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1", device="A"))
    h.ack("s1", job_id, a.lease_epoch)
    h.open("s2", device="B")
    for _ in range(6):
        h.advance(10)
        h.heartbeat("s1")
        h.heartbeat("s2")
        assert messages(h.tick(), "drop") == []
    h.advance(1)
    h.heartbeat("s1")
    h.heartbeat("s2")
    fx = h.tick()
    assert len(messages(fx, "drop", "s1")) == 1
    b = assigns(fx)
    assert len(b) == 1 and b[0].lease_epoch == 2
    assert h.store.actions("JOB_STUCK_RECOVERY", job_id)[0].details["phase"] == "running"


def test_a_stuck_run_holding_its_permit_is_reassigned_only_after_its_deadline(
    h: Harness,
) -> None:
    """It may be in the middle of publishing: a Drop cannot stop that, so the verifying rerun
    must not look before the stuck worker's own deadline (no longer renewed) has passed."""
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1", device="A"))
    h.ack("s1", job_id, a.lease_epoch)
    h.commit("s1", job_id, a.lease_epoch)
    h.open("s2", device="B")
    for _ in range(7):
        h.advance(10)
        h.heartbeat("s1")
        h.heartbeat("s2")
        fx = h.tick()
    assert len(messages(fx, "drop", "s1")) == 1  # 70 s > run timeout
    assert assigns(fx) == []
    deadline = h.now + TTL  # set by A's last heartbeat, which A believes
    assert h.job(job_id).status is JobStatus.RUNNING

    h.advance(5)
    h.heartbeat("s1")  # A's heartbeats no longer renew the dropped lease
    h.heartbeat("s2")
    assert assigns(h.tick()) == []
    h.now = deadline + MARGIN + 0.01
    h.heartbeat("s1")
    h.heartbeat("s2")
    fx = h.tick()
    (b,) = assigns(fx)
    assert (b.job_id, b.lease_epoch, b.verify_first) == (job_id, 2, True)


# ---- reconnect and restart -----------------------------------------------------------------


def test_reconnect_within_the_deadline_resumes_by_epoch(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1", device="A"))
    h.ack("s1", job_id, a.lease_epoch)
    h.commit("s1", job_id, a.lease_epoch)
    h.lost("s1")
    h.advance(5)
    fx = h.open("s2", device="A", held=[(job_id, a.lease_epoch)])
    (welcome,) = messages(fx, "welcome", "s2")
    assert list(welcome.welcome.resumed) == [
        wg.HeldJob(job_id=job_id, lease_epoch=a.lease_epoch, committed=True)
    ]
    h.advance(TTL)  # past the old deadline: the resumed lease has a new one
    h.heartbeat("s2")
    h.tick()
    fx = h.success("s2", job_id, a.lease_epoch)
    assert messages(fx, "result_ack")[0].result_ack.accepted
    assert h.job(job_id).status is JobStatus.SUCCEEDED


def test_a_wrong_epoch_or_another_device_is_not_resumed(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1", device="A"))
    h.commit("s1", job_id, a.lease_epoch)
    h.lost("s1")
    fx = h.open("s2", device="A", held=[(job_id, a.lease_epoch + 1)])
    assert list(messages(fx, "welcome")[0].welcome.resumed) == []
    fx = h.open("s3", device="B", held=[(job_id, a.lease_epoch)])
    assert list(messages(fx, "welcome")[0].welcome.resumed) == []
    assert h.core.leases[job_id].session_id is None
    fx = h.commit("s3", job_id, a.lease_epoch)
    assert messages(fx, "commit_grant") == []


def test_a_new_stream_of_the_same_device_supersedes_the_old_one(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1", device="A"))
    h.commit("s1", job_id, a.lease_epoch)
    fx = h.open("s2", device="A", held=[(job_id, a.lease_epoch)])
    assert fx.close_sessions == ["s1"]
    assert [x.job_id for x in messages(fx, "welcome")[0].welcome.resumed] == [job_id]
    assert h.core.leases[job_id].session_id == "s2"


def test_restart_keeps_leases_for_the_grace_and_recovers_the_absent(h: Harness) -> None:
    j1, j2 = publish(h, "p1", ACME, OTHER)
    a = one_assign(h.open("s1", device="A"))
    b = one_assign(h.open("s2", device="B"))
    by_job = {a.job_id: ("s1", a), b.job_id: ("s2", b)}
    for sid, x in by_job.values():
        h.ack(sid, x.job_id, x.lease_epoch)
    h.advance(3)

    h.restart()
    assert h.core.sessions == {}
    assert {j: lease.deadline for j, lease in h.core.leases.items()} == {
        j1: h.now + TTL,
        j2: h.now + TTL,
    }
    h.advance(TTL - 1)
    _, xa = by_job[j1]
    dev_a = "A" if xa is a else "B"
    fx = h.open("s3", device=dev_a, held=[(j1, xa.lease_epoch)])
    assert [r.job_id for r in messages(fx, "welcome")[0].welcome.resumed] == [j1]
    assert assigns(fx) == []  # its one slot holds the resumed job
    h.advance(1 + MARGIN + 0.01)  # the grace + margin of the absent device's lease is over
    h.heartbeat("s3")
    fx = h.tick()
    assert h.job(j2).status is JobStatus.QUEUED and h.job(j2).attempt == 1
    assert not h.job(j2).verify_first  # it never had a permit
    assert h.job(j1).status is JobStatus.RUNNING
    fx = h.success("s3", j1, xa.lease_epoch)
    assert messages(fx, "result_ack")[0].result_ack.accepted
    nxt = one_assign(fx, "s3")
    assert (nxt.job_id, nxt.lease_epoch, nxt.attempt) == (j2, 2, 2)


def test_restart_remembers_a_granted_permit(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1", device="A"))
    h.commit("s1", job_id, a.lease_epoch)
    h.restart()
    h.advance(TTL + MARGIN + 0.01)
    fx = h.tick()
    assert fx.batch.job_writes[-1].job.verify_first
    b = one_assign(h.open("s2", device="B"))
    assert b.verify_first and b.lease_epoch == 2


# ---- rate limits and quotas ----------------------------------------------------------------


def test_a_closed_gate_is_every_waiting_jobs_next_try_and_a_plain_retry_waits_for_it(
    h: Harness,
) -> None:
    (limited,) = publish(h, "p1", ACME)
    (queued,) = publish(h, "p2", ACME)
    (other,) = publish(h, "p3", OTHER)
    a = one_assign(h.open("s1", slots=1))  # one slot: p2 and p3 wait
    assert a.job_id == limited
    before = h.now
    retry_at = h.now + 120
    h.failure("s1", limited, a.lease_epoch, pb.ERROR_CLASS_RATE_LIMITED, retry_at=retry_at)
    h.settle()
    # The account's waiting job shows when it can really run; another account's is untouched.
    assert (h.job(queued).status, h.job(queued).not_before) == (JobStatus.QUEUED, retry_at)
    assert h.job(other).not_before == before
    h.advance(10)
    h.run(h.core.retry_now(queued, "user:op", False, h.now))
    assert h.job(queued).not_before == retry_at  # a plain retry still waits for the gate
    h.run(h.core.retry_now(queued, "user:op", True, h.now))
    assert h.job(queued).not_before == h.now  # --force: now, through the gate


def test_a_rate_limit_closes_the_gate_for_every_worker_until_retry_at(h: Harness) -> None:
    (limited,) = publish(h, "p1", ACME)
    (waiting,) = publish(h, "p2", ACME)
    (elsewhere,) = publish(h, "p3", OTHER)
    a = one_assign(h.open("s1", device="A", slots=1))
    assert a.job_id == limited
    h.open("s2", device="B", slots=3)  # takes waiting and elsewhere
    retry_at = h.now + 120
    fx = h.failure(
        "s1", limited, a.lease_epoch, pb.ERROR_CLASS_RATE_LIMITED, message="429", retry_at=retry_at
    )
    assert messages(fx, "result_ack")[0].result_ack.accepted
    stored = h.job(limited)
    assert (stored.status, stored.not_before, stored.rate_limited_count) == (
        JobStatus.QUEUED,
        retry_at,
        1,
    )
    assert stored.counted_attempts == 0  # the 429 did not use up an attempt
    assert h.store.gates[ACME].closed_until == retry_at
    assert h.store.actions("GATE_CLOSED", str(ACME))[0].details["until"] == retry_at
    assert assigns(fx) == []

    # s2 took the other two before the 429. Finish them: the ACME job must not come back early.
    for x in list(h.core.sessions["s2"].jobs):
        epoch = h.job(x).lease_epoch
        h.success("s2", x, epoch)
    (third,) = publish(h, "p4", ACME)
    h.open("s3", device="C", slots=5)
    while h.now + 5 < retry_at:
        h.advance(5)
        for sid in ("s1", "s2", "s3"):
            h.heartbeat(sid)
        assert assigns(h.tick()) == [], h.now - T0
    assert h.job(limited).status is JobStatus.QUEUED and h.job(third).status is JobStatus.QUEUED
    h.now = retry_at
    for sid in ("s1", "s2", "s3"):
        h.heartbeat(sid)
    assert {x.job_id for x in assigns(h.tick())} == {limited, third}
    assert {waiting, elsewhere} <= {
        j for j, job in h.store.jobs.items() if job.status.value == "SUCCEEDED"
    }


def test_a_rate_limit_reported_after_its_instant_holds_the_account_a_second(h: Harness) -> None:
    """A 429 with Retry-After: 1 whose result comes in 2 s late (held across a reconnect): the
    account's jobs go out again a second later, not after the 60 s of a 429 without a time."""
    (limited,) = publish(h, "p1", ACME)
    a = one_assign(h.open("s1", device="A", slots=2))
    fx = h.failure(
        "s1", limited, a.lease_epoch, pb.ERROR_CLASS_RATE_LIMITED, message="429", retry_at=h.now - 2
    )
    assert messages(fx, "result_ack")[0].result_ack.accepted
    assert h.store.gates[ACME].closed_until == h.now + 1.0
    (later,) = publish(h, "p2", ACME)
    h.advance(1.0)
    h.heartbeat("s1")
    assert {x.job_id for x in assigns(h.tick())} == {limited, later}


def test_a_quota_of_two_lets_exactly_two_through() -> None:
    h = Harness(config=CONFIG, quotas={"sandbox": Quota(2, 3600.0)})
    ids = [publish(h, f"p{n}", ACME)[0] for n in range(3)]
    fx = h.open("s1", slots=5)
    got = assigns(fx)
    assert [x.job_id for x in got] == ids[:2]
    for x in got:
        h.commit("s1", x.job_id, x.lease_epoch)
        h.success("s1", x.job_id, x.lease_epoch)
    h.advance(3600 - 1)
    h.heartbeat("s1")
    assert assigns(h.tick()) == []
    h.advance(1)
    h.heartbeat("s1")
    assert [x.job_id for x in assigns(h.tick())] == [ids[2]]


def test_a_quota_reservation_is_freed_by_a_lease_that_never_committed() -> None:
    h = Harness(config=CONFIG, quotas={"sandbox": Quota(1, 3600.0)})
    first = publish(h, "p1", ACME)[0]
    second = publish(h, "p2", ACME)[0]
    a = one_assign(h.open("s1", slots=2))
    assert a.job_id == first
    fx = h.failure("s1", first, a.lease_epoch, pb.ERROR_CLASS_INVALID_CONTENT, message="too long")
    assert [x.job_id for x in assigns(fx)] == [second]


# ---- login walls, exhausted attempts, finished jobs, cancel ---------------------------------


def test_auth_required_needs_a_login_and_a_login_check_requeues(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1", device="A"))
    h.failure("s1", job_id, a.lease_epoch, pb.ERROR_CLASS_AUTH_REQUIRED, message="401 token")
    assert h.job(job_id).status is JobStatus.NEEDS_LOGIN
    state, _, message = h.store.devices["A"].logins[ACME]
    assert (state, message) == (LoginState.NEEDS_LOGIN, "401 token")
    h.advance(3600)
    h.heartbeat("s1")
    assert assigns(h.tick()) == []  # no automatic retry

    fx, requeued = h.core.login_checked("A", ACME, LoginState.NEEDS_LOGIN, "still", "user:o", h.now)
    assert requeued == [] and assigns(h.run(fx)) == []
    fx, requeued = h.core.login_checked("A", ACME, LoginState.LOGGED_IN, "ok", "user:o", h.now)
    h.run(fx)
    assert requeued == [job_id]
    assert h.store.devices["A"].logins[ACME][0] is LoginState.LOGGED_IN
    b = one_assign(fx, "s1")
    assert (b.job_id, b.lease_epoch) == (job_id, 2)


def test_transient_failures_until_max_attempts_fail_the_job_and_the_post(h: Harness) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1"))
    for attempt in (1, 2, 3):
        assert a.attempt == attempt
        fx = h.failure("s1", job_id, a.lease_epoch, pb.ERROR_CLASS_TRANSIENT, message="503")
        assert assigns(fx) == []  # backing off
        h.settle()
        if attempt < 3:
            assert post_status(h, "p1") is PostStatus.SCHEDULED
            assert h.job(job_id).not_before == h.now + 5.0 * 2 ** (attempt - 1)  # rand 0.5
            h.now = h.job(job_id).not_before
            h.heartbeat("s1")
            a = one_assign(h.tick())
    stored = h.job(job_id)
    assert stored.status is JobStatus.FAILED
    assert stored.last_error == "3 attempts failed; last: 503"
    assert stored.last_error_class is ErrorClass.TRANSIENT
    assert post_status(h, "p1") is PostStatus.FAILED


@pytest.mark.parametrize("not_created", [False, True])
def test_a_failure_after_the_permit_is_in_doubt_unless_the_platform_said_not_created(
    h: Harness, not_created: bool
) -> None:
    (job_id,) = publish(h, "p1")
    a = one_assign(h.open("s1"))
    h.ack("s1", job_id, a.lease_epoch)
    h.commit("s1", job_id, a.lease_epoch)
    h.failure(
        "s1",
        job_id,
        a.lease_epoch,
        pb.ERROR_CLASS_TRANSIENT,
        message="503",
        not_created=not_created,
    )
    h.settle()
    # "Not created" (a documented error body) is a plain retry; anything else may have posted.
    assert h.job(job_id).verify_first is (not not_created)
    h.now = h.job(job_id).not_before
    h.heartbeat("s1")
    b = one_assign(h.tick())
    assert b.verify_first is (not not_created)


def test_a_result_for_an_already_succeeded_job_is_an_accepted_no_op(h: Harness) -> None:
    j1, _ = publish(h, "p1", ACME, OTHER)  # the other job keeps the post open
    a = next(x for x in assigns(h.open("s1", slots=2)) if x.job_id == j1)
    h.success("s1", j1, a.lease_epoch)
    h.settle()
    before = snapshot(h)
    for epoch in (a.lease_epoch, a.lease_epoch + 5):
        fx = h.success("s1", j1, epoch)
        ack = messages(fx, "result_ack")[0].result_ack
        assert ack.accepted and ack.reason == "already succeeded"
        assert_changed_nothing(h, before, fx)
    fx = h.failure("s1", j1, a.lease_epoch, pb.ERROR_CLASS_TRANSIENT)
    assert messages(fx, "result_ack")[0].result_ack.accepted
    assert_changed_nothing(h, before, fx)


def test_cancel_of_a_committed_job_is_refused_and_an_uncommitted_one_stops(h: Harness) -> None:
    j1, j2 = publish(h, "p1", ACME, OTHER)
    got = {x.job_id: x for x in assigns(h.open("s1", slots=2))}
    h.commit("s1", j1, got[j1].lease_epoch)
    with pytest.raises(FailedPrecondition, match="commit permit granted"):
        h.core.cancel(j1, "user:o", "changed my mind", h.now)
    assert h.job(j1).status is JobStatus.CLAIMED

    fx = h.run(h.core.cancel(j2, "user:o", "changed my mind", h.now))
    (cancel,) = messages(fx, "cancel", "s1")
    assert (cancel.cancel.job_id, cancel.cancel.lease_epoch) == (j2, got[j2].lease_epoch)
    assert h.job(j2).status is JobStatus.CANCELLED
    assert j2 not in h.core.leases and j2 not in h.core.sessions["s1"].jobs
    with pytest.raises(FailedPrecondition, match="already CANCELLED"):
        h.core.cancel(j2, "user:o", "again", h.now)


# ---- post status and publish summaries -----------------------------------------------------


def test_settle_posts_writes_the_derived_status_and_one_summary_per_round(h: Harness) -> None:
    j1, j2 = publish(h, "p1", ACME, OTHER)
    got = {x.job_id: x for x in assigns(h.open("s1", slots=2))}
    h.settle()
    assert post_status(h, "p1") is PostStatus.PUBLISHING
    h.success("s1", j1, got[j1].lease_epoch)
    h.settle()
    assert h.store.actions("PUBLISH_ATTEMPT") == []  # the round is not over yet
    h.failure("s1", j2, got[j2].lease_epoch, pb.ERROR_CLASS_TRANSIENT, message="503")
    h.settle()
    assert post_status(h, "p1") is PostStatus.PUBLISHING  # partial: a retry is waiting
    (first,) = h.store.actions("PUBLISH_ATTEMPT", "p1")
    assert first.details["round"] == 1 and first.details["status"] == "partial_failure"
    targets = first.details["targets"]
    assert targets[str(ACME)]["status"] == "SUCCEEDED"
    assert targets[str(OTHER)]["status"] == "QUEUED"
    assert targets[str(OTHER)]["next_retry_at"] is not None

    h.advance(300)
    h.heartbeat("s1")
    b = one_assign(h.tick())
    h.success("s1", j2, b.lease_epoch)
    h.settle()
    assert post_status(h, "p1") is PostStatus.PUBLISHED
    (retry,) = h.store.actions("PUBLISH_RETRY", "p1")
    assert retry.details["round"] == 2 and retry.details["status"] == "success"
    assert list(retry.details["targets"]) == [str(OTHER)]
    changes = [(a.details["from"], a.details["to"]) for a in h.store.actions("POST_STATUS_CHANGED")]
    assert changes == [("SCHEDULED", "PUBLISHING"), ("PUBLISHING", "PUBLISHED")]
    assert "p1" not in h.core.posts  # finished posts are forgotten


# ---- a job in doubt: looks that never happened do not use up its looks (issue 13) ----------


def in_doubt(h: Harness, max_attempts: int = 3) -> str:
    """A job whose first attempt took its permit, then answered TRANSIENT (no "not created"):
    the platform may have the post, so every later attempt looks first."""
    (job_id,) = publish(h, "p1", max_attempts=max_attempts)
    a = one_assign(h.open("s0", device="D0"))
    h.ack("s0", job_id, a.lease_epoch)
    h.commit("s0", job_id, a.lease_epoch)
    h.failure("s0", job_id, a.lease_epoch, pb.ERROR_CLASS_TRANSIENT, message="timeout")
    h.lost("s0")
    assert h.job(job_id).verify_first and h.job(job_id).status is JobStatus.QUEUED
    return job_id


def next_look(h: Harness, job_id: str, sid: str) -> wg.Assign:
    """The job's next lease, on a new worker, once its backoff has passed."""
    h.now = max(h.now, h.job(job_id).not_before)
    a = one_assign(h.open(sid, device=f"D-{sid}"), sid)
    assert a.job_id == job_id and a.verify_first
    return a


def test_a_job_in_doubt_whose_looks_lose_their_leases_stays_queued_to_look_again(
    h: Harness,
) -> None:
    job_id = in_doubt(h)
    for n in range(1, 11):
        a = next_look(h, job_id, f"s{n}")
        assert not a.verify_only  # a lost look does not use up a publishing attempt either
        h.ack(f"s{n}", job_id, a.lease_epoch)
        h.lost(f"s{n}", "starved")  # before it looked, no permit of its own
        stored = h.job(job_id)
        assert (stored.status, stored.verify_first) == (JobStatus.QUEUED, True)
        # The transient backoff, by the looks lost so far (rand 0.5: no jitter), capped at 300 s.
        assert stored.not_before == h.now + min(300.0, 5.0 * 2 ** (n - 1))
        assert stored.lost_looks == n and stored.counted_attempts == 1
        assert "before it looked" in stored.last_error
        recovery = h.store.actions("JOB_STUCK_RECOVERY", job_id)[-1]
        assert recovery.details["next"] == "QUEUED" and "look_again" in recovery.details
    h.settle()
    assert post_status(h, "p1") is PostStatus.SCHEDULED
    assert h.store.actions("JOB_FAILED", job_id) == []
    assert job_pb(h.job(job_id)).lost_looks == 10  # what GetJob, the CLI and console show
    # The next look that does come back finds the post: the job succeeds, nothing posted again.
    a = next_look(h, job_id, "s11")
    h.success("s11", job_id, a.lease_epoch, found_existing=True)
    assert h.job(job_id).status is JobStatus.SUCCEEDED


@pytest.mark.parametrize("lost_between", [False, True])
def test_looks_that_come_back_transient_still_end_failed_after_twice_max_attempts(
    h: Harness, lost_between: bool
) -> None:
    job_id = in_doubt(h)  # attempt 1 of 3 came back TRANSIENT after its permit
    for n in range(2, 7):  # five looks come back TRANSIENT: 2 x max_attempts in all
        if lost_between:  # a look lost before it looked in between changes nothing
            next_look(h, job_id, f"lost{n}")
            h.lost(f"lost{n}")
            assert h.job(job_id).status is JobStatus.QUEUED
        a = next_look(h, job_id, f"s{n}")
        assert a.verify_only is (n > 3)  # past max_attempts it only looks
        assert lost_between or a.lease_epoch == n
        h.failure(f"s{n}", job_id, a.lease_epoch, pb.ERROR_CLASS_TRANSIENT, message="503")
        h.lost(f"s{n}")
    stored = h.job(job_id)
    assert stored.status is JobStatus.FAILED and stored.verify_first
    assert stored.counted_attempts == 6 and stored.lost_looks == (5 if lost_between else 0)
    assert stored.last_error == "3 attempts failed; last: 503"
