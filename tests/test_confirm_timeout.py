"""A job waiting for a person's confirmation (AWAITING_CONFIRM: composer filled, before-confirm
screenshot sent) is released when nobody confirms it within the confirm timeout: its worker is
told to stop, nothing is posted, the job is FAILED with a message that says so, and an operator
can retry it. Core level here (virtual time); over gRPC at the end of the file."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from conftest import advance_alive, coordinator_server, job_ids
from lease_harness import Harness, assigns, make_post, messages, one_assign
from scripted_worker import ScriptedWorker

from coordinator.domain import JobStatus, Target
from coordinator.errors import FailedPrecondition
from coordinator.leasing.core import LeaseConfig
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

ACME = Target("sandbox", "acme")
TIMEOUT = 60.0
CONFIG = LeaseConfig(
    heartbeat_interval_s=5.0,
    lease_ttl_s=15.0,
    commit_min_left_s=2.0,
    claim_timeout_s=300.0,
    run_timeout_s=600.0,
    confirm_timeout_s=TIMEOUT,
)
RELEASED = f"not confirmed within {TIMEOUT:g}s; nothing was posted"


def awaiting(h: Harness) -> wg.Assign:
    post, jobs = make_post("p1", (ACME,), h.now, require_confirm=True)
    h.add(post, jobs)
    a = one_assign(h.open("s1", slots=2), "s1")
    h.ack("s1", a.job_id, a.lease_epoch)
    h.run(h.core.awaiting_confirm("s1", a.job_id, a.lease_epoch, h.now))
    assert h.job(a.job_id).status is JobStatus.AWAITING_CONFIRM
    return a


def live(h: Harness, seconds: float) -> None:
    """Time passes with the worker heartbeating (it is alive, just waiting for a person)."""
    while seconds > 0:
        step = min(seconds, 5.0)
        h.advance(step)
        seconds -= step
        h.heartbeat("s1")
        h.tick()


def test_unconfirmed_past_the_timeout_is_released_failed_and_retryable() -> None:
    h = Harness(config=CONFIG)
    a = awaiting(h)
    since = h.now
    assert h.core.next_wakeup() == pytest.approx(since + TIMEOUT + 0.001)
    live(h, TIMEOUT - 1)
    assert h.job(a.job_id).status is JobStatus.AWAITING_CONFIRM
    h.advance(2.0)
    fx = h.tick()
    (cancel,) = messages(fx, "cancel", "s1")
    assert (cancel.cancel.job_id, cancel.cancel.lease_epoch) == (a.job_id, a.lease_epoch)
    assert cancel.cancel.reason == RELEASED
    job = h.job(a.job_id)
    assert job.status is JobStatus.FAILED and job.last_error == RELEASED
    assert job.lease_expires_at is None and a.job_id not in h.core.leases
    (audit,) = h.store.actions("JOB_CONFIRM_TIMEOUT", a.job_id)
    assert audit.details["from"] == "AWAITING_CONFIRM" and audit.details["to"] == "FAILED"
    assert audit.details["timeout_s"] == TIMEOUT

    # The worker's late commit request is refused; so is a late confirmation, saying why.
    deny = messages(h.commit("s1", a.job_id, a.lease_epoch), "commit_deny", "s1")
    assert len(deny) == 1
    with pytest.raises(FailedPrecondition, match="was released: not confirmed within 60s"):
        h.core.confirm(a.job_id, "user:op", h.now)

    # An operator retries it: it runs again and waits for a confirmation anew.
    fx = h.run(h.core.retry_now(a.job_id, "user:op", False, h.now))
    again = one_assign(fx, "s1")
    assert again.job_id == a.job_id and again.lease_epoch == a.lease_epoch + 1


def test_confirmed_in_time_is_never_released() -> None:
    h = Harness(config=CONFIG)
    a = awaiting(h)
    live(h, TIMEOUT / 2)
    h.run(h.core.confirm(a.job_id, "user:op", h.now))
    live(h, 2 * TIMEOUT)
    assert h.job(a.job_id).status is JobStatus.RUNNING
    assert h.store.actions("JOB_CONFIRM_TIMEOUT") == []
    h.success("s1", a.job_id, a.lease_epoch)
    assert h.job(a.job_id).status is JobStatus.SUCCEEDED


def test_the_wait_counts_across_a_coordinator_restart() -> None:
    h = Harness(config=CONFIG)
    a = awaiting(h)
    h.advance(TIMEOUT / 2)
    h.restart()  # the worker reconnects holding the job
    assert assigns(h.open("s1", device="dev-s1", held=[(a.job_id, a.lease_epoch)])) == []
    live(h, TIMEOUT / 2 - 1)
    assert h.job(a.job_id).status is JobStatus.AWAITING_CONFIRM
    live(h, 2.0)
    assert h.job(a.job_id).status is JobStatus.FAILED


# ---- over gRPC ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_over_grpc_the_worker_is_told_to_stop_and_confirm_is_refused(
    tmp_path: Path,
) -> None:
    async with (
        coordinator_server(tmp_path, confirm_timeout_s=30.0) as env,
        grpc.aio.insecure_channel(env.address) as channel,
        ScriptedWorker(env.address, "browser-1", capabilities=[("sandbox", "acme")]) as w,
    ):
        stub = publishing_pb2_grpc.PublishingStub(channel)
        await w.hello()
        post = await stub.CreatePost(
            pub.CreatePostRequest(
                text="needs a person",
                targets=[pb.Target(platform="sandbox", account="acme")],
                require_confirm=True,
            )
        )
        await stub.SubmitPost(pub.SubmitPostRequest(post_id=post.id))
        await stub.ApprovePost(pub.ApprovePostRequest(post_id=post.id, actor="approver"))
        (job_id,) = job_ids(await stub.SchedulePost(pub.SchedulePostRequest(post_id=post.id)))
        a = (await w.next("assign")).assign
        assert a.require_confirm
        await w.ack(a)
        ready = wg.AwaitingConfirm(job_id=job_id, lease_epoch=a.lease_epoch)
        await w.send(wg.WorkerMessage(awaiting_confirm=ready))
        await w.sync()
        job = await stub.GetJob(pub.GetJobRequest(job_id=job_id))
        assert job.status == pb.JOB_STATUS_AWAITING_CONFIRM

        await advance_alive(env, 31.0, w)
        cancel = (await w.next("cancel", job_id=job_id)).cancel
        assert cancel.reason == "not confirmed within 30s; nothing was posted"
        job = await stub.GetJob(pub.GetJobRequest(job_id=job_id))
        assert job.status == pb.JOB_STATUS_FAILED
        assert job.last_error == "not confirmed within 30s; nothing was posted"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ConfirmJob(pub.ConfirmJobRequest(job_id=job_id, actor="op"))
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "not confirmed within 30s" in (refused.value.details() or "")
        assert "job retry" in (refused.value.details() or "")
        events = await stub.ListAuditEvents(pub.ListAuditEventsRequest(subject_id=job_id))
        assert "JOB_CONFIRM_TIMEOUT" in [e.action for e in events.events]
        denied = await w.commit(a)  # a worker that did not listen still cannot post
        assert isinstance(denied, wg.CommitDeny)
        got = await stub.GetPost(pub.GetPostRequest(post_id=post.id))
        assert got.status == pb.POST_STATUS_FAILED

        # `job retry`: it runs again, to be confirmed anew.
        await stub.RetryJob(pub.RetryJobRequest(job_id=job_id, actor="op"))
        again = (await w.next("assign", job_id=job_id)).assign
        assert again.lease_epoch == a.lease_epoch + 1 and again.require_confirm
