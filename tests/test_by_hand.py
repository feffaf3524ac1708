"""ResolveJob and DeletePost over real gRPC against a coordinator (SQLite store, virtual time):
what a person did by hand is recorded, never while an attempt of postroom's may be publishing
(a live commit permit), and no worker holding a job of it can publish it afterwards."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from conftest import TTL_S, InProcess, coordinator_server, job_ids, publish, run_to_success
from scripted_worker import ScriptedWorker

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

if TYPE_CHECKING:
    Stub = publishing_pb2_grpc.PublishingAsyncStub

pytestmark = pytest.mark.anyio
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
HAND_URL = "https://sandbox.test/acme/by-hand"


@asynccontextmanager
async def rig(
    tmp_path: Path, db: str = "sqlite"
) -> AsyncIterator[tuple[InProcess, Stub, ScriptedWorker]]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if db == "sqlite" else "memory://"
    async with (
        coordinator_server(tmp_path, db=url) as env,
        grpc.aio.insecure_channel(env.address) as channel,
        ScriptedWorker(env.address, "dev-1", slots=4) as w,
    ):
        await w.hello()
        yield env, publishing_pb2_grpc.PublishingStub(channel), w


async def one_job_acked(stub: Stub, w: ScriptedWorker) -> tuple[str, wg.Assign]:
    """Publish a post with one target: its job's id and its assignment, acknowledged by `w`."""
    (job_id,) = job_ids(await publish(stub))
    a = (await w.next("assign")).assign
    await w.ack(a)
    return job_id, a


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def resolve(stub: Stub, job_id: str, url: str = HAND_URL, **kw: str) -> pb.Job:
    req = pub.ResolveJobRequest(job_id=job_id, published_url=url, actor="alice", **kw)
    job: pb.Job = await stub.ResolveJob(req)
    return job


async def audit(stub: Stub, subject: str, action: str) -> list[dict[str, object]]:
    resp = await stub.ListAuditEvents(pub.ListAuditEventsRequest(subject_id=subject, action=action))
    return [{"actor": e.actor, **json.loads(e.details_json)} for e in resp.events]


# ---- ResolveJob -----------------------------------------------------------------------------


async def test_a_failed_job_resolved_by_hand_succeeds_and_its_post_is_published(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as (_env, stub, w):
        post = await publish(stub, targets=[("sandbox", "acme"), ("sandbox", "beta")])
        for _ in range(2):
            a = (await w.next("assign")).assign
            if a.account == "acme":
                await w.fail(a, pb.ERROR_CLASS_INVALID_CONTENT, "the platform refused the text")
            else:
                await run_to_success(w, a, "2")
        acme, _ = job_ids(post)
        await w.sync()
        assert (await stub.GetJob(pub.GetJobRequest(job_id=acme))).status == pb.JOB_STATUS_FAILED
        job = await resolve(stub, acme, platform_post_id="12345", reason="posted from the app")
        assert job.status == pb.JOB_STATUS_SUCCEEDED
        assert (job.result_url, job.result_post_id, job.resolved_by) == (
            HAND_URL,
            "12345",
            "user:alice",
        )
        got = await stub.GetPost(pub.GetPostRequest(post_id=post.id))
        assert got.status == pb.POST_STATUS_PUBLISHED
        (entry,) = await audit(stub, acme, "JOB_RESOLVED_BY_HAND")
        assert entry["actor"] == "user:alice" and entry["reason"] == "posted from the app"
        assert entry["url"] == HAND_URL and entry["from"] == "FAILED"

        # Already SUCCEEDED: nothing to record, and it says by whom.
        err = await refused(resolve(stub, acme))
        assert err.code() is PRECONDITION and "already SUCCEEDED" in (err.details() or "")


async def test_refused_while_a_permit_is_live_and_accepted_after(tmp_path: Path) -> None:
    async with rig(tmp_path) as (_env, stub, w):
        job_id, a = await one_job_acked(stub, w)
        assert isinstance(await w.commit(a), wg.CommitGrant)
        err = await refused(resolve(stub, job_id))
        details = err.details() or ""
        assert err.code() is PRECONDITION
        assert "device dev-1 holds a commit permit" in details and "lease to end at" in details
        err = await refused(stub.DeletePost(pub.DeletePostRequest(post_id=a.post_id)))
        assert err.code() is PRECONDITION and "dev-1" in (err.details() or "")

        # The attempt reports that nothing was created: no permit is live any more.
        r = wg.JobResult(
            job_id=job_id,
            lease_epoch=a.lease_epoch,
            success=False,
            error_class=pb.ERROR_CLASS_INVALID_CONTENT,
            error_message="refused",
            not_created=True,
        )
        assert (await w.result(r)).accepted
        job = await resolve(stub, job_id)
        assert job.status == pb.JOB_STATUS_SUCCEEDED and job.resolved_by == "user:alice"


async def test_a_lost_attempt_with_a_permit_blocks_until_its_lease_is_over(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as (env, stub, w):
        job_id, a = await one_job_acked(stub, w)
        assert isinstance(await w.commit(a), wg.CommitGrant)
        await w.kill()  # it may have published; the coordinator cannot know until the deadline
        await w.wait_ended()
        err = await refused(resolve(stub, job_id))
        assert err.code() is PRECONDITION and "lease to end at" in (err.details() or "")
        env.advance(TTL_S + 2.0)  # past the lease deadline and its margin: requeued, verify first
        for _ in range(50):
            job = await stub.GetJob(pub.GetJobRequest(job_id=job_id))
            if job.status == pb.JOB_STATUS_QUEUED:
                break
            env.advance(0.5)
        assert job.status == pb.JOB_STATUS_QUEUED and job.verify_first
        # The post may be live: it is not deleted while nobody knows.
        err = await refused(stub.DeletePost(pub.DeletePostRequest(post_id=job.post_id)))
        assert err.code() is PRECONDITION and "may be live" in (err.details() or "")
        job = await resolve(stub, job_id)
        assert job.status == pb.JOB_STATUS_SUCCEEDED and not job.verify_first


async def test_a_lease_before_its_permit_is_ended_and_its_worker_cannot_post(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as (_env, stub, w):
        job_id, a = await one_job_acked(stub, w)
        await w.sync()
        job = await resolve(stub, job_id, reason="done from the phone")
        assert job.status == pb.JOB_STATUS_SUCCEEDED and job.lease_epoch == a.lease_epoch + 1
        cancel = (await w.next("cancel", job_id=job_id)).cancel
        assert cancel.lease_epoch == a.lease_epoch and "by hand" in cancel.reason
        assert isinstance(await w.commit(a), wg.CommitDeny)
        await w.succeed(a, "sb-late", "https://sandbox.test/acme/late")  # a no-op now
        job = await stub.GetJob(pub.GetJobRequest(job_id=job_id))
        assert job.result_url == HAND_URL and job.resolved_by == "user:alice"
        assert [r.outcome for r in job.runs] == ["resolved_by_hand"]


async def test_resolve_refuses_bad_input_and_cancelled_jobs(tmp_path: Path) -> None:
    async with rig(tmp_path) as (_env, stub, _w):
        (job_id,) = job_ids(await publish(stub, scheduled_at="2099-01-01T00:00:00Z"))
        for bad in ("", "ftp://example.com/x", "not a url", "https://", "https://a b.example/"):
            err = await refused(resolve(stub, job_id, url=bad))
            assert err.code() is INVALID and "published_url" in (err.details() or ""), bad
        err = await refused(resolve(stub, "j-nope"))
        assert err.code() is NOT_FOUND
        await stub.CancelJob(pub.CancelJobRequest(job_id=job_id, actor="op"))
        err = await refused(resolve(stub, job_id))
        assert err.code() is PRECONDITION and "CANCELLED" in (err.details() or "")


# ---- DeletePost -----------------------------------------------------------------------------


@pytest.mark.parametrize("db", ["sqlite", "memory"])
async def test_a_never_published_post_is_deleted_and_its_workers_cannot_post_it(
    tmp_path: Path, db: str
) -> None:
    async with rig(tmp_path, db) as (_env, stub, w):
        post = await publish(stub, targets=[("sandbox", "acme"), ("sandbox", "beta")])
        a = (await w.next("assign")).assign
        await w.ack(a)
        await w.log(a, "compose", "filling in the text")
        assert (await w.screenshot(a, b"\x89PNG proof", label="before_confirm")).ok
        b = (await w.next("assign")).assign
        await w.sync()
        resp = await stub.DeletePost(
            pub.DeletePostRequest(post_id=post.id, actor="alice", reason="wrong campaign")
        )
        assert sorted(resp.cancelled_job_ids) == sorted(job_ids(post))
        for held in (a, b):
            cancel = (await w.next("cancel", job_id=held.job_id)).cancel
            assert cancel.lease_epoch == held.lease_epoch
        assert isinstance(await w.commit(a), wg.CommitDeny)
        late = await w.succeed(b, "sb-late", "https://sandbox.test/beta/late")
        assert not late.accepted

        err = await refused(stub.GetPost(pub.GetPostRequest(post_id=post.id)))
        assert err.code() is NOT_FOUND
        err = await refused(stub.GetJob(pub.GetJobRequest(job_id=a.job_id)))
        assert err.code() is NOT_FOUND
        listed = await stub.ListPosts(pub.ListPostsRequest())
        assert post.id not in [p.id for p in listed.posts]
        jobs = await stub.ListJobs(pub.ListJobsRequest(post_id=post.id))
        assert list(jobs.jobs) == []
        (entry,) = await audit(stub, post.id, "POST_DELETED")
        assert entry["actor"] == "user:alice" and entry["reason"] == "wrong campaign"
        assert entry["content_hash"] == post.content_hash
        # The jobs' own history stays in the audit log.
        assert await audit(stub, a.job_id, "JOB_CANCELLED")

        # A draft that never got jobs goes the same way; a missing post is NOT_FOUND.
        draft = await stub.CreatePost(
            pub.CreatePostRequest(text="draft", targets=[pb.Target(platform="x", account="a")])
        )
        resp = await stub.DeletePost(pub.DeletePostRequest(post_id=draft.id))
        assert list(resp.cancelled_job_ids) == []
        err = await refused(stub.DeletePost(pub.DeletePostRequest(post_id=draft.id)))
        assert err.code() is NOT_FOUND


async def test_a_published_post_is_not_deleted_and_the_refusal_lists_its_urls(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as (_env, stub, w):
        post = await publish(stub)
        await run_to_success(w, (await w.next("assign")).assign, "7")
        await w.sync()
        err = await refused(stub.DeletePost(pub.DeletePostRequest(post_id=post.id)))
        assert err.code() is PRECONDITION
        assert "sandbox:acme https://sandbox.test/acme/7" in (err.details() or "")
        got = await stub.GetPost(pub.GetPostRequest(post_id=post.id))
        assert got.status == pb.POST_STATUS_PUBLISHED
