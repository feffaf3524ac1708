"""Placement "spread": each operator's call is executed by the coordinator that must execute it.

With placement "spread" every live coordinator owns some of the 64 shards and runs a core that
holds only their jobs (store/shards.py: an account's jobs, gate and quota live in the shard of
its (platform, account)). So a command must reach the core that holds what it changes:

- a post command goes to the post's HOME: the owner of the shard of the post's first target
  (from the request for a new post, else the stored post). The home runs the post's steps; the
  jobs of its other targets reach their owners as post tasks (the lead's posttasks.py).
  CreatePosts goes whole to the home of its first post: one call is one commit, all or none, and
  the posts whose home is elsewhere are made there like any target that is remote. An edit that
  changes a post's first target runs at its old home (the stored post's); the next command
  finds the new one.
- a job command (and WatchJob, whose events come from the job's core) goes to the owner of the
  stored job's shard; a login check or a gate reopened, to the owner of the request's
  (platform, account) shard (the jobs it requeues, the gate it opens live there).
- tokens and enrollments (held in each core's memory, changed in the actor) go to the ACCESS
  home, the owner of shard 0, so that one actor orders them all.
- ListDevices needs a running core (which devices are connected): answered by any coordinator
  that serves, else by the access home.
- every other read (posts, jobs, audit, gates, assets, WhoAmI) is answered where it lands,
  from the store (PublishingService(store_reads=True)): every coordinator answers the same.

`ROUTES` classifies every Publishing method (tests/test_cluster_route.py fails on one added to
the proto and not here). `RouteToOwner` (a gRPC server interceptor, installed first, in place of
forward.py's ForwardToActive) parses the request to find its shard, then either runs the call
here or passes it on byte for byte to the owner's advertised address (forward.py's Forwarder:
the caller's metadata, token and deadline; the owner's answer, metadata and status unchanged).
It runs before the token check: the coordinator that executes a call checks its token.
main.py installs it first when the placement is "spread" (owners: the ClusterRole), and gives
PublishingService `store_reads=True`; a call that falls to this coordinator while its core does
not run (it holds no shard) is answered UNAVAILABLE, retry (reads of the store excepted).

A call forwarded once (`x-postroom-forwarded`) is executed where it lands, even if that
coordinator no longer owns the shard (shards moved meanwhile): its core then refuses it with
UNAVAILABLE, retry (never a second hop, never a ping-pong). A shard with no live owner (a
hand-over in progress): UNAVAILABLE, retry in a few seconds. A request that does not parse, or
names a post or job that does not exist, is executed here: this coordinator gives the error.
Other services (WorkerGateway: fanout.py; health; reflection) pass untouched.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import grpc
from google.protobuf.message import Message

from coordinator.cluster.forward import Ctx, Forwarder, ServerInterceptor, was_forwarded
from coordinator.domain import Target
from coordinator.errors import CoordinatorError, NotFound
from coordinator.store.base import Store
from coordinator.store.shards import DEFAULT_SHARD_COUNT, shard_of
from coordinator.validation import check_target
from postroom.tls import ClientTls
from postroom.v1 import publishing_pb2 as pub

if TYPE_CHECKING:
    from coordinator.cluster.forward import Continuation

PUBLISHING = "postroom.v1.Publishing"
# The shard whose owner orders the cluster-wide access changes (tokens, enrollments).
ACCESS_SHARD = 0


class Route(enum.Enum):
    """Where a Publishing call is executed under placement "spread"."""

    STORE = "store"  # where it lands: a read of the store
    SERVING = "serving"  # where it lands if that coordinator serves, else the access home
    NEW_POST = "new-post"  # the home of the request's first target
    POST = "post"  # the home of the stored post (its first target's shard)
    JOB = "job"  # the owner of the stored job's shard
    TARGET = "target"  # the owner of the request's (platform, account) shard
    ACCESS = "access"  # the owner of ACCESS_SHARD


ROUTES: Mapping[str, Route] = {
    # posts
    "CreatePost": Route.NEW_POST,
    "CreatePosts": Route.NEW_POST,
    "GetPost": Route.STORE,
    "ListPosts": Route.STORE,
    "UpdatePost": Route.POST,
    "SubmitPost": Route.POST,
    "ApprovePost": Route.POST,
    "SchedulePost": Route.POST,
    "CancelPost": Route.POST,
    "DeletePost": Route.POST,
    # jobs
    "GetJob": Route.STORE,
    "ListJobs": Route.STORE,
    "WatchJob": Route.JOB,
    "CancelJob": Route.JOB,
    "RetryJob": Route.JOB,
    "ConfirmJob": Route.JOB,
    "ResolveJob": Route.JOB,
    # devices, logins, gates, assets, audit
    "ListDevices": Route.SERVING,
    "CheckLogin": Route.TARGET,
    "GetAsset": Route.STORE,
    "ListAuditEvents": Route.STORE,
    "WatchEvents": Route.STORE,
    "ListRateLimits": Route.STORE,
    "ReopenRateLimit": Route.TARGET,
    # access
    "WhoAmI": Route.STORE,
    "CreateToken": Route.ACCESS,
    "ListTokens": Route.ACCESS,
    "RevokeToken": Route.ACCESS,
    "EnrollDevice": Route.ACCESS,
    "ListEnrollments": Route.ACCESS,
    "RevokeDevice": Route.ACCESS,
}


DEFAULT_LOOKUP_WAIT_S = 3.0  # two ownership turns at the default TTL
LOOKUP_POLL_S = 0.1


class Owners(Protocol):
    """What RouteToOwner reads of the cluster (coordinator/cluster/role.py's ClusterRole)."""

    address: str

    def is_active(self) -> bool: ...

    def owner_address(self, shard: int) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Here:
    """Execute the call on this coordinator."""


@dataclass(frozen=True, slots=True)
class There:
    """Pass the call on to the owner of `shard` at `address`."""

    shard: int
    address: str


@dataclass(frozen=True, slots=True)
class Nobody:
    """`shard` has no live owner now: the caller retries."""

    shard: int

    def message(self) -> str:
        return (
            f"shard {self.shard} has no live coordinator right now (its shards are being "
            "handed over); retry in a few seconds"
        )


@dataclass(frozen=True, slots=True)
class Idle:
    """The call is this coordinator's to execute, but its core does not run (it holds no shard
    yet, or no more): the caller retries."""

    def message(self) -> str:
        return (
            "this coordinator holds no shard right now (it is joining or handing its shards "
            "over); retry in a few seconds"
        )


Decision = Here | There | Nobody | Idle


def _first_target(targets: Any) -> Target | None:
    """The first target of a request, as the service will store it (None: it will refuse)."""
    if not targets:
        return None
    try:
        return check_target(targets[0].platform, targets[0].account)
    except CoordinatorError:
        return None


async def shard_of_request(
    route: Route, request: Message, store: Store, shard_count: int
) -> int | None:
    """The shard whose owner must execute `request` (None: execute it where it landed)."""
    target: Target | None = None
    if route is Route.ACCESS:
        return ACCESS_SHARD
    if route is Route.NEW_POST:
        if isinstance(request, pub.CreatePostsRequest):
            target = _first_target(request.posts[0].targets) if request.posts else None
        else:
            target = _first_target(getattr(request, "targets", ()))
    elif route is Route.TARGET:
        try:
            target = check_target(getattr(request, "platform", ""), getattr(request, "account", ""))
        except CoordinatorError:
            return None
    elif route is Route.POST:
        post_id = getattr(request, "post_id", "").strip()
        with contextlib.suppress(NotFound):
            post = await store.get_post(post_id) if post_id else None
            target = post.targets[0] if post is not None and post.targets else None
    elif route is Route.JOB:
        job_id = getattr(request, "job_id", "").strip()
        with contextlib.suppress(NotFound):
            job = await store.get_job(job_id) if job_id else None
            target = Target(job.platform, job.account) if job is not None else None
    if target is None:
        return None
    return shard_of(target.platform, target.account, shard_count)


def decide(route: Route, shard: int | None, owners: Owners, *, forwarded: bool) -> Decision:
    """Where a call goes, its shard known (pure: tests/test_cluster_route.py)."""
    if route is Route.STORE:
        return Here()
    where: Decision = Here()  # forwarded: one hop at most, executed where it lands
    if not forwarded and not (route is Route.SERVING and owners.is_active()):
        if route is Route.SERVING:
            shard = ACCESS_SHARD
        if shard is not None:  # None: no such post or job, or a bad request: its error here
            address = owners.owner_address(shard)
            if address is None:
                return Nobody(shard)
            if address != owners.address:
                return There(shard, address)
    if not owners.is_active():
        return Idle()  # its core does not run: nothing here could execute it
    return where


def _same(data: Any) -> Any:
    return data


def _codec(found: Any) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    """The service's own request parser and response serializer (bytes as they are if none)."""
    return found.request_deserializer or _same, found.response_serializer or _same


class RouteToOwner(ServerInterceptor):
    """Placement "spread": each Publishing call executed by its owner (module docstring)."""

    def __init__(
        self,
        *,
        owners: Owners,
        store: Store,
        tls: ClientTls,
        shard_count: int = DEFAULT_SHARD_COUNT,
        routes: Mapping[str, Route] = ROUTES,
        lookup: Callable[[int], Awaitable[str | None]] | None = None,
        lookup_wait_s: float = DEFAULT_LOOKUP_WAIT_S,
    ) -> None:
        """`lookup(shard)`: the address of its live holder as the database has it now, asked
        when `owners` (refreshed once an ownership turn) knows none: a shard handed over since
        then has one, or will within a turn (asked again until `lookup_wait_s` is up)."""
        self._lookup = lookup
        self._lookup_wait_s = lookup_wait_s
        self._owners = owners
        self._store = store
        self._shards = shard_count
        self._routes = routes
        self._forwarder = Forwarder(tls=tls)

    async def channel(self, address: str) -> grpc.aio.Channel:
        """The cached channel to a coordinator (for the workers' streams, as ForwardToActive's)."""
        return await self._forwarder.channel(address)

    async def close(self) -> None:
        """Close every channel (the server has stopped)."""
        await self._forwarder.close()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        found = await continuation(handler_call_details)
        service, _, name = method.lstrip("/").rpartition("/")
        route = self._routes.get(name)
        if found is None or service != PUBLISHING or route is None or route is Route.STORE:
            return found
        shape: Any = found  # grpc-stubs types the behaviours as sync functions
        if shape.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, route, shape))
        if shape.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._stream(method, route, shape))
        return found  # a client stream: Publishing has none; it would be served here

    async def _where(self, route: Route, request: Any, context: Ctx) -> Decision:
        if not isinstance(request, Message):  # did not parse: the service says so, here
            return Here()
        forwarded = was_forwarded(context)
        shard = None
        if not forwarded and route is not Route.SERVING:
            try:
                shard = await shard_of_request(route, request, self._store, self._shards)
            except CoordinatorError:  # the store failed: executed here, which says why
                return Here()
        where = decide(route, shard, self._owners, forwarded=forwarded)
        if isinstance(where, Nobody) and self._lookup is not None:
            return await self._look_up(where, context)
        if isinstance(where, Idle):
            return await self._wait_serving(where, route, shard, forwarded, context)
        return where

    async def _wait_serving(
        self, idle: Idle, route: Route, shard: int | None, forwarded: bool, context: Ctx
    ) -> Decision:
        """A call for shards this coordinator has just claimed, while it loads them (a few
        milliseconds after its turn): wait for its core to run (within the call's deadline)."""
        deadline = time.monotonic() + self._wait_s(context)
        while time.monotonic() < deadline:
            await anyio.sleep(LOOKUP_POLL_S)
            if self._owners.is_active():
                return decide(route, shard, self._owners, forwarded=forwarded)
        return idle

    def _wait_s(self, context: Ctx) -> float:
        left = context.time_remaining()
        return self._lookup_wait_s if left is None else min(self._lookup_wait_s, left / 2)

    async def _look_up(self, nobody: Nobody, context: Ctx) -> Decision:
        """The owner of a shard this coordinator's last turn saw free: from the database,
        waiting a little for a hand-over to finish (within the call's deadline)."""
        assert self._lookup is not None
        deadline = time.monotonic() + self._wait_s(context)
        while True:
            try:
                address = await self._lookup(nobody.shard)
            except CoordinatorError:
                return nobody
            if address is not None:
                return Here() if address == self._owners.address else There(nobody.shard, address)
            if time.monotonic() >= deadline:
                return nobody
            await anyio.sleep(LOOKUP_POLL_S)

    def _unary(
        self, method: str, route: Route, found: Any
    ) -> Callable[[bytes, Ctx], Awaitable[bytes]]:
        parse, serialize = _codec(found)
        behaviour = found.unary_unary

        async def call(request: bytes, context: Ctx) -> bytes:
            parsed = parse(request)
            where = await self._where(route, parsed, context)
            if isinstance(where, There):
                who = f"the coordinator owning shard {where.shard}"
                return await self._forwarder.unary(method, request, context, where.address, who=who)
            if isinstance(where, Nobody | Idle):
                await context.abort(grpc.StatusCode.UNAVAILABLE, where.message())
            answer: bytes = serialize(await behaviour(parsed, context))
            return answer

        return call

    def _stream(
        self, method: str, route: Route, found: Any
    ) -> Callable[[bytes, Ctx], AsyncIterator[bytes]]:
        parse, serialize = _codec(found)
        behaviour = found.unary_stream

        async def call(request: bytes, context: Ctx) -> AsyncIterator[bytes]:
            parsed = parse(request)
            where = await self._where(route, parsed, context)
            if isinstance(where, Nobody | Idle):
                await context.abort(grpc.StatusCode.UNAVAILABLE, where.message())
            if isinstance(where, There):
                who = f"the coordinator owning shard {where.shard}"
                upstream = self._forwarder.stream(method, request, context, where.address, who=who)
            else:
                upstream = behaviour(parsed, context)
            async with contextlib.aclosing(upstream) as messages:
                async for message in messages:
                    yield message if isinstance(where, There) else serialize(message)

        return call
