"""Placement "spread": each operator's call is executed by the coordinator that must execute it.

Unit tests of the classification (every Publishing RPC has a route; each route finds its shard
where the request or the store says) and of the decision; then two in-process coordinators on
one store (a memory store stands in for the shared PostgreSQL), each wired as main.py wires a
spread coordinator (RouteToOwner, then the token check, the Publishing service reading from the
store). Each knows only its own operator token, so a call succeeds with B's token only where B
executed it: what the tests assert is what an operator notices (the call works or is refused,
the answers, the retry message).
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import grpc
import pytest
from google.protobuf import message_factory

from coordinator import wire
from coordinator.access.interceptor import OperatorAuth
from coordinator.access.records import OPERATOR_PREFIX, OperatorToken, Role, hash_secret, new_secret
from coordinator.access.registry import AccessPolicy, Credentials
from coordinator.actor import Coordinator, CoordinatorConfig
from coordinator.assets import AssetStore
from coordinator.cluster.forward import FORWARDED_HEADER
from coordinator.cluster.route import (
    ACCESS_SHARD,
    ROUTES,
    Here,
    Idle,
    Nobody,
    Route,
    RouteToOwner,
    There,
    decide,
    shard_of_request,
)
from coordinator.domain import (
    DeviceRecord,
    GateRecord,
    JobStatus,
    LoginState,
    Target,
    WorkerKind,
)
from coordinator.publishing import PublishingService
from coordinator.store import open_store
from coordinator.store.base import JobWrite, Store, WriteBatch
from coordinator.store.shards import DEFAULT_SHARD_COUNT, shard_of
from postroom.clock import SystemClock
from postroom.tls import ClientTls
from postroom.v1 import access_pb2 as ac
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb

SERVICE = pub.DESCRIPTOR.services_by_name["Publishing"]
COUNT = DEFAULT_SHARD_COUNT


def shard(account: str, platform: str = "sandbox") -> int:
    return shard_of(platform, account, COUNT)


def two_accounts() -> tuple[str, str]:
    """Two sandbox accounts in two different shards, neither the access shard."""
    names = [f"acct{n}" for n in range(100) if shard(f"acct{n}") != ACCESS_SHARD]
    first = names[0]
    second = next(n for n in names if shard(n) != shard(first))
    return first, second


A_ACCOUNT, B_ACCOUNT = two_accounts()


# ---- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
def test_every_publishing_rpc_has_a_route_its_request_can_give(method: str) -> None:
    assert method in ROUTES, f"Publishing.{method} is not classified in cluster/route.py ROUTES"
    request = SERVICE.methods_by_name[method].input_type
    fields = set(request.fields_by_name)
    route = ROUTES[method]
    needs = {
        Route.POST: {"post_id"},
        Route.JOB: {"job_id"},
        Route.TARGET: {"platform", "account"},
    }.get(route, set())
    assert needs <= fields, f"{method} routed {route.value} but its request has no {needs}"
    if route is Route.NEW_POST:
        assert "targets" in fields or "posts" in fields


def test_nothing_is_classified_that_the_proto_does_not_have() -> None:
    assert set(ROUTES) == {m.name for m in SERVICE.methods}


def test_commands_go_to_an_owner_and_lists_are_read_anywhere() -> None:
    commands = {"CreatePost", "UpdatePost", "DeletePost", "CancelJob", "ResolveJob"}
    assert all(ROUTES[m] is not Route.STORE for m in commands)
    reads = {m.name for m in SERVICE.methods if m.name.startswith(("Get", "ListPosts"))}
    assert all(ROUTES[m] is Route.STORE for m in reads | {"ListJobs", "ListAuditEvents"})


@dataclass
class Owners:
    """What the cluster loop tells the router (coordinator/cluster/role.py's shape)."""

    address: str = ""
    active: bool = True
    owners: dict[int, str] = field(default_factory=dict)

    def is_active(self) -> bool:
        return self.active

    def owner_address(self, shard: int) -> str | None:
        return self.owners.get(shard)


def test_the_decision() -> None:
    me = Owners(address="me:1", owners={1: "me:1", 2: "other:2"})
    assert decide(Route.POST, 1, me, forwarded=False) == Here()
    assert decide(Route.POST, 2, me, forwarded=False) == There(2, "other:2")
    assert decide(Route.JOB, 3, me, forwarded=False) == Nobody(3)
    assert decide(Route.JOB, 2, me, forwarded=True) == Here()  # one hop at most
    assert decide(Route.POST, None, me, forwarded=False) == Here()  # unknown post: its error
    assert decide(Route.STORE, 2, me, forwarded=False) == Here()
    assert decide(Route.SERVING, None, me, forwarded=False) == Here()
    idle = Owners(address="me:1", active=False, owners={ACCESS_SHARD: "other:2"})
    assert decide(Route.SERVING, None, idle, forwarded=False) == There(ACCESS_SHARD, "other:2")
    assert "retry in a few seconds" in Nobody(3).message()
    # A coordinator whose core does not run executes nothing but reads of the store.
    joining = Owners(address="me:1", active=False, owners={1: "me:1", 2: "other:2"})
    assert decide(Route.POST, 1, joining, forwarded=False) == Idle()
    assert decide(Route.JOB, 2, joining, forwarded=True) == Idle()
    assert decide(Route.POST, 2, joining, forwarded=False) == There(2, "other:2")
    assert decide(Route.STORE, None, joining, forwarded=False) == Here()
    assert "retry in a few seconds" in Idle().message()


def request_of(method: str, **fields: object) -> object:
    cls = message_factory.GetMessageClass(SERVICE.methods_by_name[method].input_type)
    return cls(**fields)


@pytest.mark.anyio
async def test_each_route_finds_the_shard_its_owner_holds() -> None:
    store = open_store("memory://")
    await store.open()
    try:
        b, a = (
            pb.Target(platform=" Sandbox ", account=B_ACCOUNT),
            pb.Target(platform="sandbox", account=A_ACCOUNT),
        )

        async def shard_for(method: str, **fields: object) -> int | None:
            request = request_of(method, **fields)
            return await shard_of_request(ROUTES[method], request, store, COUNT)  # type: ignore[arg-type]

        # A new post: its first target's shard, as the service will store the target.
        assert await shard_for("CreatePost", text="x", targets=[b, a]) == shard(B_ACCOUNT)
        first = pub.CreatePostRequest(text="x", targets=[a, b])
        later = pub.CreatePostRequest(text="y", targets=[b])
        assert await shard_for("CreatePosts", posts=[first, later]) == shard(A_ACCOUNT)
        assert await shard_for("CreatePost", text="x") is None  # refused where it lands
        # A gate or a login: the request's (platform, account).
        assert await shard_for("ReopenRateLimit", platform="sandbox", account=B_ACCOUNT) == (
            shard(B_ACCOUNT)
        )
        assert await shard_for("CheckLogin", platform="nowhere", account="x") is None
        assert await shard_for("CreateToken", name="x") == ACCESS_SHARD
        # Posts and jobs the store does not have: executed where they land (NOT_FOUND there).
        assert await shard_for("SubmitPost", post_id="p-none") is None
        assert await shard_for("CancelJob", job_id="j-none") is None
    finally:
        await store.close()


# ---- two coordinators on one store --------------------------------------------------------------


@dataclass
class Node:
    address: str
    owners: Owners
    coordinator: Coordinator
    token: str  # the only operator token this coordinator knows (an admin's)


@contextlib.asynccontextmanager
async def spread_node(tmp_path: Path, store: Store, name: str) -> AsyncIterator[Node]:
    secret = new_secret(OPERATOR_PREFIX)
    credentials = Credentials(policy=AccessPolicy(require_auth=True, allow_self_approval=True))
    token = OperatorToken(f"t-{name}", f"admin-{name}", Role.ADMIN, hash_secret(secret), 0.0, "t")
    credentials.put_token(token)
    coordinator = Coordinator(
        store=store, clock=SystemClock(), config=CoordinatorConfig(), credentials=credentials
    )
    owners = Owners()
    route = RouteToOwner(owners=owners, store=store, tls=ClientTls(insecure_plaintext=True))
    server = grpc.aio.server(interceptors=[route, OperatorAuth(credentials)])
    service = PublishingService(coordinator, AssetStore(tmp_path / name), store_reads=True)
    wire.add_publishing(server, service)
    port = server.add_insecure_port("127.0.0.1:0")
    owners.address = f"127.0.0.1:{port}"
    await server.start()
    async with anyio.create_task_group() as tg:
        await tg.start(coordinator.run)
        try:
            yield Node(owners.address, owners, coordinator, secret)
        finally:
            await coordinator.stop()
            await server.stop(None)
            await route.close()


@dataclass
class Pair:
    store: Store
    a: Node
    b: Node
    via_a: publishing_pb2_grpc.PublishingAsyncStub
    via_b: publishing_pb2_grpc.PublishingAsyncStub

    def own(self, **shards: Node) -> None:
        """Both coordinators learn who owns the shard of each account named."""
        for account, node in shards.items():
            for n in (self.a, self.b):
                n.owners.owners[shard(account)] = node.address


@contextlib.asynccontextmanager
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    store = open_store("memory://")
    await store.open()
    try:
        async with (
            spread_node(tmp_path, store, "a") as a,
            spread_node(tmp_path, store, "b") as b,
            grpc.aio.insecure_channel(a.address) as ca,
            grpc.aio.insecure_channel(b.address) as cb,
        ):
            yield Pair(
                store,
                a,
                b,
                publishing_pb2_grpc.PublishingStub(ca),
                publishing_pb2_grpc.PublishingStub(cb),
            )
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()


def bearer(token: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"), *extra)


def post_request(*accounts: str, scheduled: bool = False) -> pub.CreatePostRequest:
    targets = [pb.Target(platform="sandbox", account=a) for a in accounts]
    return pub.CreatePostRequest(
        text="routed", targets=targets, approve=scheduled, schedule=scheduled
    )


async def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code(), caught.value.details() or ""


@pytest.mark.anyio
async def test_a_post_command_is_executed_by_the_home_of_its_first_target(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        p.own(**{A_ACCOUNT: p.a, B_ACCOUNT: p.b})
        as_b = bearer(p.b.token)
        # Called on A, executed by B (A knows no token of B's): B is the home.
        post = await p.via_a.CreatePost(post_request(B_ACCOUNT, A_ACCOUNT), metadata=as_b)
        assert post.status == pb.POST_STATUS_DRAFT
        # The first target decides: this one's home is A, which refuses B's token.
        code, _ = await status_of(
            p.via_a.CreatePost(post_request(A_ACCOUNT, B_ACCOUNT), metadata=as_b)
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        # A later command on the post finds its home from the stored post.
        submitted = await p.via_a.SubmitPost(pub.SubmitPostRequest(post_id=post.id), metadata=as_b)
        assert submitted.status == pb.POST_STATUS_PENDING_APPROVAL
        # A batch goes whole to the home of its first post.
        batch = pub.CreatePostsRequest(posts=[post_request(B_ACCOUNT), post_request(A_ACCOUNT)])
        made = await p.via_a.CreatePosts(batch, metadata=as_b)
        assert len(made.posts) == 2
        # Reads are answered where they land, from the store: the same on both.
        get = pub.GetPostRequest(post_id=post.id)
        on_a = await p.via_a.GetPost(get, metadata=bearer(p.a.token))
        on_b = await p.via_b.GetPost(get, metadata=as_b)
        assert on_a.SerializeToString() == on_b.SerializeToString()
        assert on_a.status == pb.POST_STATUS_PENDING_APPROVAL
        listed_a = await p.via_a.ListPosts(pub.ListPostsRequest(), metadata=bearer(p.a.token))
        listed_b = await p.via_b.ListPosts(pub.ListPostsRequest(), metadata=as_b)
        assert listed_a.SerializeToString() == listed_b.SerializeToString()
        assert len(listed_a.posts) == 3


@pytest.mark.anyio
async def test_a_job_command_and_a_job_watch_go_to_the_jobs_owner(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        as_b = bearer(p.b.token)
        p.own(**{A_ACCOUNT: p.a, B_ACCOUNT: p.b})
        post = await p.via_b.CreatePost(
            post_request(B_ACCOUNT, A_ACCOUNT, scheduled=True), metadata=as_b
        )
        jobs = {j.target.account: j.job_id for j in post.target_states}
        assert set(jobs) == {A_ACCOUNT, B_ACCOUNT}
        cancel = pub.CancelJobRequest(job_id=jobs[B_ACCOUNT], reason="routed")
        cancelled = await p.via_a.CancelJob(cancel, metadata=as_b)
        assert cancelled.status == pb.JOB_STATUS_CANCELLED
        # The other job's owner is A: executed there, B's token is refused.
        other = pub.CancelJobRequest(job_id=jobs[A_ACCOUNT], reason="routed")
        code, _ = await status_of(p.via_a.CancelJob(other, metadata=as_b))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        # A watch streams through: the cancelled job, then the end of the stream.
        watch = p.via_a.WatchJob(pub.WatchJobRequest(job_id=jobs[B_ACCOUNT]), metadata=as_b)
        events = [event async for event in watch]
        assert [e.job.status for e in events] == [pb.JOB_STATUS_CANCELLED]
        assert (await watch.code()) == grpc.StatusCode.OK


@pytest.mark.anyio
async def test_a_shard_without_an_owner_says_retry(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        code, details = await status_of(
            p.via_a.CreatePost(post_request(B_ACCOUNT), metadata=bearer(p.b.token))
        )
        assert code == grpc.StatusCode.UNAVAILABLE
        assert f"shard {shard(B_ACCOUNT)}" in details and "retry in a few seconds" in details
        # The owner it knows of has just died (nobody listens there any more).
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{s.getsockname()[1]}"
        p.a.owners.owners[shard(B_ACCOUNT)] = dead
        code, details = await status_of(
            p.via_a.CreatePost(post_request(B_ACCOUNT), metadata=bearer(p.b.token))
        )
        assert code == grpc.StatusCode.UNAVAILABLE
        assert f"owning shard {shard(B_ACCOUNT)} at {dead} does not answer" in details
        # A owns it but its core does not run (it is joining): retry, no call left hanging.
        p.a.owners.owners[shard(B_ACCOUNT)] = p.a.address
        p.a.owners.active = False
        code, details = await status_of(
            p.via_a.CreatePost(post_request(B_ACCOUNT), metadata=bearer(p.a.token), timeout=10)
        )
        assert code == grpc.StatusCode.UNAVAILABLE and "holds no shard right now" in details
        # Reads of the store are still answered there.
        listed = await p.via_a.ListPosts(pub.ListPostsRequest(), metadata=bearer(p.a.token))
        assert list(listed.posts) == []


@pytest.mark.anyio
async def test_a_forwarded_call_is_executed_where_it_lands(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        # Each believes the other owns the shard (a hand-over in progress): one hop, no loop.
        p.a.owners.owners[shard(B_ACCOUNT)] = p.b.address
        p.b.owners.owners[shard(B_ACCOUNT)] = p.a.address
        post = await p.via_a.CreatePost(post_request(B_ACCOUNT), metadata=bearer(p.b.token))
        assert post.text == "routed"  # executed by B, where the one hop landed
        marked = bearer(p.b.token, (FORWARDED_HEADER, "1"))
        code, _ = await status_of(p.via_a.CreatePost(post_request(B_ACCOUNT), metadata=marked))
        assert code == grpc.StatusCode.UNAUTHENTICATED  # executed by A, which got it


@pytest.mark.anyio
async def test_access_changes_go_to_the_access_home(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        for n in (p.a, p.b):
            n.owners.owners[ACCESS_SHARD] = p.b.address
        new = ac.CreateTokenRequest(name="carol", role=ac.ROLE_VIEWER)
        made = await p.via_a.CreateToken(new, metadata=bearer(p.b.token))  # executed by B
        assert made.token.name == "carol"
        # B's actor holds it now: B lists it, through A too.
        tokens = await p.via_a.ListTokens(ac.ListTokensRequest(), metadata=bearer(p.b.token))
        assert "carol" in {t.name for t in tokens.tokens}
        # A device list needs a serving core: A serves, so it answers itself.
        code, _ = await status_of(
            p.via_a.ListDevices(pub.ListDevicesRequest(), metadata=bearer(p.b.token))
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        p.a.owners.active = False  # A holds no shard: the access home answers
        devices = await p.via_a.ListDevices(pub.ListDevicesRequest(), metadata=bearer(p.b.token))
        assert list(devices.devices) == []


@pytest.mark.anyio
async def test_devices_and_gates_are_read_from_the_store_the_same_everywhere(
    tmp_path: Path,
) -> None:
    async with pair(tmp_path) as p:
        as_b = bearer(p.b.token)
        p.own(**{A_ACCOUNT: p.b, B_ACCOUNT: p.a})
        post = await p.via_b.CreatePost(post_request(A_ACCOUNT, scheduled=True), metadata=as_b)
        job = await p.store.get_job(post.target_states[0].job_id)
        # What other coordinators committed (no core here holds it): a device holding the
        # job, and a closed gate.
        target = Target("sandbox", A_ACCOUNT)
        device = DeviceRecord(
            "dev-1",
            WorkerKind.API,
            (target,),
            slots=3,
            last_seen_at=1_000.0,
            logins={target: (LoginState.LOGGED_IN, 900.0, "")},
        )
        leased = dataclasses.replace(
            job, status=JobStatus.CLAIMED, device_id="dev-1", lease_epoch=job.lease_epoch + 1
        )
        write = JobWrite(leased, frozenset({JobStatus.QUEUED}), job.lease_epoch)
        until = 4_000_000_000.0
        gate = GateRecord(Target("sandbox", B_ACCOUNT), until, "429 from the platform", 2)
        await p.store.apply(WriteBatch(devices=[device], job_writes=[write], gates=[gate]))
        on_a = await p.via_a.ListDevices(pub.ListDevicesRequest(), metadata=bearer(p.a.token))
        on_b = await p.via_b.ListDevices(pub.ListDevicesRequest(), metadata=as_b)
        assert on_a.SerializeToString() == on_b.SerializeToString()
        (listed,) = on_a.devices
        assert listed.id == "dev-1" and list(listed.job_ids) == [job.id]
        assert listed.state == pb.DEVICE_STATE_OFFLINE  # no stream open to either
        assert [b.state for b in listed.logins] == [pb.LOGIN_STATE_LOGGED_IN]
        gates_a = await p.via_a.ListRateLimits(
            pub.ListRateLimitsRequest(), metadata=bearer(p.a.token)
        )
        gates_b = await p.via_b.ListRateLimits(pub.ListRateLimitsRequest(), metadata=as_b)
        assert list(gates_a.gates) == list(gates_b.gates)
        by_account = {g.target.account: g for g in gates_a.gates}
        assert (
            by_account[B_ACCOUNT].closed and by_account[B_ACCOUNT].reason == "429 from the platform"
        )
        assert not by_account[A_ACCOUNT].closed  # a target with an active job, no gate yet
