"""The operators' API over real gRPC: every bad input answers the right status with a message that
says what to fix; approval is bound to the content hash; scheduling is an upsert that never
republishes; time, cancellation, WatchJob, filters and audit paging behave as a user expects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from conftest import (
    InProcess,
    advance_alive,
    coordinator_server,
    job_ids,
    publish,
    run_to_success,
)
from scripted_worker import ScriptedWorker

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

if TYPE_CHECKING:  # the async stub type exists only in the .pyi
    Stub = publishing_pb2_grpc.PublishingAsyncStub

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND


@asynccontextmanager
async def harness(tmp_path: Path) -> AsyncIterator[tuple[InProcess, Stub]]:
    async with (
        coordinator_server(tmp_path) as env,
        grpc.aio.insecure_channel(env.address) as channel,
    ):
        yield env, publishing_pb2_grpc.PublishingStub(channel)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def target(platform: str = "sandbox", account: str = "acme") -> pb.Target:
    return pb.Target(platform=platform, account=account)


async def draft(stub: Stub, text: str = "draft text", **kw: Any) -> pb.Post:
    post: pb.Post = await stub.CreatePost(
        pub.CreatePostRequest(text=text, targets=kw.pop("targets", [target()]), **kw)
    )
    return post


async def list_jobs(stub: Stub, **kw: Any) -> list[pb.Job]:
    resp = await stub.ListJobs(pub.ListJobsRequest(**kw))
    return list(resp.jobs)


# ---- bad input ------------------------------------------------------------------------------

Case = Callable[["Stub", InProcess], Awaitable[object]]


async def _empty_text(stub: Stub, env: InProcess) -> object:
    return await draft(stub, text="   ")


async def _unknown_platform(stub: Stub, env: InProcess) -> object:
    return await draft(stub, targets=[target("myspace")])


async def _no_targets(stub: Stub, env: InProcess) -> object:
    return await draft(stub, targets=[])


async def _duplicate_targets(stub: Stub, env: InProcess) -> object:
    return await draft(stub, targets=[target(), target("SANDBOX", " acme ")])


async def _target_without_account(stub: Stub, env: InProcess) -> object:
    return await draft(stub, targets=[target(account="")])


async def _unparseable_time(stub: Stub, env: InProcess) -> object:
    return await draft(stub, scheduled_at="next tuesday")


async def _time_without_zone(stub: Stub, env: InProcess) -> object:
    return await draft(stub, scheduled_at="2030-01-01T09:00:00")


async def _schedule_time_without_zone(stub: Stub, env: InProcess) -> object:
    post = await publish(stub)
    return await stub.SchedulePost(
        pub.SchedulePostRequest(post_id=post.id, scheduled_at="2030-01-01 09:00")
    )


async def _approve_draft(stub: Stub, env: InProcess) -> object:
    post = await draft(stub)
    return await stub.ApprovePost(pub.ApprovePostRequest(post_id=post.id))


async def _approve_approved(stub: Stub, env: InProcess) -> object:
    post = await draft(stub)
    await stub.SubmitPost(pub.SubmitPostRequest(post_id=post.id))
    await stub.ApprovePost(pub.ApprovePostRequest(post_id=post.id))
    return await stub.ApprovePost(pub.ApprovePostRequest(post_id=post.id))


async def _schedule_unapproved(stub: Stub, env: InProcess) -> object:
    post = await draft(stub)
    await stub.SubmitPost(pub.SubmitPostRequest(post_id=post.id))
    return await stub.SchedulePost(pub.SchedulePostRequest(post_id=post.id))


async def _retry_succeeded(stub: Stub, env: InProcess) -> object:
    async with ScriptedWorker(env.address, "dev-1") as w:
        await w.hello()
        (job_id,) = job_ids(await publish(stub))
        await run_to_success(w, (await w.next("assign")).assign)
    return await stub.RetryJob(pub.RetryJobRequest(job_id=job_id))


async def _audit_since_garbage(stub: Stub, env: InProcess) -> object:
    return await stub.ListAuditEvents(pub.ListAuditEventsRequest(since="yesterday"))


async def _missing_post_id(stub: Stub, env: InProcess) -> object:
    return await stub.GetPost(pub.GetPostRequest(post_id=" "))


def _unknown(call: Callable[[Stub], Awaitable[object]]) -> Case:
    async def run(stub: Stub, env: InProcess) -> object:
        return await call(stub)

    return run


async def _watch_unknown(stub: Stub) -> object:
    return [e async for e in stub.WatchJob(pub.WatchJobRequest(job_id="j-nope"))]


async def _asset_unknown(stub: Stub) -> object:
    return [c async for c in stub.GetAsset(pub.GetAssetRequest(asset_id="ab" * 32))]


BAD_INPUT: list[tuple[str, Case, grpc.StatusCode, tuple[str, ...]]] = [
    ("empty text", _empty_text, INVALID, ("text is empty",)),
    ("unknown platform", _unknown_platform, INVALID, ("unknown platform 'myspace'", "sandbox")),
    ("no targets", _no_targets, INVALID, ("no targets", "sandbox:acme")),
    ("duplicate targets", _duplicate_targets, INVALID, ("sandbox:acme appears twice",)),
    ("target without account", _target_without_account, INVALID, ("has no account",)),
    ("unparseable scheduled_at", _unparseable_time, INVALID, ("RFC 3339", "2026-11-24T18:00")),
    ("scheduled_at without zone", _time_without_zone, INVALID, ("no time zone", "Z")),
    ("schedule time without zone", _schedule_time_without_zone, INVALID, ("time zone",)),
    ("approve a draft", _approve_draft, PRECONDITION, ("PENDING_APPROVAL", "submit it first")),
    ("approve twice", _approve_approved, PRECONDITION, ("is APPROVED",)),
    ("schedule unapproved", _schedule_unapproved, PRECONDITION, ("approve it before",)),
    ("retry a succeeded job", _retry_succeeded, PRECONDITION, ("SUCCEEDED",)),
    ("audit since garbage", _audit_since_garbage, INVALID, ("since", "RFC 3339")),
    ("empty post id", _missing_post_id, INVALID, ("post_id is required",)),
    (
        "GetPost unknown",
        _unknown(lambda s: s.GetPost(pub.GetPostRequest(post_id="p-nope"))),
        NOT_FOUND,
        ("p-nope",),
    ),
    (
        "ApprovePost unknown",
        _unknown(lambda s: s.ApprovePost(pub.ApprovePostRequest(post_id="p-nope"))),
        NOT_FOUND,
        ("p-nope",),
    ),
    (
        "SchedulePost unknown",
        _unknown(lambda s: s.SchedulePost(pub.SchedulePostRequest(post_id="p-nope"))),
        NOT_FOUND,
        ("p-nope",),
    ),
    (
        "CancelPost unknown",
        _unknown(lambda s: s.CancelPost(pub.CancelPostRequest(post_id="p-nope"))),
        NOT_FOUND,
        ("p-nope",),
    ),
    (
        "GetJob unknown",
        _unknown(lambda s: s.GetJob(pub.GetJobRequest(job_id="j-nope"))),
        NOT_FOUND,
        ("j-nope",),
    ),
    (
        "CancelJob unknown",
        _unknown(lambda s: s.CancelJob(pub.CancelJobRequest(job_id="j-nope"))),
        NOT_FOUND,
        ("j-nope",),
    ),
    (
        "RetryJob unknown",
        _unknown(lambda s: s.RetryJob(pub.RetryJobRequest(job_id="j-nope"))),
        NOT_FOUND,
        ("j-nope",),
    ),
    ("WatchJob unknown", _unknown(_watch_unknown), NOT_FOUND, ("j-nope",)),
    ("GetAsset unknown", _unknown(_asset_unknown), NOT_FOUND, ("abab",)),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("case", "code", "fragments"),
    [pytest.param(c, code, f, id=name) for name, c, code, f in BAD_INPUT],
)
async def test_bad_input_answers_the_right_status_with_a_helpful_message(
    tmp_path: Path, case: Case, code: grpc.StatusCode, fragments: tuple[str, ...]
) -> None:
    async with harness(tmp_path) as (env, stub):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await case(stub, env)
        assert err.value.code() == code, err.value.details()
        details = err.value.details() or ""
        for fragment in fragments:
            assert fragment in details, details


# ---- approval bound to the content hash -----------------------------------------------------


@pytest.mark.anyio
async def test_approval_is_bound_to_the_content_hash(tmp_path: Path) -> None:
    async with harness(tmp_path) as (env, stub), ScriptedWorker(env.address, "dev-1") as w:
        await w.hello()
        post = await draft(stub, text="first version")
        await stub.SubmitPost(pub.SubmitPostRequest(post_id=post.id))
        reviewed = post.content_hash
        approved = await stub.ApprovePost(
            pub.ApprovePostRequest(post_id=post.id, actor="ann", content_hash=reviewed)
        )
        assert approved.status == pb.POST_STATUS_APPROVED and approved.approved_hash == reviewed

        edited = await stub.UpdatePost(pub.UpdatePostRequest(post_id=post.id, text="second"))
        assert edited.status == pb.POST_STATUS_PENDING_APPROVAL
        assert edited.approved_hash == "" and edited.content_hash != reviewed
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SchedulePost(pub.SchedulePostRequest(post_id=post.id))
        assert err.value.code() == PRECONDITION

        # The approver reviewed the first version: that approval must not stick to the second.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ApprovePost(
                pub.ApprovePostRequest(post_id=post.id, actor="ann", content_hash=reviewed)
            )
        assert err.value.code() == PRECONDITION
        assert "changed since it was reviewed" in (err.value.details() or "")

        again = await stub.ApprovePost(
            pub.ApprovePostRequest(post_id=post.id, actor="ann", content_hash=edited.content_hash)
        )
        assert again.status == pb.POST_STATUS_APPROVED
        await stub.SchedulePost(pub.SchedulePostRequest(post_id=post.id))
        a = (await w.next("assign")).assign
        assert (a.text, a.content_hash) == ("second", edited.content_hash)


@pytest.mark.anyio
async def test_a_scheduled_job_is_held_after_an_edit_until_approved_again(tmp_path: Path) -> None:
    async with harness(tmp_path) as (env, stub):
        post = await publish(stub, text="v1")
        await stub.UpdatePost(pub.UpdatePostRequest(post_id=post.id, text="v2"))
        async with ScriptedWorker(env.address, "dev-1") as w:
            await w.hello()
            await w.sync()
            assert w.pending("assign") == []  # the v1 job is never handed out
            await stub.ApprovePost(pub.ApprovePostRequest(post_id=post.id))
            post = await stub.SchedulePost(pub.SchedulePostRequest(post_id=post.id))
            a = (await w.next("assign")).assign
            assert a.text == "v2" and a.job_id in job_ids(post)


# ---- scheduling -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_scheduling_twice_is_an_upsert(tmp_path: Path) -> None:
    async with harness(tmp_path) as (env, stub):
        when = rfc3339(env.clock.now() + 3600)
        targets = [("sandbox", "a"), ("mastodon", "b")]
        first = await publish(stub, targets=targets, scheduled_at=when)
        second = await stub.SchedulePost(pub.SchedulePostRequest(post_id=first.id))
        third = await stub.SchedulePost(
            pub.SchedulePostRequest(post_id=first.id, scheduled_at=when)
        )
        assert job_ids(first) == job_ids(second) == job_ids(third)
        jobs = await list_jobs(stub, post_id=first.id)
        assert sorted(j.id for j in jobs) == sorted(job_ids(first))
        assert {j.status for j in jobs} == {pb.JOB_STATUS_QUEUED}
        assert len({j.idempotency_key for j in jobs}) == 2


@pytest.mark.anyio
async def test_a_published_target_is_not_republished_by_a_reschedule(tmp_path: Path) -> None:
    async with harness(tmp_path) as (env, stub):
        async with ScriptedWorker(env.address, "only-a", capabilities=[("sandbox", "a")]) as w:
            await w.hello()
            post = await publish(stub, targets=[("sandbox", "a"), ("sandbox", "b")])
            a = (await w.next("assign")).assign
            await run_to_success(w, a)
        later = rfc3339(env.clock.now() + 60)
        post = await stub.SchedulePost(pub.SchedulePostRequest(post_id=post.id, scheduled_at=later))
        states = {t.target.account: t for t in post.target_states}
        assert states["a"].job_id == a.job_id
        assert states["a"].job_status == pb.JOB_STATUS_SUCCEEDED
        assert states["b"].job_status == pb.JOB_STATUS_QUEUED

        env.advance(61)
        async with ScriptedWorker(env.address, "any", capabilities=[("sandbox", "*")]) as w2:
            await w2.hello()
            b = (await w2.next("assign")).assign
            assert b.job_id == states["b"].job_id and b.account == "b"
            await run_to_success(w2, b)
            await w2.sync()
            assert w2.pending("assign") == []
        done = await stub.GetPost(pub.GetPostRequest(post_id=post.id))
        assert done.status == pb.POST_STATUS_PUBLISHED
        a_jobs = await list_jobs(stub, post_id=post.id, account="a")
        assert [(j.id, j.attempt) for j in a_jobs] == [(a.job_id, 1)]


@pytest.mark.anyio
async def test_a_future_post_is_dispatched_on_time(tmp_path: Path) -> None:
    async with harness(tmp_path) as (env, stub), ScriptedWorker(env.address, "dev-1") as w:
        await w.hello()
        due = env.clock.now() + 30
        await publish(stub, scheduled_at=rfc3339(due))
        await advance_alive(env, 29.5, w)  # each step heartbeats, so every Assign sent arrived
        assert w.pending("assign") == []
        await advance_alive(env, 1.0, w)
        a = (await w.next("assign", timeout=2.0)).assign
        job = await stub.GetJob(pub.GetJobRequest(job_id=a.job_id))
        assert job.status == pb.JOB_STATUS_CLAIMED
        assert job.not_before.seconds == int(due)


# ---- cancellation ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancel_post_cancels_pending_jobs_and_tells_the_holder(tmp_path: Path) -> None:
    async with harness(tmp_path) as (env, stub), ScriptedWorker(env.address, "w", slots=1) as w:
        await w.hello()
        post = await publish(stub, targets=[("sandbox", "a"), ("sandbox", "b"), ("sandbox", "c")])
        held = (await w.next("assign")).assign
        await w.ack(held)

        cancelled = await stub.CancelPost(
            pub.CancelPostRequest(post_id=post.id, actor="ops", reason="typo")
        )
        assert cancelled.status == pb.POST_STATUS_CANCELLED
        cancel = (await w.next("cancel")).cancel
        assert (cancel.job_id, cancel.lease_epoch) == (held.job_id, held.lease_epoch)
        assert isinstance(await w.commit(held), wg.CommitDeny)
        await w.sync()
        assert w.pending("assign") == []  # nothing of the cancelled post is handed out
        jobs = await list_jobs(stub, post_id=post.id)
        assert {j.status for j in jobs} == {pb.JOB_STATUS_CANCELLED}
        assert [j.attempt for j in jobs if j.id != held.job_id] == [0, 0]


# ---- WatchJob -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_watch_job_streams_changes_and_logs_live_and_ends_with_the_job(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as (env, stub):
        post = await publish(stub)
        (job_id,) = job_ids(post)
        events: list[pub.JobEvent] = []
        arrived = asyncio.Condition()

        async def watch() -> None:
            async for event in stub.WatchJob(pub.WatchJobRequest(job_id=job_id)):
                async with arrived:
                    events.append(event)
                    arrived.notify_all()

        async def seen(pred: Callable[[pub.JobEvent], bool]) -> None:
            async with asyncio.timeout(5), arrived:
                await arrived.wait_for(lambda: any(pred(e) for e in events))

        def status(s: int) -> Callable[[pub.JobEvent], bool]:
            return lambda e: e.HasField("job") and e.job.status == s

        watcher = asyncio.create_task(watch())
        await seen(status(pb.JOB_STATUS_QUEUED))  # the current state comes first
        async with ScriptedWorker(env.address, "dev-1") as w:
            await w.hello()
            a = (await w.next("assign")).assign
            await seen(status(pb.JOB_STATUS_CLAIMED))
            await w.ack(a)
            await seen(status(pb.JOB_STATUS_RUNNING))
            await w.log(a, "compose", "typing the text")
            await seen(lambda e: e.HasField("log") and e.log.log.message == "typing the text")
            assert not watcher.done()
            await run_to_success(w, a)
        async with asyncio.timeout(5):
            await watcher  # the stream ended by itself once the job ended
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds[0] == "job" and "log" in kinds
        assert events[-1].job.status == pb.JOB_STATUS_SUCCEEDED
        log = next(e.log for e in events if e.HasField("log"))
        assert (log.log.step, log.attempt) == ("compose", 1) and log.run_id


@pytest.mark.anyio
async def test_watch_of_a_finished_job_answers_once_and_ends(tmp_path: Path) -> None:
    async with harness(tmp_path) as (_, stub):
        post = await publish(stub)
        await stub.CancelPost(pub.CancelPostRequest(post_id=post.id))
        events = [e async for e in stub.WatchJob(pub.WatchJobRequest(job_id=job_ids(post)[0]))]
        assert [e.job.status for e in events] == [pb.JOB_STATUS_CANCELLED]


# ---- listing --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_list_jobs_filters(tmp_path: Path) -> None:
    async with harness(tmp_path) as (env, stub):
        p1 = await publish(stub, targets=[("sandbox", "a"), ("mastodon", "a"), ("sandbox", "b")])
        p2 = await publish(stub, text="other", targets=[("bluesky", "a")])
        async with ScriptedWorker(env.address, "blue", capabilities=[("bluesky", "*")]) as w:
            await w.hello()
            a = (await w.next("assign")).assign
            await run_to_success(w, a)

        def ids(jobs: list[pb.Job]) -> set[str]:
            return {j.id for j in jobs}

        everything = await list_jobs(stub)
        assert ids(everything) == set(job_ids(p1) + job_ids(p2))
        assert ids(await list_jobs(stub, post_id=p1.id)) == set(job_ids(p1))
        assert {j.platform for j in await list_jobs(stub, platform="sandbox")} == {"sandbox"}
        assert len(await list_jobs(stub, platform="SANDBOX")) == 2
        assert {(j.platform, j.account) for j in await list_jobs(stub, account="a")} == {
            ("sandbox", "a"),
            ("mastodon", "a"),
            ("bluesky", "a"),
        }
        assert ids(await list_jobs(stub, status=pb.JOB_STATUS_SUCCEEDED)) == {a.job_id}
        assert len(await list_jobs(stub, status=pb.JOB_STATUS_QUEUED)) == 3
        assert ids(await list_jobs(stub, device_id="blue")) == {a.job_id}
        assert await list_jobs(stub, platform="sandbox", account="zzz") == []

        seen: list[str] = []
        token = ""
        while True:
            page = await stub.ListJobs(pub.ListJobsRequest(page_size=3, page_token=token))
            seen += [j.id for j in page.jobs]
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(ids(everything)) and len(seen) == len(set(seen))


@pytest.mark.anyio
async def test_list_audit_events_pages_and_since(tmp_path: Path) -> None:
    async with harness(tmp_path) as (env, stub):
        early = await publish(stub, text="early", scheduled_at=rfc3339(env.clock.now() + 9999))
        env.advance(100)
        cut = env.clock.now() - 1
        late = await draft(stub, text="late")

        everything = (await stub.ListAuditEvents(pub.ListAuditEventsRequest())).events
        seqs = [e.seq for e in everything]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert {"POST_CREATED", "POST_APPROVED", "POST_SCHEDULED", "JOB_CREATED"} <= {
            e.action for e in everything
        }

        paged: list[int] = []
        after = 0
        while True:
            page = await stub.ListAuditEvents(
                pub.ListAuditEventsRequest(page_size=2, after_seq=after)
            )
            assert len(page.events) <= 2
            paged += [e.seq for e in page.events]
            if not page.next_after_seq:
                break
            after = page.next_after_seq
        assert paged == seqs

        recent = await stub.ListAuditEvents(pub.ListAuditEventsRequest(since=rfc3339(cut)))
        assert [(e.action, e.subject_id) for e in recent.events] == [("POST_CREATED", late.id)]
        mine = await stub.ListAuditEvents(
            pub.ListAuditEventsRequest(subject_id=early.id, action="post_approved")
        )
        assert [(e.action, e.actor) for e in mine.events] == [("POST_APPROVED", "user:approver")]


@pytest.mark.anyio
async def test_a_job_a_reschedule_supersedes_is_cancelled_with_an_audit_entry(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as (env, stub):
        post = await publish(stub, scheduled_at=rfc3339(env.clock.now() + 600))
        (old,) = job_ids(post)
        later = rfc3339(env.clock.now() + 1200)
        post = await stub.SchedulePost(pub.SchedulePostRequest(post_id=post.id, scheduled_at=later))
        (new,) = job_ids(post)
        assert new != old
        gone = await stub.GetJob(pub.GetJobRequest(job_id=old))
        assert gone.status == pb.JOB_STATUS_CANCELLED
        events = (await stub.ListAuditEvents(pub.ListAuditEventsRequest())).events
        (entry,) = [e for e in events if e.subject_id == old and e.action == "JOB_CANCELLED"]
        details = json.loads(entry.details_json)
        assert (details["from"], details["to"]) == ("QUEUED", "CANCELLED")
        assert details["reason"] == "superseded by a reschedule"
