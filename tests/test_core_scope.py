"""A lease core that holds only some shards (issue 14 phase 2, "spread"): what its workers and
operators see. Against the pure LeaseCore in virtual time and tests/lease_harness.py's model
store, whose compare-and-set check fails the test on any write over a row that moved.

A core of a partial scope hands out only jobs of shards it serves (owned, not leaving), makes
jobs only for targets it owns, refuses commands on another coordinator's shard (NotOwner, gRPC
UNAVAILABLE) before anything is written, and lets evicted shards go with their jobs and gates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grpc
import pytest
from lease_harness import T0, Harness, assigns, make_post, messages, one_assign

from coordinator import operator_commands as op
from coordinator.domain import JobStatus, LoginState, PostStatus, Target
from coordinator.errors import NotOwner
from coordinator.leasing.core import LeaseConfig
from coordinator.leasing.scope import ShardScope
from coordinator.store.shards import shard_of
from postroom.v1 import types_pb2 as pb

COUNT = 4
CONFIG = LeaseConfig(heartbeat_interval_s=5.0, lease_ttl_s=15.0, restart_grace_s=15.0)


def target_in(shard: int, count: int = COUNT) -> Target:
    """A sandbox account whose (platform, account) falls in `shard`."""
    n = 0
    while shard_of("sandbox", f"acct{n}", count) != shard:
        n += 1
    return Target("sandbox", f"acct{n}")


A, B, C = target_in(0), target_in(1), target_in(2)  # owned, owned (leaving in some), not owned


def harness(owned: set[int], leaving: set[int] | None = None) -> Harness:
    h = Harness(config=CONFIG)
    h.core.scope = ShardScope(COUNT, frozenset(owned), frozenset(leaving or ()))
    return h


def add(h: Harness, post_id: str, *targets: Target) -> list[str]:
    post, jobs = make_post(post_id, targets, h.now)
    h.add(post, jobs)
    return [j.id for j in jobs]


def stored(h: Harness, job_id: str) -> JobStatus:
    return h.store.jobs[job_id].status


# ---- the scope itself ---------------------------------------------------------------------------


def test_the_default_scope_owns_and_serves_every_target_without_checking() -> None:
    scope = ShardScope()
    assert scope.everything and scope.serving() is None
    assert scope.owns(C) and scope.serves(C)
    part = ShardScope(COUNT, frozenset({0, 1}), frozenset({1, 3}))
    assert part.leaving == {1}  # only owned shards can be leaving
    assert (part.owns(A), part.owns(B), part.owns(C)) == (True, True, False)
    assert (part.serves(A), part.serves(B), part.serves(C)) == (True, False, False)
    assert part.taking({1, 2}).serves(B) and part.taking({2}).owns(C)
    assert not part.without({0}).owns(A)
    with pytest.raises(ValueError, match="outside"):
        part.taking({COUNT})


# ---- dispatch -----------------------------------------------------------------------------------


def test_dispatch_hands_out_only_jobs_of_shards_it_serves() -> None:
    h = harness({0, 1}, leaving={1})
    a, b, c = add(h, "p1", A, B, C)
    fx = h.open("s1", slots=3)
    assert [x.job_id for x in assigns(fx)] == [a]  # B's shard is leaving, C's another's
    h.advance(5)
    h.heartbeat("s1")
    assert assigns(h.tick()) == []
    assert stored(h, b) is JobStatus.QUEUED and stored(h, c) is JobStatus.QUEUED
    # A job it does not serve never wakes the timer (it would tick for nothing).
    post, jobs = make_post("p2", (target_in(3),), h.now + 5)
    h.add(post, jobs)
    assert h.core.next_wakeup() == h.now + CONFIG.lease_ttl_s + 0.001  # the heartbeat's silence


def test_a_forced_retry_of_a_leaving_shard_waits_too() -> None:
    h = harness({0, 1})
    (b,) = add(h, "p1", B)
    h.core.leave_shards({1})
    h.command(op.RetryJob(b, "user:op", force=True))
    assert assigns(h.open("s1")) == []
    h.core.take_shards({1})  # served again (a hand-off that did not happen)
    assert one_assign(h.run(h.core.dispatch(h.now))).job_id == b


# ---- scheduling ---------------------------------------------------------------------------------


def test_scheduling_makes_jobs_only_for_owned_targets_and_names_the_remote_ones() -> None:
    h = harness({0})
    post, _ = make_post("p1", (A, C), h.now)
    h.store.insert(post, [])
    fx, touched, skipped, remote = h.core.schedule_jobs(post, h.now, "j", "user:op", h.now)
    h.run(fx)
    assert [j.target for j in touched] == [A] and skipped == [] and remote == [C]
    assert {j.target for j in h.store.jobs.values()} == {A}
    # The default scope has no remote target.
    full = Harness(config=CONFIG)
    full.store.insert(post, [])
    _, touched, _, remote = full.core.schedule_jobs(post, full.now, "j", "user:op", full.now)
    assert [j.target for j in touched] == [A, C] and remote == []


def test_a_post_created_with_only_remote_targets_is_not_held() -> None:
    h = harness({0})
    cmd = op.CreatePost("p1", "hi", (), (C,), None, 3, False, "user:op", approve=True,
                        schedule=True, new_job_id="j")  # fmt: skip
    h.command(cmd)
    assert h.store.posts["p1"].status is PostStatus.SCHEDULED
    assert h.store.jobs == {} and "p1" not in h.core.posts


# ---- eviction -----------------------------------------------------------------------------------


def test_evict_waits_for_leased_jobs_then_drops_the_shards_jobs_gates_and_empty_posts() -> None:
    h = harness({0, 1})
    a, b = add(h, "p1", A, B)
    (b2,) = add(h, "p2", B)
    h.core.gates.close(B, h.now + 600, "429")
    assert one_assign(h.open("s1")).job_id == a  # B's gate is closed: its jobs wait
    h.core.gates.reopen(B)
    lease_b = one_assign(h.open("s2"))
    assert lease_b.job_id == b
    h.core.leave_shards({1})
    assert h.core.evict_shards({1}) is False  # a job of shard 1 is leased: nothing dropped
    assert lease_b.job_id in h.core.jobs and b2 in h.core.jobs
    h.success("s2", lease_b.job_id, lease_b.lease_epoch)
    h.settle()
    assert h.core.evict_shards({1}) is True
    assert set(h.core.jobs) == {a}  # p1 stays (A's job), p2 had no job left here
    assert set(h.core.posts) == {"p1"} and h.core.post_jobs["p1"] == {a}
    assert [v.target for v in h.core.gates.views(h.now)] == []
    assert not h.core.scope.owns(B) and h.core.scope.serves(A)
    assert stored(h, b2) is JobStatus.QUEUED  # the store keeps it for the shard's next owner


def test_a_forced_evict_forgets_leases_and_frees_their_slots_without_a_word_to_the_worker() -> None:
    h = harness({0, 1})
    (b,) = add(h, "p1", B)
    assert one_assign(h.open("s1")).job_id == b
    (a,) = add(h, "p2", A)  # s1 has no free slot: a waits
    assert stored(h, a) is JobStatus.QUEUED
    assert h.core.evict_shards({1}, force=True) is True
    fx = h.run(h.core.dispatch(h.now))
    assert one_assign(fx, "s1").job_id == a  # the slot is free again
    assert messages(fx, "cancel") == [] and messages(fx, "drop") == []
    assert b not in h.core.jobs and b not in h.core.leases
    assert stored(h, b) is JobStatus.CLAIMED  # the next owner resumes or recovers it


# ---- taking shards ------------------------------------------------------------------------------


def test_taking_a_shard_adds_its_jobs_and_keeps_the_leases_held() -> None:
    h = harness({0})
    post, jobs = make_post("p1", (A, B), h.now)
    h.store.insert(post, jobs)
    h.core.load(*h.store.open_posts(), h.now)  # shard 0 only: A's job
    assert set(h.core.jobs) == {jobs[0].id}
    held = one_assign(h.open("s1", slots=2))
    h.core.take_shards({1})
    h.core.load(*h.store.open_posts(), h.now)  # additive: p1 and A's job are held already
    fx = h.run(h.core.dispatch(h.now))
    assert one_assign(fx).job_id == jobs[1].id
    lease = h.core.leases[held.job_id]
    assert (lease.session_id, lease.epoch) == ("s1", held.lease_epoch)
    assert h.core.post_jobs["p1"] == {j.id for j in jobs}


# ---- commands on another coordinator's shard ----------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        lambda job_id: op.CancelJob(job_id, "user:op", "no"),
        lambda job_id: op.RetryJob(job_id, "user:op", force=False),
        lambda job_id: op.ConfirmJob(job_id, "user:op"),
        lambda job_id: op.ResolveJob(job_id, "https://x/1", "1", "user:op", "by hand"),
    ],
)
def test_a_job_command_on_another_coordinators_shard_is_refused_and_writes_nothing(
    command: Callable[[str], op.JobCommand],
) -> None:
    h = harness({0})
    post, jobs = make_post("p1", (A, C), T0)
    jobs[1].status = JobStatus.FAILED
    h.store.insert(post, jobs)
    h.core.load(*h.store.open_posts(), h.now)
    before = dataclasses.replace(h.store.jobs[jobs[1].id])
    with pytest.raises(NotOwner) as refused:
        h.command(command(jobs[1].id))
    shard = shard_of(C.platform, C.account, COUNT)
    assert refused.value.status_code is grpc.StatusCode.UNAVAILABLE
    assert str(refused.value) == (
        f"shard {shard} of sandbox/{C.account} is owned by another coordinator; retry (it will "
        "be routed there)"
    )
    assert h.store.jobs[jobs[1].id] == before and h.store.audits == []
    assert jobs[1].id not in h.core.jobs


def test_login_checks_and_gate_reopens_of_another_shard_are_refused() -> None:
    h = harness({0})
    with pytest.raises(NotOwner):
        h.command(op.LoginChecked("dev-1", C, LoginState.LOGGED_IN, "ok", "user:op"))
    with pytest.raises(NotOwner):
        h.command(op.ReopenGate(C, "user:op"))
    h.command(op.ReopenGate(A, "user:op"))
    assert [a.action for a in h.store.audits] == ["GATE_REOPENED"]


# ---- post status --------------------------------------------------------------------------------


def test_without_derived_post_status_the_core_writes_round_summaries_only() -> None:
    h = harness({0})
    h.core.book.derive_status = False  # what CoordinatorConfig.derive_posts_in_store gives
    (a,) = add(h, "p1", A)
    lease = one_assign(h.open("s1"))
    h.failure("s1", a, lease.lease_epoch, pb.ERROR_CLASS_INVALID_CONTENT)
    h.settle()
    actions = [e.action for e in h.store.audits if e.subject_id == "p1"]
    assert "PUBLISH_ATTEMPT" in actions and "POST_STATUS_CHANGED" not in actions
    assert h.store.posts["p1"].status is PostStatus.SCHEDULED  # the store derives it (H4)
