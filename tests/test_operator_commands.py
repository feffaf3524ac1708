"""Operators' commands as values through the actor's path (Harness.command: the load phase
against the model store, step.handle, the commit): what the load brings, what an edit judged
against stale content does, and that posts the core took in are let go again."""

from __future__ import annotations

import pytest
from lease_harness import T0, Harness, make_post

from coordinator import operator_commands as op
from coordinator.access.records import OperatorToken, Role
from coordinator.access.registry import AccessPolicy, Credentials, Principal
from coordinator.domain import JobStatus, PostStatus, Target
from coordinator.errors import FailedPrecondition, NotFound, PermissionDenied
from coordinator.leasing import outbound as o
from coordinator.leasing.effects import Effects
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

A = Target("sandbox", "a")
B = Target("sandbox", "b")


def finished_post(h: Harness) -> None:
    """p1 to A and B: A published, B failed for good; the core has let the post go."""
    h.add(*make_post("p1", [A, B], T0))
    h.open("s1", slots=2)
    h.success("s1", "p1-j0", 1)
    h.failure("s1", "p1-j1", 1, pb.ERROR_CLASS_INVALID_CONTENT)
    h.lost("s1")  # no worker: what a command queues stays QUEUED
    h.settle()
    assert "p1" not in h.core.posts and h.store.posts["p1"].status is PostStatus.FAILED


def test_an_edit_judged_against_content_that_changed_since_writes_nothing() -> None:
    h = Harness()
    h.add(*make_post("p1", [A], T0))
    judged = ("hello edited", (), (B,))  # what the RPC checked: targets as they were then
    fx = h.command(op.UpdatePost("p1", "hello edited", None, None, None, "user:a", judged))
    assert fx.reply == op.Unjudged(("hello edited", (), (A,)))  # to judge this, then ask again
    assert not fx.batch.post_writes and not fx.batch.audits
    assert h.store.posts["p1"].text == "hello" and h.core.posts["p1"].text == "hello"
    fx = h.command(op.UpdatePost("p1", "hello edited", None, None, None, "user:a", fx.reply[0]))
    assert h.store.posts["p1"].status is PostStatus.PENDING_APPROVAL  # the approval is gone
    assert h.core.posts["p1"].approved_hash == ""  # and the core holds its jobs


def test_scheduling_a_finished_post_again_loads_it_and_publishes_only_what_is_not_live() -> None:
    h = Harness()
    finished_post(h)
    h.command(op.SchedulePost("p1", None, "p1-s1-", "user:op"))
    assert h.store.jobs["p1-j1"].status is JobStatus.QUEUED  # same key: the failed one again
    assert h.store.jobs["p1-j0"].status is JobStatus.SUCCEEDED  # never published twice
    assert set(h.core.post_jobs["p1"]) == {"p1-j0", "p1-j1"}  # the core holds all its jobs
    assert not [j for j in h.store.jobs if j.startswith("p1-s1-")]
    moved = h.store.actions("JOB_QUEUED", "p1-j1")[-1]
    assert moved.details == {"from": "FAILED", "to": "QUEUED", "by": "reschedule"}


def test_commands_on_a_finished_post_job_load_it_and_unknown_ids_say_which() -> None:
    h = Harness()
    finished_post(h)
    h.command(op.RetryJob("p1-j1", "user:op", False))
    assert h.store.jobs["p1-j1"].status is JobStatus.QUEUED
    with pytest.raises(NotFound, match="job nope does not exist"):
        h.command(op.CancelJob("nope", "user:op", ""))
    with pytest.raises(NotFound, match="post nope does not exist"):
        h.command(op.SubmitPost("nope", "user:op"))


def test_cancelling_a_post_never_scheduled_leaves_nothing_in_the_core() -> None:
    h = Harness()
    h.command(op.CreatePost("p9", "hi", (), (A,), None, 3, False, "user:author"))
    h.command(op.CancelPost("p9", "no", "user:op"))
    assert h.store.posts["p9"].status is PostStatus.CANCELLED
    assert "p9" not in h.core.posts


def test_the_load_phase_brings_the_authors_so_an_author_cannot_approve_their_post() -> None:
    h = Harness()
    h.state.credentials = Credentials(policy=AccessPolicy(require_auth=True))
    alice = Principal(Role.APPROVER, "user:alice", "t-1")
    h.command(op.CreatePost("p9", "hi", (), (A,), None, 3, False, "user:alice"))
    h.command(op.SubmitPost("p9", "user:alice"))
    with pytest.raises(PermissionDenied, match="someone else must approve it"):
        h.command(op.ApprovePost("p9", "", "user:alice", alice))
    bob = Principal(Role.APPROVER, "user:bob", "t-2")
    h.command(op.ApprovePost("p9", "", "user:bob", bob))
    assert h.store.posts["p9"].approved_by == "user:bob"


def test_the_first_token_must_be_an_admin_and_devices_wait_for_authentication() -> None:
    h = Harness()
    with pytest.raises(FailedPrecondition, match="the first token must be an admin token"):
        h.command(op.CreateToken("t-1", "ann", Role.AUTHOR, "hash1", "user:local"))
    with pytest.raises(FailedPrecondition, match="device tokens need authentication on"):
        h.command(op.EnrollDevice("d1", (A,), "hash2", False, "user:local"))
    token = h.command(op.CreateToken("t-2", "root", Role.ADMIN, "hash3", "user:local")).reply
    assert isinstance(token, OperatorToken) and token.role is Role.ADMIN
    assert h.state.credentials.auth_on
    h.command(op.EnrollDevice("d1", (A,), "hash2", False, "user:root"))
    assert h.state.credentials.enrollment("d1") is not None


def test_a_reschedule_that_supersedes_a_job_in_doubt_makes_the_new_job_look_first() -> None:
    h = Harness()
    post, jobs = make_post("p1", [A], T0)
    jobs[0].status, jobs[0].verify_first = JobStatus.FAILED, True  # a permit, then no answer
    h.add(post, jobs)
    h.command(op.SchedulePost("p1", T0 + 600, "p1-s1-", "user:op"))
    assert h.store.jobs["p1-j0"].status is JobStatus.CANCELLED  # superseded
    assert h.store.jobs["p1-s1-0"].verify_first  # may find the post rather than make another


def test_content_cannot_change_while_an_attempt_may_be_publishing_it_or_may_have() -> None:
    h = Harness()
    h.add(*make_post("p1", [A], T0))
    h.open("s1")
    h.commit("s1", "p1-j0", 1)  # a live permit: it may be publishing right now
    edit = op.UpdatePost("p1", "other words", None, None, None, "user:a")
    with pytest.raises(FailedPrecondition, match="cannot be edited yet: job p1-j0 may be"):
        h.command(edit)
    h.lost("s1")
    h.advance(60)
    h.tick()  # its lease is over: the job waits to look for the post it may have made
    assert h.store.jobs["p1-j0"].verify_first
    with pytest.raises(FailedPrecondition, match=r"may be live: .* Then edit it"):
        h.command(edit)
    h.command(op.UpdatePost("p1", None, None, None, T0 + 99, "user:a"))  # a new time is fine
    assert h.store.posts["p1"].scheduled_at == T0 + 99


def cancelled_while_publishing(h: Harness) -> None:
    """p1 to A: its worker got the commit permit, then the post was cancelled (a publishing job
    is left to finish), then the worker died without a word and its lease ran out."""
    h.add(*make_post("p1", [A], T0))
    h.open("s1", slots=1)
    h.ack("s1", "p1-j0", 1)
    h.commit("s1", "p1-j0", 1)
    h.command(op.CancelPost("p1", "stop this", "user:op"))
    assert h.job("p1-j0").status is JobStatus.RUNNING
    h.lost("s1")
    h.advance(120)
    h.tick()


def _assigns(fx: Effects) -> list[o.Assign]:
    return [m for _, m in fx.messages if isinstance(m, o.Assign)]


def test_a_cancelled_posts_job_in_doubt_only_looks_and_found_it_is_published() -> None:
    h = Harness()
    cancelled_while_publishing(h)
    (assign,) = _assigns(h.open("s2", slots=1))
    assert assign.verify_only  # it may look, never publish
    denied = h.commit("s2", "p1-j0", 2)
    assert [type(m) for _, m in denied.messages] == [o.CommitDeny]
    h.success("s2", "p1-j0", 2, found_existing=True)
    assert h.store.jobs["p1-j0"].status is JobStatus.SUCCEEDED  # the person sees it went out


def test_a_cancelled_posts_job_in_doubt_found_absent_ends_cancelled_not_requeued() -> None:
    h = Harness()
    cancelled_while_publishing(h)
    h.open("s2", slots=1)
    h.result(
        "s2",
        wg.JobResult(
            job_id="p1-j0",
            lease_epoch=2,
            success=False,
            error_class=pb.ERROR_CLASS_TRANSIENT,
            error_message="not found on the platform",
            verified_absent=True,
        ),
    )
    job = h.store.jobs["p1-j0"]
    assert job.status is JobStatus.CANCELLED  # terminal: nothing waits under a cancelled post
    assert h.store.actions("JOB_CANCELLED", "p1-j0")
