"""A command on a post answers the post as GetPost shows it right after: the answers are built
without reading the store again (a new draft from its step, an open post from the core, another
post as its step wrote it with its stored jobs), so each path is checked against the store's
view, on SQLite, including the held jobs of an edited post and a reschedule of a post whose
targets were all published."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from conftest import coordinator_server, publish, run_to_success
from scripted_worker import ScriptedWorker

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb

if TYPE_CHECKING:  # the async stub type exists only in the .pyi
    Stub = publishing_pb2_grpc.PublishingAsyncStub


async def shown(stub: Stub, post_id: str) -> pb.Post:
    post: pb.Post = await stub.GetPost(pub.GetPostRequest(post_id=post_id))
    return post


@pytest.mark.anyio
async def test_each_step_of_the_approval_flow_answers_the_post_as_stored(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    async with (
        coordinator_server(tmp_path, db=db) as env,
        grpc.aio.insecure_channel(env.address) as channel,
    ):
        stub: Stub = publishing_pb2_grpc.PublishingStub(channel)
        targets = [pb.Target(platform="sandbox", account=a) for a in ("a", "b")]
        post = await stub.CreatePost(pub.CreatePostRequest(text="v1", targets=targets))
        assert post == await shown(stub, post.id)
        assert post.status == pb.POST_STATUS_DRAFT and not post.target_states
        post = await stub.SubmitPost(pub.SubmitPostRequest(post_id=post.id))
        assert post == await shown(stub, post.id)
        approve = pub.ApprovePostRequest(post_id=post.id, content_hash=post.content_hash)
        post = await stub.ApprovePost(approve)
        assert post == await shown(stub, post.id)
        post = await stub.SchedulePost(pub.SchedulePostRequest(post_id=post.id))
        assert post == await shown(stub, post.id)
        assert [t.job_status for t in post.target_states] == [pb.JOB_STATUS_QUEUED] * 2

        # An edit takes the approval away and holds the jobs: they still show, with a warning.
        await stub.UpdatePost(pub.UpdatePostRequest(post_id=post.id, text="v2"))
        post = await stub.ApprovePost(pub.ApprovePostRequest(post_id=post.id))
        assert post == await shown(stub, post.id)
        assert post.status == pb.POST_STATUS_APPROVED and len(post.target_states) == 2
        post = await stub.SchedulePost(pub.SchedulePostRequest(post_id=post.id))
        assert post == await shown(stub, post.id)
        assert post.status == pb.POST_STATUS_SCHEDULED


@pytest.mark.anyio
async def test_a_reschedule_after_one_target_published_answers_both_as_stored(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    async with (
        coordinator_server(tmp_path, db=db) as env,
        grpc.aio.insecure_channel(env.address) as channel,
    ):
        stub: Stub = publishing_pb2_grpc.PublishingStub(channel)
        async with ScriptedWorker(env.address, "only-a", capabilities=[("sandbox", "a")]) as w:
            await w.hello()
            post = await publish(stub, targets=[("sandbox", "a"), ("sandbox", "b")])
            await run_to_success(w, (await w.next("assign")).assign)
            await w.sync()
        again = await stub.SchedulePost(pub.SchedulePostRequest(post_id=post.id))
        assert again == await shown(stub, post.id)
        states = {t.target.account: t.job_status for t in again.target_states}
        assert states == {"a": pb.JOB_STATUS_SUCCEEDED, "b": pb.JOB_STATUS_QUEUED}
