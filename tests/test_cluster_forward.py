"""Operators may call any coordinator: a standby forwards their calls to the active one.

The active coordinator is a real in-process coordinator with authentication on (access_rig,
TLS when asked); the standby is a gRPC server wired as coordinator.main wires one (the
forwarding interceptor, then the access interceptor with credentials that know no token, the
Publishing service of a coordinator that never runs, health). What an operator notices is
asserted: the same posts, the same errors, streams that stream, and a clear answer while no
coordinator is active.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import grpc
import pytest
from access_rig import Pki, Rig, make_pki, secure_coordinator
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator import wire
from coordinator.access.interceptor import OperatorAuth
from coordinator.access.options import SecurityOptions
from coordinator.access.registry import AccessPolicy, Credentials
from coordinator.actor import Coordinator, CoordinatorConfig
from coordinator.assets import AssetStore
from coordinator.cluster.forward import NO_ACTIVE, ForwardToActive, peer_tls
from coordinator.publishing import PublishingService
from coordinator.store import open_store
from postroom.clock import SystemClock
from postroom.tls import ClientTls
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb


@dataclass
class Role:
    """What the cluster loop tells the interceptor (coordinator/cluster/role.py's shape)."""

    active: bool = False
    leader: str | None = None

    def is_active(self) -> bool:
        return self.active

    def active_address(self) -> str | None:
        return self.leader


@dataclass
class Standby:
    address: str
    role: Role


@contextlib.asynccontextmanager
async def standby_server(tmp_path: Path, role: Role, tls: ClientTls) -> AsyncIterator[Standby]:
    store = open_store("memory://")
    await store.open()
    credentials = Credentials(policy=AccessPolicy(require_auth=True))  # it knows no token
    coordinator = Coordinator(
        store=store, clock=SystemClock(), config=CoordinatorConfig(), credentials=credentials
    )
    forward = ForwardToActive(is_active=role.is_active, active_address=role.active_address, tls=tls)
    server = grpc.aio.server(interceptors=[forward, OperatorAuth(credentials)])
    wire.add_publishing(server, PublishingService(coordinator, AssetStore(tmp_path / "standby")))
    health = health_aio.HealthServicer()
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(coordinator.run)  # as a process would; only its own calls reach it
            try:
                yield Standby(f"127.0.0.1:{port}", role)
            finally:
                await coordinator.stop()
                await server.stop(None)
                await forward.close()
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()


@contextlib.asynccontextmanager
async def pair(
    tmp_path: Path, *, pki: Pki | None = None, mutual: bool = False, tls: ClientTls | None = None
) -> AsyncIterator[tuple[Rig, Standby, publishing_pb2_grpc.PublishingAsyncStub]]:
    """The active coordinator, a standby that knows it, and a stub on the standby."""
    async with secure_coordinator(tmp_path / "active", pki=pki, mutual=mutual) as active:
        role = Role(leader=active.address)
        tls = tls or ClientTls(insecure_plaintext=True)
        async with (
            standby_server(tmp_path, role, tls) as standby,
            grpc.aio.insecure_channel(standby.address) as channel,
        ):
            yield active, standby, publishing_pb2_grpc.PublishingStub(channel)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def draft(text: str) -> pub.CreatePostRequest:
    return pub.CreatePostRequest(text=text, targets=[pb.Target(platform="sandbox", account="a")])


@pytest.mark.anyio
async def test_a_post_created_through_a_standby_is_the_active_ones(tmp_path: Path) -> None:
    async with pair(tmp_path) as (active, _, stub):
        auth = bearer(active.admin_token)
        post = await stub.CreatePost(draft("through the standby"), metadata=auth, timeout=10)
        seen = await active.stub(active.admin_token).call(
            "GetPost", pub.GetPostRequest(post_id=post.id)
        )
        assert isinstance(seen, pb.Post)
        assert (seen.id, seen.text, seen.status) == (post.id, "through the standby", post.status)
        # The audit names the token's user: the active checked the token, not the standby.
        events = await stub.ListAuditEvents(pub.ListAuditEventsRequest(), metadata=auth)
        created = [e for e in events.events if e.subject_id == post.id]
        assert created and all(e.actor.startswith("user:") for e in created)
        # Reads through either give the same answer, byte for byte.
        direct = await active.stub(active.admin_token).call("ListPosts", pub.ListPostsRequest())
        forwarded = await stub.ListPosts(pub.ListPostsRequest(), metadata=auth)
        assert isinstance(direct, pub.ListPostsResponse)
        assert forwarded.SerializeToString() == direct.SerializeToString()


async def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code(), caught.value.details() or ""


@pytest.mark.anyio
async def test_the_active_ones_errors_come_back_unchanged(tmp_path: Path) -> None:
    async with pair(tmp_path) as (active, _, stub):
        direct = publishing_pb2_grpc.PublishingStub(active.channel())
        missing = pub.GetPostRequest(post_id="no-such-post")
        auth = bearer(active.admin_token)
        via_standby = await status_of(stub.GetPost(missing, metadata=auth))
        assert via_standby == await status_of(direct.GetPost(missing, metadata=auth))
        assert via_standby[0] == grpc.StatusCode.NOT_FOUND and "no-such-post" in via_standby[1]
        # No token: the active refuses it with its own words (the standby knows no token).
        refused = await status_of(stub.CreatePost(draft("x")))
        assert refused == await status_of(direct.CreatePost(draft("x")))
        assert refused[0] == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.anyio
async def test_a_server_stream_streams_through_the_standby(tmp_path: Path) -> None:
    async with pair(tmp_path) as (active, _, stub):
        auth = bearer(active.admin_token)
        page = await stub.ListPosts(pub.ListPostsRequest(), metadata=auth)
        watch = stub.WatchEvents(pub.WatchEventsRequest(after_seq=page.as_of_seq), metadata=auth)
        created = []
        for n in range(3):  # each arrives while the stream is open, not at its end
            made = await active.stub(active.admin_token).call("CreatePost", draft(f"post {n}"))
            assert isinstance(made, pb.Post)
            created.append(made.id)
            while True:
                event = await watch.read()
                assert isinstance(event, pb.AuditEvent)  # not the end of the stream
                if event.subject_id == made.id:
                    break
        watch.cancel()
        assert len(set(created)) == 3


@pytest.mark.anyio
async def test_while_no_coordinator_is_active_the_caller_is_told_to_retry(tmp_path: Path) -> None:
    async with pair(tmp_path) as (_, standby, stub):
        standby.role.leader = None
        code, details = await status_of(stub.ListPosts(pub.ListPostsRequest()))
        assert (code, details) == (grpc.StatusCode.UNAVAILABLE, NO_ACTIVE)
        stream = stub.WatchEvents(pub.WatchEventsRequest())
        code, details = await status_of(stream.read())
        assert (code, details) == (grpc.StatusCode.UNAVAILABLE, NO_ACTIVE)
        # The active one it knows of has just died (nobody listens there any more).
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            standby.role.leader = dead = f"127.0.0.1:{s.getsockname()[1]}"
        code, details = await status_of(stub.ListPosts(pub.ListPostsRequest()))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert f"the active coordinator at {dead} does not answer" in details
        assert "retry in a few seconds" in details


@pytest.mark.anyio
async def test_two_coordinators_that_each_think_the_other_active_do_not_loop(
    tmp_path: Path,
) -> None:
    role = Role()
    tls = ClientTls(insecure_plaintext=True)
    async with (
        standby_server(tmp_path, role, tls) as standby,
        grpc.aio.insecure_channel(standby.address) as channel,
    ):
        role.leader = standby.address  # it believes itself the active one's address
        stub = publishing_pb2_grpc.PublishingStub(channel)
        code, details = await status_of(stub.ListPosts(pub.ListPostsRequest()))
        assert code == grpc.StatusCode.UNAVAILABLE and "not active either" in details


@pytest.mark.anyio
async def test_the_active_one_serves_itself_and_health_is_never_forwarded(tmp_path: Path) -> None:
    async with pair(tmp_path) as (active, standby, stub):
        auth = bearer(active.admin_token)
        await stub.ListPosts(pub.ListPostsRequest(), metadata=auth)  # forwarded: accepted
        standby.role.active = True  # now it answers itself, with its own (empty) credentials
        code, _ = await status_of(stub.ListPosts(pub.ListPostsRequest(), metadata=auth))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        standby.role.active = False
        async with grpc.aio.insecure_channel(standby.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING  # its own


@pytest.mark.anyio
@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
async def test_a_tls_coordinator_dials_the_active_one_with_tls(
    tmp_path: Path, mutual: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path / "pki")
    monkeypatch.setenv("POSTROOM_CA", str(pki.ca))
    security = SecurityOptions(
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca if mutual else None
    )
    tls = peer_tls(security)
    assert tls.ca == pki.ca and (tls.cert is not None) == mutual
    async with pair(tmp_path, pki=pki, mutual=mutual, tls=tls) as (active, _, stub):
        auth = bearer(active.admin_token)
        post = await stub.CreatePost(draft("over tls"), metadata=auth, timeout=10)
        assert post.text == "over tls"


@pytest.mark.anyio
async def test_calls_follow_the_active_one_when_another_takes_over(tmp_path: Path) -> None:
    async with (
        pair(tmp_path) as (first, standby, stub),
        secure_coordinator(tmp_path / "second") as second,
    ):
        made = await stub.CreatePost(draft("to the first"), metadata=bearer(first.admin_token))
        standby.role.leader = second.address  # a takeover: the next call goes to the new one
        moved = await stub.CreatePost(draft("to the second"), metadata=bearer(second.admin_token))
        listed = await second.stub(second.admin_token).call("ListPosts", pub.ListPostsRequest())
        assert isinstance(listed, pub.ListPostsResponse)
        assert [p.id for p in listed.posts] == [moved.id] and made.id != moved.id
        standby.role.leader = first.address  # and back: its channel is still there
        again = await stub.GetPost(
            pub.GetPostRequest(post_id=made.id), metadata=bearer(first.admin_token)
        )
        assert again.text == "to the first"
