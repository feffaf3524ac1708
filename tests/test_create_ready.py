"""A post created approved and scheduled in one call, and many posts in one commit: through the
actor's path (Harness.command) and over gRPC with authentication on (who may, and the four-eyes
rule); a batch is all of it or none."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from access_rig import secure_coordinator
from conftest import coordinator_server
from lease_harness import Harness, assigns

import postroom
from coordinator import operator_commands as op
from coordinator.access.records import Role
from coordinator.access.registry import AccessPolicy, Credentials, Principal
from coordinator.domain import JobStatus, PostStatus, Target
from coordinator.errors import PermissionDenied
from postroom.tls import ClientTls
from postroom.v1 import access_pb2 as ac
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb

A = Target("sandbox", "a")
B = Target("sandbox", "b")


def ready(post_id: str, *targets: Target, principal: Principal | None = None) -> op.CreatePost:
    return op.CreatePost(post_id, "hi", (), targets, None, 3, False, "user:carol", approve=True,
                         schedule=True, new_job_id=f"{post_id}-j", principal=principal)  # fmt: skip


def test_one_command_creates_an_approved_post_whose_jobs_a_worker_gets_at_once() -> None:
    h = Harness()
    h.open("s1", slots=2)
    fx = h.command(ready("p1", A, B))
    post = h.store.posts["p1"]
    assert (post.status, post.approved_by) == (PostStatus.SCHEDULED, "user:carol")
    assert post.approved_hash == post.content_hash
    assert {j.status for j in h.store.jobs.values()} == {JobStatus.CLAIMED}
    assert sorted(a.job_id for a in assigns(fx, "s1")) == ["p1-j0", "p1-j1"]  # same step
    actions = [a.action for a in fx.batch.audits if a.subject_id == "p1"]
    assert actions == ["POST_CREATED", "POST_APPROVED", "POST_SCHEDULED"]


def test_a_batch_creates_every_post_in_one_commit_and_replies_in_order() -> None:
    h = Harness()
    draft = op.CreatePost("p3", "draft", (), (A,), None, 3, False, "user:carol")
    fx = h.command(op.CreatePosts((ready("p1", A), ready("p2", B), draft)))
    assert [(p.id, [j.id for j in jobs]) for p, jobs in fx.reply] == [  # type: ignore[attr-defined]
        ("p1", ["p1-j0"]),
        ("p2", ["p2-j0"]),
        ("p3", []),
    ]
    assert [p.status for p in h.store.posts.values()] == [
        PostStatus.SCHEDULED,
        PostStatus.SCHEDULED,
        PostStatus.DRAFT,
    ]
    assert {j.status for j in h.store.jobs.values()} == {JobStatus.QUEUED}  # no worker yet


def test_the_four_eyes_rule_refuses_a_post_its_creator_would_approve_and_writes_nothing() -> None:
    h = Harness()
    h.state.credentials = Credentials(policy=AccessPolicy(require_auth=True))
    carol = Principal(Role.APPROVER, "user:carol", "t-1")
    batch = op.CreatePosts((ready("p1", A), ready("p2", B, principal=carol)))
    with pytest.raises(PermissionDenied, match="let someone else approve it"):
        h.command(batch)
    assert not h.store.posts and not h.store.jobs and "p1" not in h.core.posts
    h.state.credentials = Credentials(policy=AccessPolicy(require_auth=True,
                                                          allow_self_approval=True))  # fmt: skip
    h.command(batch)
    assert set(h.store.posts) == {"p1", "p2"}


def request(text: str = "hello", **kw: object) -> pub.CreatePostRequest:
    target = pb.Target(platform="sandbox", account="acme")
    return pub.CreatePostRequest(text=text, targets=[target], **kw)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_over_grpc_only_an_approver_the_rules_allow_creates_a_ready_post(
    tmp_path: Path,
) -> None:
    async with secure_coordinator(tmp_path) as rig:
        alice = rig.stub(await rig.token("alice", ac.ROLE_AUTHOR))
        carol = rig.stub(await rig.token("carol", ac.ROLE_APPROVER))
        go = request(approve=True, schedule=True)
        for stub, wanted in ((alice, "needs role approver"), (carol, "four eyes")):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.call("CreatePost", go)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert wanted in (caught.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await carol.call("CreatePost", request(schedule=True))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "schedule needs approve" in (caught.value.details() or "")
        listed = await carol.call("ListPosts", pub.ListPostsRequest())
        assert isinstance(listed, pub.ListPostsResponse) and not listed.posts

    policy = AccessPolicy(require_auth=True, allow_self_approval=True)
    async with secure_coordinator(tmp_path / "allowed", policy=policy) as rig:
        carol = rig.stub(await rig.token("carol", ac.ROLE_APPROVER))
        post = await carol.call("CreatePost", go)
        assert isinstance(post, pb.Post) and post.status == pb.POST_STATUS_SCHEDULED
        assert post.approved_by == "user:carol" and len(post.target_states) == 1
        stored = await carol.call("GetPost", pub.GetPostRequest(post_id=post.id))
        assert stored == post  # the answer is what was committed


@pytest.mark.anyio
async def test_over_grpc_a_batch_is_bounded_and_all_or_nothing(tmp_path: Path) -> None:
    policy = AccessPolicy(require_auth=True, allow_self_approval=True)
    async with secure_coordinator(tmp_path, policy=policy) as rig:
        stub = rig.stub(rig.admin_token)
        for posts, wanted in (
            ([], "between 1 and 1000"),
            ([request()] * 1001, "between 1 and 1000"),
            ([request(), request("  ")], "posts[1]: "),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.call("CreatePosts", pub.CreatePostsRequest(posts=posts))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert wanted in (caught.value.details() or "")
        listed = await stub.call("ListPosts", pub.ListPostsRequest())
        assert isinstance(listed, pub.ListPostsResponse) and not listed.posts  # none of them
        go = request(approve=True, schedule=True)
        made = await stub.call("CreatePosts", pub.CreatePostsRequest(posts=[go] * 100))
        assert isinstance(made, pub.CreatePostsResponse) and len(made.posts) == 100
        assert {p.status for p in made.posts} == {pb.POST_STATUS_SCHEDULED}
        jobs = await stub.call("ListJobs", pub.ListJobsRequest(page_size=1000))
        assert isinstance(jobs, pub.ListJobsResponse) and len(jobs.jobs) == 100


@pytest.mark.anyio
async def test_the_python_client_creates_ready_posts_one_by_one_and_in_batches(
    tmp_path: Path,
) -> None:
    async with (
        coordinator_server(tmp_path) as env,
        postroom.AsyncClient(env.address, token="", tls=ClientTls()) as client,
    ):
        one = await client.create_post(
            text="hello", targets=["sandbox:acme"], approve=True, schedule=True
        )
        assert one.status == pb.POST_STATUS_SCHEDULED and one.approved_by == f"user:{client.actor}"
        made = await client.create_posts([request(f"n{i}", approve=True) for i in range(3)])
        assert [p.text for p in made] == ["n0", "n1", "n2"]
        assert {p.status for p in made} == {pb.POST_STATUS_APPROVED}
        with pytest.raises(postroom.InvalidArgument, match=r"posts\[0\]: .*schedule needs"):
            await client.create_posts([request(schedule=True)])
