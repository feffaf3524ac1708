"""Operators: every Publishing RPC, called over real gRPC with a token of each role, is refused
(PERMISSION_DENIED) exactly below its least role; no, unknown or revoked tokens are
UNAUTHENTICATED; the audit log names the token's identity, not the `actor` a caller typed; a
post's author may not approve it unless the deployment allows it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from access_rig import Rig, secure_coordinator

from coordinator.access.records import Role
from coordinator.access.registry import AccessPolicy
from coordinator.access.roles import PUBLISHING_SERVICE, RPC_ROLES
from postroom.v1 import access_pb2 as ac
from postroom.v1 import publishing_pb2
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb

pytestmark = pytest.mark.anyio

SERVICE = publishing_pb2.DESCRIPTOR.services_by_name["Publishing"]
ROLE_PB = {
    Role.VIEWER: ac.ROLE_VIEWER,
    Role.AUTHOR: ac.ROLE_AUTHOR,
    Role.APPROVER: ac.ROLE_APPROVER,
    Role.ADMIN: ac.ROLE_ADMIN,
}
ACME = pb.Target(platform="sandbox", account="acme")


def request_for(method: str) -> object:
    """An empty request of the RPC's input type: what it does with it does not matter here,
    only whether the gate lets it through."""
    descriptor = SERVICE.methods_by_name[method].input_type
    module = ac if descriptor.file.name.endswith("access.proto") else pub
    return getattr(module, descriptor.name)()


async def status_of(rig: Rig, token: str, method: str) -> grpc.StatusCode:
    try:
        await rig.stub(token).call(method, request_for(method))
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_the_role_table_names_every_publishing_rpc() -> None:
    assert SERVICE.full_name == PUBLISHING_SERVICE
    assert set(RPC_ROLES) == {m.name for m in SERVICE.methods}


async def test_each_role_is_allowed_and_refused_per_rpc(tmp_path: Path) -> None:
    async with secure_coordinator(tmp_path) as rig:
        tokens = {role: await rig.token(f"{role.value}-1", ROLE_PB[role]) for role in Role}
        refused: dict[str, list[str]] = {}
        for method in sorted(RPC_ROLES):
            needed = RPC_ROLES[method]
            for role, token in tokens.items():
                code = await status_of(rig, token, method)
                assert code != grpc.StatusCode.UNAUTHENTICATED, (method, role)
                if role.allows(needed):
                    assert code != grpc.StatusCode.PERMISSION_DENIED, (method, role)
                else:
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (method, role)
                    refused.setdefault(method, []).append(role.value)
            # Without a token nothing gets through, whatever the RPC.
            assert await status_of(rig, "", method) == grpc.StatusCode.UNAUTHENTICATED
        # The table as a user meets it: a viewer reads, an author writes, an approver lets
        # things out, only an admin manages access.
        assert "GetPost" not in refused and "ListAuditEvents" not in refused
        assert refused["CreatePost"] == ["viewer"]
        assert refused["ApprovePost"] == ["viewer", "author"]
        assert refused["EnrollDevice"] == ["viewer", "author", "approver"]


async def test_unknown_revoked_and_misplaced_tokens_are_unauthenticated(tmp_path: Path) -> None:
    async with secure_coordinator(tmp_path) as rig:
        viewer = await rig.token("vera", ac.ROLE_VIEWER)
        device = await rig.enroll("dev-1", "sandbox:acme")
        listing = ac.ListTokensRequest()
        for token, fragment in (
            ("prt_not-a-real-token", "unknown"),
            (device, "device token"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await rig.stub(token).call("ListPosts", pub.ListPostsRequest())
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert fragment in (caught.value.details() or "")
        await rig.stub(viewer).call("ListPosts", pub.ListPostsRequest())
        await rig.stub(rig.admin_token).call("RevokeToken", ac.RevokeTokenRequest(token="vera"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rig.stub(viewer).call("ListPosts", pub.ListPostsRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in (caught.value.details() or "")
        # The last admin token cannot be revoked: that would lock every operator out.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rig.stub(rig.admin_token).call(
                "RevokeToken", ac.RevokeTokenRequest(token="bootstrap-admin")
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        listed = await rig.stub(rig.admin_token).call("ListTokens", listing)
        assert isinstance(listed, ac.ListTokensResponse)
        assert {t.name for t in listed.tokens} == {"bootstrap-admin"}


async def create_and_submit(rig: Rig, token: str, typed_actor: str) -> pb.Post:
    stub = rig.stub(token)
    post = await stub.call(
        "CreatePost",
        pub.CreatePostRequest(text="hello", targets=[ACME], actor=typed_actor),
    )
    assert isinstance(post, pb.Post)
    await stub.call("SubmitPost", pub.SubmitPostRequest(post_id=post.id, actor=typed_actor))
    return post


async def test_the_audit_actor_is_the_tokens_identity(tmp_path: Path) -> None:
    async with secure_coordinator(tmp_path) as rig:
        alice = await rig.token("alice", ac.ROLE_AUTHOR)
        bob = await rig.token("bob", ac.ROLE_APPROVER)
        post = await create_and_submit(rig, alice, typed_actor="the-ceo")
        await rig.stub(bob).call(
            "ApprovePost", pub.ApprovePostRequest(post_id=post.id, actor="someone-else")
        )
        events = await rig.stub(bob).call(
            "ListAuditEvents", pub.ListAuditEventsRequest(subject_id=post.id)
        )
        assert isinstance(events, pub.ListAuditEventsResponse)
        actors = {e.action: e.actor for e in events.events}
        assert actors["POST_CREATED"] == "user:alice"
        assert actors["POST_SUBMITTED"] == "user:alice"
        assert actors["POST_APPROVED"] == "user:bob"
        assert all(
            "the-ceo" not in e.actor and "someone-else" not in e.actor for e in events.events
        )
        shown = await rig.stub(bob).call("GetPost", pub.GetPostRequest(post_id=post.id))
        assert isinstance(shown, pb.Post) and shown.approved_by == "user:bob"
        me = await rig.stub(alice).call("WhoAmI", ac.WhoAmIRequest())
        assert isinstance(me, ac.WhoAmIResponse)
        assert (me.actor, me.role, me.authenticated) == ("user:alice", ac.ROLE_AUTHOR, True)


async def test_self_approval_is_refused_unless_allowed(tmp_path: Path) -> None:
    async with secure_coordinator(tmp_path) as rig:
        carol = await rig.token("carol", ac.ROLE_APPROVER)  # may approve, but wrote it
        dave = await rig.token("dave", ac.ROLE_APPROVER)
        post = await create_and_submit(rig, carol, typed_actor="dave")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rig.stub(carol).call("ApprovePost", pub.ApprovePostRequest(post_id=post.id))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "someone else must approve" in (caught.value.details() or "")
        # An editor of the content is an author too.
        await rig.stub(dave).call(
            "UpdatePost", pub.UpdatePostRequest(post_id=post.id, text="hello, edited")
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rig.stub(dave).call("ApprovePost", pub.ApprovePostRequest(post_id=post.id))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        erin = await rig.token("erin", ac.ROLE_APPROVER)
        approved = await rig.stub(erin).call("ApprovePost", pub.ApprovePostRequest(post_id=post.id))
        assert isinstance(approved, pb.Post) and approved.status == pb.POST_STATUS_APPROVED

    policy = AccessPolicy(require_auth=True, allow_self_approval=True)
    async with secure_coordinator(tmp_path / "allowed", policy=policy) as rig:
        carol = await rig.token("carol", ac.ROLE_APPROVER)
        post = await create_and_submit(rig, carol, typed_actor="")
        approved = await rig.stub(carol).call(
            "ApprovePost", pub.ApprovePostRequest(post_id=post.id)
        )
        assert isinstance(approved, pb.Post) and approved.status == pb.POST_STATUS_APPROVED


async def test_a_forced_retry_needs_an_approver(tmp_path: Path) -> None:
    async with secure_coordinator(tmp_path) as rig:
        author = await rig.token("alice", ac.ROLE_AUTHOR)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rig.stub(author).call(
                "RetryJob", pub.RetryJobRequest(job_id="j-nope", force=True)
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rig.stub(author).call("RetryJob", pub.RetryJobRequest(job_id="j-nope"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
