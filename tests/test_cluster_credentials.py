"""Credentials and devices across several active coordinators of one PostgreSQL database
(placement "spread", in-process, no gRPC): a token created through one coordinator is accepted
at another within a deadline, a revoked one refused there; a device revoked (or given a new
token) at one loses its session at another, which ends the stream UNAUTHENTICATED; a change
whose notice was missed arrives with the periodic reload; and the login badges several
coordinators write for one device merge instead of replacing each other."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream
from pg_rig import empty_tables, pg_database
from polling import eventually_true

from coordinator.access.devices import end_status
from coordinator.access.records import (
    DEVICE_PREFIX,
    OPERATOR_PREFIX,
    DeviceEnrollment,
    OperatorToken,
    Role,
    hash_secret,
    new_secret,
)
from coordinator.access.registry import Credentials, Principal
from coordinator.actor import Coordinator, CoordinatorConfig
from coordinator.cluster.credentials import follow_credentials
from coordinator.domain import DeviceRecord, LoginState, Target, WorkerKind
from coordinator.errors import Unauthenticated
from coordinator.leasing import commands as c
from coordinator.operator_commands import CreateToken, EnrollDevice, RevokeDevice, RevokeToken
from coordinator.store import PostgresStore, WriteBatch
from postroom.clock import FakeClock
from postroom.v1 import worker_gateway_pb2 as wg

__all__ = ["pg_database"]

pytestmark = pytest.mark.anyio
T = TypeVar("T")

T0 = 1_800_000_000.0
DEADLINE_S = 10.0  # a notice arrives in milliseconds; the deadline only bounds a failure
POLL_S = 0.02
ADMIN = "user:admin"
TARGET = Target("mastodon", "acct-1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg is asyncio only


@dataclass(slots=True)
class Pair:
    """Two coordinators on one database, each with its own store; `b` follows the credentials
    (with `reload_s` between reloads when no notice comes)."""

    a: Coordinator
    b: Coordinator
    url: str


@contextlib.asynccontextmanager
async def running(store: PostgresStore, tg: TaskGroup) -> AsyncIterator[Coordinator]:
    co = Coordinator(store=store, clock=FakeClock(T0), config=CoordinatorConfig())
    await co.load()
    await tg.start(co.run)
    try:
        yield co
    finally:
        await co.stop()


@contextlib.asynccontextmanager
async def pair(url: str, *, reload_s: float) -> AsyncIterator[Pair]:
    await empty_tables(url)
    async with contextlib.AsyncExitStack() as stack:
        tg = await stack.enter_async_context(anyio.create_task_group())
        stores = [PostgresStore(url), PostgresStore(url)]
        for store in stores:
            await store.open()
            stack.push_async_callback(store.close)
        a = await stack.enter_async_context(running(stores[0], tg))
        b = await stack.enter_async_context(running(stores[1], tg))
        # Its own group, left first: the follower is gone before the stores close.
        follower = await stack.enter_async_context(anyio.create_task_group())
        follower.start_soon(lambda: follow_credentials(stores[1], b, reload_s=reload_s))
        yield Pair(a, b, url)
        follower.cancel_scope.cancel()


async def eventually(what: str, probe: Callable[[], T | None]) -> T:
    # The change comes through another coordinator and the database: no event to await.
    return await eventually_true(what, probe, DEADLINE_S, poll_s=POLL_S)


def accepted(co: Coordinator, secret: str) -> Principal | None:
    """The principal `co` sees for this operator token, None while it refuses it."""
    try:
        principal = co.credentials.operator(f"Bearer {secret}")
    except Unauthenticated:
        return None
    return principal if principal.authenticated else None


def refusal(co: Coordinator, secret: str) -> str | None:
    try:
        co.credentials.operator(f"Bearer {secret}")
    except Unauthenticated as exc:
        return str(exc)
    return None


async def create_token(co: Coordinator, name: str, role: Role = Role.ADMIN) -> str:
    secret = new_secret(OPERATOR_PREFIX)
    await co.command(CreateToken(f"t-{name}", name, role, hash_secret(secret), ADMIN))
    return secret


async def test_a_token_created_at_one_coordinator_works_at_another_and_stops_once_revoked(
    pg_database: str,
) -> None:
    # A minute between reloads: only the notice can make it in time.
    async with pair(pg_database, reload_s=60.0) as p:
        admin = await create_token(p.a, "admin")
        principal = await eventually("B accepts A's new token", lambda: accepted(p.b, admin))
        assert (principal.role, principal.token_id) == (Role.ADMIN, "t-admin")
        # The first token turned authentication on at B too: no token, no call.
        assert refusal(p.b, new_secret(OPERATOR_PREFIX)) is not None

        alice = await create_token(p.a, "alice", Role.AUTHOR)
        await eventually("B accepts alice's token", lambda: accepted(p.b, alice))
        await p.a.command(RevokeToken("alice", ADMIN))
        why = await eventually("B refuses alice's revoked token", lambda: refusal(p.b, alice))
        assert "was revoked" in why
        assert accepted(p.b, admin) is not None


async def test_a_change_whose_notice_was_missed_arrives_with_the_periodic_reload(
    pg_database: str,
) -> None:
    async with pair(pg_database, reload_s=0.2) as p:
        secret = new_secret(OPERATOR_PREFIX)
        # Written behind the coordinators' backs: no batch, so no notice.
        conn = await asyncpg.connect(p.url)
        try:
            await conn.execute(
                "INSERT INTO operator_tokens (id, name, role, token_hash, created_at, created_by)"
                " VALUES ('t-quiet', 'quiet', 'admin', $1, $2, 'system')",
                hash_secret(secret),
                T0,
            )
        finally:
            await conn.close()
        await eventually("B accepts the token by its reload", lambda: accepted(p.b, secret))


async def test_a_device_revoked_at_one_coordinator_loses_its_session_at_another(
    pg_database: str,
) -> None:
    async with pair(pg_database, reload_s=60.0) as p:
        await create_token(p.a, "admin")
        secret = new_secret(DEVICE_PREFIX)
        await p.a.command(EnrollDevice("phone", (TARGET,), hash_secret(secret), False, ADMIN))
        enrollment = await eventually(
            "B knows the enrollment", lambda: p.b.credentials.enrollment("phone")
        )
        session_id, messages = await session_at(p.b, enrollment, secret)

        await p.a.command(RevokeDevice("phone", ADMIN))
        with anyio.fail_after(DEADLINE_S), messages:
            async for _msg in messages:  # the Welcome, then the end of the stream
                pass
        await p.b.read(lambda now: None)  # after what the actor was told before: committed
        assert session_id not in p.b.core.sessions
        # What the worker is told as its stream ends, and at its next Hello.
        ended = end_status(
            p.b.credentials,
            p.b.core,
            enrollment=enrollment,
            device_id="phone",
            session_id=session_id,
        )
        assert ended is not None
        assert ended[0] is grpc.StatusCode.UNAUTHENTICATED
        assert "phone was revoked" in ended[1]
        with pytest.raises(Unauthenticated, match="revoked"):
            p.b.credentials.device("phone", secret, (TARGET,))
        disconnected = await p.b.store.list_audit(
            since=None, subject_id="phone", action="DEVICE_DISCONNECTED", after_seq=0, limit=10
        )
        assert [e.details["reason"] for e in disconnected] == ["device revoked"]


async def test_a_device_given_a_new_token_at_one_coordinator_must_use_it_at_another(
    pg_database: str,
) -> None:
    async with pair(pg_database, reload_s=60.0) as p:
        await create_token(p.a, "admin")
        old = new_secret(DEVICE_PREFIX)
        await p.a.command(EnrollDevice("phone", (TARGET,), hash_secret(old), False, ADMIN))
        enrollment = await eventually(
            "B knows the enrollment", lambda: p.b.credentials.enrollment("phone")
        )
        session_id, messages = await session_at(p.b, enrollment, old)

        assert isinstance(p.a.clock, FakeClock)
        p.a.clock.advance(60)  # the rotation comes later than the enrollment
        new = new_secret(DEVICE_PREFIX)
        await p.a.command(EnrollDevice("phone", (TARGET,), hash_secret(new), True, ADMIN))
        with anyio.fail_after(DEADLINE_S), messages:
            async for _msg in messages:
                pass
        assert session_id not in p.b.core.sessions
        with pytest.raises(Unauthenticated, match="unknown"):
            p.b.credentials.device("phone", old, (TARGET,))
        rotated = p.b.credentials.device("phone", new, (TARGET,))
        assert rotated is not None and rotated.token_hash == hash_secret(new)


async def session_at(
    co: Coordinator, enrollment: DeviceEnrollment, secret: str
) -> tuple[str, MemoryObjectReceiveStream[wg.CoordinatorMessage]]:
    """A worker's stream at `co` proved with the device's token, as the gateway opens it: its
    session id, once open, and what the coordinator sends it."""
    proved = co.credentials.device(enrollment.name, secret, (TARGET,))
    assert proved == enrollment
    session_id = f"s-{enrollment.name}"
    messages = co.open_outbox(session_id)
    await co.post(
        c.OpenStream(
            session_id,
            device_id=enrollment.name,
            kind=WorkerKind.API,
            capabilities=(TARGET,),
            slots=1,
            held=(),
            version="test",
            enrollment=proved,
        )
    )
    await eventually("the session is open", lambda: session_id in co.core.sessions)
    return session_id, messages


def device(last_seen_at: float, **logins: tuple[LoginState, float]) -> DeviceRecord:
    """The phone as one coordinator's memory has it: badges by account."""
    badges = {Target("mastodon", acct): (state, at, "") for acct, (state, at) in logins.items()}
    return DeviceRecord("phone", WorkerKind.API, (TARGET,), 2, last_seen_at, "test", badges)


async def test_login_badges_written_by_two_coordinators_merge_per_account(
    pg_database: str,
) -> None:
    await empty_tables(pg_database)
    one, two = PostgresStore(pg_database), PostgresStore(pg_database)
    await one.open()
    await two.open()
    try:
        ok, needs = LoginState.LOGGED_IN, LoginState.NEEDS_LOGIN
        await one.apply(WriteBatch(devices=[device(T0 + 5, a=(needs, T0 + 5))]))
        # Two knows nothing of account a: its write keeps one's badge and adds its own.
        await two.apply(WriteBatch(devices=[device(T0 + 3, b=(ok, T0 + 3))]))
        # One's memory is stale for b (an older check): the newer badge stays.
        await one.apply(WriteBatch(devices=[device(T0 + 4, a=(needs, T0 + 5), b=(needs, T0))]))
        (stored,) = await two.list_devices()
        assert stored.logins == {
            Target("mastodon", "a"): (needs, T0 + 5, ""),
            Target("mastodon", "b"): (ok, T0 + 3, ""),
        }
        assert stored.last_seen_at == T0 + 5  # the latest any coordinator saw
        # A newer check replaces the badge of its account.
        await two.apply(WriteBatch(devices=[device(T0 + 9, a=(ok, T0 + 9))]))
        (stored,) = await one.list_devices()
        assert stored.logins[Target("mastodon", "a")] == (ok, T0 + 9, "")
        assert stored.logins[Target("mastodon", "b")] == (ok, T0 + 3, "")
    finally:
        await one.close()
        await two.close()


def test_rows_read_before_a_local_change_committed_never_undo_it() -> None:
    """The store's rows may be older than this coordinator's memory (read before one of its own
    changes committed): merging them keeps a revocation and a newer device token."""
    admin = OperatorToken("t-admin", "admin", Role.ADMIN, hash_secret("a"), T0, ADMIN)
    old = DeviceEnrollment("phone", (TARGET,), hash_secret("old"), T0, ADMIN)
    new = DeviceEnrollment("phone", (TARGET,), hash_secret("new"), T0 + 60, ADMIN)
    creds = Credentials(tokens=[dataclasses.replace(admin, revoked_at=T0 + 1)], enrollments=[new])

    assert not creds.merge([admin], [old])
    with pytest.raises(Unauthenticated, match="was revoked"):
        creds.operator("Bearer a")
    assert creds.device("phone", "new", (TARGET,)) == new
    # The newer rows do come in: a revocation, and a device's new token ends its sessions.
    revoked = dataclasses.replace(new, revoked_at=T0 + 61)
    assert creds.merge([], [revoked]).ended == {"phone": "device revoked"}
    newest = DeviceEnrollment("phone", (TARGET,), hash_secret("newest"), T0 + 90, ADMIN)
    assert creds.merge([], [newest]).ended == {"phone": "device token replaced"}
