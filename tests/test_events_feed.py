"""What the web console reads from the coordinator, over real gRPC on every store (the fake,
SQLite, PostgreSQL): ListPosts' target states, cursor page tokens that do not shift when posts
are added, and WatchEvents (the audit log, live and resumable by seq)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import grpc
import pytest
from conftest import InProcess, coordinator_server, publish
from pg_rig import scratch_database

from postroom.client import AsyncClient
from postroom.tls import ClientTls
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb

if TYPE_CHECKING:
    Stub = publishing_pb2_grpc.PublishingAsyncStub

STORES = ["memory", "sqlite", "postgres"]
WAIT_S = 5.0


@asynccontextmanager
async def _database(tmp_path: Path, store: str) -> AsyncIterator[str]:
    if store == "postgres":
        async with scratch_database() as url:
            yield url
    else:
        yield "memory://" if store == "memory" else f"sqlite:///{tmp_path / 'feed.db'}"


@asynccontextmanager
async def harness(tmp_path: Path, store: str) -> AsyncIterator[tuple[InProcess, Stub]]:
    async with (
        _database(tmp_path, store) as db,
        coordinator_server(tmp_path, db=db) as env,
        grpc.aio.insecure_channel(env.address) as channel,
    ):
        yield env, publishing_pb2_grpc.PublishingStub(channel)


async def post_ids(stub: Stub, **kw: object) -> tuple[list[str], str]:
    page = await stub.ListPosts(pub.ListPostsRequest(**kw))  # type: ignore[arg-type]
    return [p.id for p in page.posts], page.next_page_token


@pytest.mark.anyio
@pytest.mark.parametrize("store", STORES)
async def test_list_posts_carries_target_states_and_pages_by_cursor(
    tmp_path: Path, store: str
) -> None:
    async with harness(tmp_path, store) as (env, stub):
        made = []
        for n in range(5):
            made.append(await publish(stub, text=f"post {n}", targets=[("sandbox", f"a{n}")]))
            env.advance(1)
        first, token = await post_ids(stub, page_size=2)
        assert first == [made[4].id, made[3].id]  # newest first

        # Posts added while someone pages do not shift the next page (an offset would repeat).
        for n in range(3):
            await publish(stub, text=f"late {n}")
        second, token = await post_ids(stub, page_size=2, page_token=token)
        assert second == [made[2].id, made[1].id]
        third, token = await post_ids(stub, page_size=2, page_token=token)
        assert third == [made[0].id] and token == ""

        listed = await stub.ListPosts(pub.ListPostsRequest(page_size=100))
        log = await stub.ListAuditEvents(pub.ListAuditEventsRequest(page_size=10_000))
        assert listed.as_of_seq == log.events[-1].seq  # a live view resumes from here
        shown = {p.id: p for p in listed.posts}[made[1].id]
        assert [(t.target.account, t.job_status) for t in shown.target_states] == [
            ("a1", pb.JOB_STATUS_QUEUED)
        ]
        assert shown.target_states[0].job_id == made[1].target_states[0].job_id

        # A token is bound to its query: another filter refuses it, saying what to do.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await post_ids(stub, status=pb.POST_STATUS_DRAFT, page_token=token or "x" * 12)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "next_page_token" in (refused.value.details() or "")


@pytest.mark.anyio
@pytest.mark.parametrize("store", STORES)
async def test_list_jobs_pages_by_cursor(tmp_path: Path, store: str) -> None:
    async with harness(tmp_path, store) as (env, stub):
        await publish(stub, targets=[("sandbox", "a"), ("sandbox", "b"), ("sandbox", "c")])
        page = await stub.ListJobs(pub.ListJobsRequest(page_size=2))
        env.advance(1)  # created later, as it would be
        await publish(stub, text="later", targets=[("sandbox", "d")])
        rest = await stub.ListJobs(
            pub.ListJobsRequest(page_size=2, page_token=page.next_page_token)
        )
        seen = [j.account for j in [*page.jobs, *rest.jobs]]
        assert sorted(seen) == ["a", "b", "c"] and rest.next_page_token == ""


async def take(stream: AsyncIterator[pb.AuditEvent], n: int) -> list[pb.AuditEvent]:
    got: list[pb.AuditEvent] = []
    with anyio.fail_after(WAIT_S):
        async for event in stream:
            got.append(event)
            if len(got) == n:
                break
    return got


@pytest.mark.anyio
@pytest.mark.parametrize("store", STORES)
async def test_watch_events_replays_then_follows_and_resumes(tmp_path: Path, store: str) -> None:
    async with harness(tmp_path, store) as (_env, stub):
        post = await stub.CreatePost(
            pub.CreatePostRequest(text="watched", targets=[pb.Target(platform="x", account="a")])
        )
        everything = await stub.ListAuditEvents(pub.ListAuditEventsRequest())
        assert [e.action for e in everything.events] == ["POST_CREATED"]

        # Replay from the start, then live: the submit is seen as it is committed.
        call = stub.WatchEvents(pub.WatchEventsRequest(after_seq=0, subject_ids=[post.id]))
        stream = call.__aiter__()
        [created] = await take(stream, 1)
        assert created.action == "POST_CREATED" and created.subject_id == post.id
        await stub.SubmitPost(pub.SubmitPostRequest(post_id=post.id))
        [submitted] = await take(stream, 1)
        assert submitted.seq > created.seq and submitted.subject_id == post.id
        call.cancel()

        # Resume after a seq: only what came later. from_end: only what is committed after.
        resumed = stub.WatchEvents(pub.WatchEventsRequest(after_seq=created.seq))
        assert [e.seq for e in await take(resumed.__aiter__(), 1)] == [submitted.seq]
        resumed.cancel()
        tail = stub.WatchEvents(pub.WatchEventsRequest(from_end=True))
        tail_events = tail.__aiter__()
        # The stream says where it starts once it is positioned: from then on, nothing is missed.
        with anyio.fail_after(WAIT_S):
            positioned = dict(await tail.initial_metadata())
        assert positioned["x-postroom-watch-after-seq"] == str(submitted.seq)
        other = await stub.CreatePost(
            pub.CreatePostRequest(text="other", targets=[pb.Target(platform="x", account="b")])
        )
        [fresh] = await take(tail_events, 1)
        assert fresh.subject_id == other.id and fresh.action == "POST_CREATED"
        tail.cancel()


@pytest.mark.anyio
async def test_watch_events_refuses_a_bad_request(tmp_path: Path) -> None:
    async with harness(tmp_path, "memory") as (_env, stub):
        for request, says in (
            (pub.WatchEventsRequest(after_seq=-1), "after_seq must not be negative"),
            (pub.WatchEventsRequest(subject_ids=["s"] * 101), "follow at most 100"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await take(stub.WatchEvents(request).__aiter__(), 1)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert says in (refused.value.details() or "")


@pytest.mark.anyio
async def test_the_async_client_follows_the_log_and_resumes(tmp_path: Path) -> None:
    async with (
        harness(tmp_path, "memory") as (env, _stub),
        AsyncClient(env.address, token="", tls=ClientTls()) as client,
    ):
        first = await client.create_post(text="one", targets=["x:a"])
        seen = [e async for e in _first(client.watch_events(), 1)]
        assert [(e.action, e.subject_id) for e in seen] == [("POST_CREATED", first.id)]
        follow = client.watch_events(after_seq=seen[-1].seq, subject_ids=[first.id])
        await client.submit_post(first.id)
        [submitted] = [e async for e in _first(follow, 1)]
        assert submitted.action == "POST_SUBMITTED" and submitted.seq > seen[-1].seq


async def _first(events: AsyncIterator[pb.AuditEvent], n: int) -> AsyncIterator[pb.AuditEvent]:
    """The first n events of a stream (then it is closed), within the test's wait."""
    with anyio.fail_after(WAIT_S):
        count = 0
        async for event in events:
            yield event
            count += 1
            if count == n:
                break
    await events.aclose()  # type: ignore[attr-defined]
