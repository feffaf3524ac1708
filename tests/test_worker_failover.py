"""A worker given several coordinators (`--coordinator a,b`, or a name with several addresses)
dials them in turn and fails over when its stream breaks, telling the next one which jobs it
still holds.

The rotation is a pure value (worker/dialing.py), tested without I/O; then a real worker against
scripted fake coordinators in this process; then real processes: the worker's first coordinator
is down, its second is SIGKILLed with a job in flight and a coordinator comes back on the first
address with the same database (a SQLite file, or a PostgreSQL database of the test's own): the
worker reconnects there within the backoff bound and the post is published exactly once.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import grpc
import httpx
import pytest
from pg_rig import own_database
from polling import wait_until
from test_worker_stream import FakeCoordinator, Platform, assign, make_worker

from postroom.address import split_targets
from postroom.clock import SystemClock
from postroom.tls import ClientTls, target_host
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg
from postroom.v1 import worker_gateway_pb2_grpc as wg_grpc
from postroom_cli.cluster import ClusterConfig, LocalCluster
from sandbox.admin import SandboxAdmin
from worker.adapters.base import AdapterRegistry
from worker.adapters.sandbox import sandbox_factory
from worker.config import DEFAULT_RECONNECT_MAX_S, BackoffPolicy
from worker.dialing import Rotation
from worker.shell import Worker

WAIT_S = 10.0
POLICY = BackoffPolicy(initial_s=1.0, factor=2.0, max_s=4.0)


# ---- the rotation, pure ----------------------------------------------------------------------


def test_a_failed_address_moves_on_at_once_and_a_round_of_failures_waits_the_backoff() -> None:
    r = Rotation(("a:1", "b:2", "c:3"), POLICY, index=1)
    dialled = [r.current]
    delays = []
    for _ in range(9):
        delays.append(r.failed(jitter=1.0))
        dialled.append(r.current)
    assert dialled == ["b:2", "c:3", "a:1"] * 3 + ["b:2"]
    # Every address once, then wait: 1 s, 2 s, 4 s (the backoff counted in rounds).
    assert delays == [0.0, 0.0, 1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 4.0]


def test_a_welcome_starts_the_backoff_over_and_the_broken_stream_counts_in_the_new_round() -> None:
    r = Rotation(("a:1", "b:2"), POLICY)
    for _ in range(6):
        r.failed(jitter=1.0)
    assert r.rounds == 3
    r.welcomed()  # on a:1
    assert r.failed(jitter=1.0) == 0.0 and r.current == "b:2"  # its stream broke: b at once
    assert r.failed(jitter=1.0) == 1.0  # b down too: the first wait again


def test_one_address_is_the_plain_backoff_and_the_start_is_spread() -> None:
    r = Rotation(("a:1",), POLICY)
    assert [r.failed(jitter=0.0) for _ in range(4)] == [0.5, 1.0, 2.0, 2.0]
    targets = ("a:1", "b:2", "c:3")
    assert [Rotation.starting_at(targets, POLICY, p).current for p in (0.0, 0.4, 0.99)] == [
        "a:1",
        "b:2",
        "c:3",
    ]


def test_coordinator_lists_parse_and_bad_parts_are_named() -> None:
    assert split_targets("a:1, b:2,a:1") == ("a:1", "b:2")
    assert split_targets("[::1]:5,dns:///coord.example:50051") == (
        "[::1]:5",
        "dns:///coord.example:50051",
    )
    with pytest.raises(ValueError, match=r"'b' is not HOST:PORT or dns:///NAME:PORT"):
        split_targets("a:1,b")
    # A DNS target on loopback dials in plaintext like the address it names.
    assert target_host("dns:///localhost:50051") == "localhost"
    assert ClientTls().credentials("dns:///localhost:50051") is None


# ---- a real worker, fake coordinators ----------------------------------------------------------


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def one_event_loop() -> AsyncIterator[None]:
    """grpc.aio finishes a closed call's bookkeeping on the loop after a test (as in
    test_worker_stream.py): one loop for this module's async tests."""
    yield


@asynccontextmanager
async def fake_at(listen: str) -> AsyncIterator[tuple[str, FakeCoordinator]]:
    fake = FakeCoordinator()
    server = grpc.aio.server()
    wg_grpc.add_WorkerGatewayServicer_to_server(fake, server)
    port = server.add_insecure_port(listen)
    await server.start()
    try:
        yield f"{listen.rpartition(':')[0]}:{port}", fake
    finally:
        await server.stop(None)


def free_address() -> str:
    """A loopback port nobody listens on (a coordinator that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def first_address_first(targets: str, platform: Platform) -> Worker:
    """make_worker's worker, with its rotation starting at the first address (jitter 0: a
    real worker starts at a random one)."""
    config = make_worker(targets, platform).config
    transport = httpx.MockTransport(platform.handle)
    factory = sandbox_factory(
        base_url="http://sandbox.test", clock=SystemClock(), transport=transport
    )
    return Worker(config=config, adapters=AdapterRegistry({"sandbox": factory}), jitter=lambda: 0.0)


@pytest.mark.anyio
@pytest.mark.usefixtures("one_event_loop")
async def test_the_worker_skips_a_dead_address_and_fails_over_with_its_held_jobs() -> None:
    platform = Platform()
    async with fake_at("127.0.0.1:0") as (first, fake1), fake_at("127.0.0.1:0") as (second, fake2):
        worker = first_address_first(f"{free_address()},{first},{second}", platform)
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            s1 = await fake1.next_session()  # the dead address is skipped
            s1.welcome()
            s1.send(assign=assign("held", epoch=7))
            await s1.next("commit_request")
            s1.end()  # the first coordinator goes away mid-job

            s2 = await fake2.next_session()
            assert [(h.job_id, h.lease_epoch) for h in s2.hello.held_jobs] == [("held", 7)]
            s2.welcome(resumed=list(s2.hello.held_jobs))
            assert (await s2.next("commit_request")).commit_request.job_id == "held"
            s2.send(commit_grant=wg.CommitGrant(job_id="held", lease_epoch=7))
            assert (await s2.next("result")).result.success
            assert worker.coordinator == second and worker.sessions_started == 2
            assert [p["key"] for p in platform.posts] == ["key-held"]
            tg.cancel_scope.cancel()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.anyio
@pytest.mark.usefixtures("one_event_loop")
@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_a_name_with_several_addresses_reaches_the_one_that_answers() -> None:
    # `localhost` resolves to 127.0.0.1 and ::1; the coordinator listens on ::1 only, so a dial
    # that tries 127.0.0.1 first must go on to the next address by itself.
    async with fake_at("[::1]:0") as (address, fake):
        port = address.rpartition(":")[2]
        for target in (f"localhost:{port}", f"dns:///localhost:{port}"):
            worker = make_worker(target, Platform())
            async with anyio.create_task_group() as tg:
                await tg.start(worker.run)
                session = await fake.next_session()
                session.welcome()
                await session.next("heartbeat")
                assert worker.ready.is_set() and worker.coordinator == target
                tg.cancel_scope.cancel()


# ---- real processes ------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """The coordinator on a SQLite file, or on a PostgreSQL database of this test's own."""
    config = ClusterConfig(heartbeat_interval_s=0.5, lease_ttl_s=3.0, retry_initial_s=0.3)
    with contextlib.ExitStack() as stack:  # the database outlives the cluster's processes
        url = stack.enter_context(own_database()) if request.param == "postgresql" else ""
        c = stack.enter_context(LocalCluster(tmp_path, config))
        c.db_url = url or c.db_url
        c.start_sandbox()
        c.start_coordinator()
        yield c


def _online_at(cluster: LocalCluster, device_id: str) -> bool:
    with cluster.client() as client:
        devices = {d.id: d.state for d in client.list_devices().devices}
    return devices.get(device_id) == pb.DEVICE_STATE_ONLINE


def test_a_worker_fails_over_between_coordinator_processes_and_publishes_once(
    cluster: LocalCluster,
) -> None:
    down, b = free_address(), cluster.coordinator_address
    worker = cluster.start_worker(
        "failover-w1", platforms=["sandbox:failover"], extra=["--coordinator", f"{down},{b}"]
    )
    cluster.wait_online(["failover-w1"])
    wait_until("its ready line", lambda: f"ready (coordinator {b})" in worker.log_tail())
    with cluster.sandbox_admin() as admin:
        _kill_b_with_a_job_in_flight_and_come_back_on(cluster, admin, down)
    assert worker.alive()


def _kill_b_with_a_job_in_flight_and_come_back_on(
    cluster: LocalCluster, admin: SandboxAdmin, down: str
) -> None:
    # The post is made, then the answer hangs: the job is in the worker's hands when B dies.
    admin.inject("accept_then_hang", account="failover", hang_seconds=1.5)
    with cluster.client() as client:
        post_id = cluster.publish(client, "outlives its coordinator", ["sandbox:failover"])
        wait_until("the worker to be posting", lambda: admin.stats()["hanging"] == 1)
    assert cluster.coordinator is not None
    cluster.coordinator.kill()
    cluster.coordinator_address = down  # a coordinator comes back on the first address
    cluster.start_coordinator()
    back = time.monotonic()
    wait_until("the worker on the first address", lambda: _online_at(cluster, "failover-w1"), 30)
    # Within the backoff's cap (then a dial, a Hello, a Welcome), not grpc's own 120 s.
    assert time.monotonic() - back < DEFAULT_RECONNECT_MAX_S + 4.0
    with cluster.client() as client:
        wait_until(
            "the post published",
            lambda: client.get_post(post_id).status == pb.POST_STATUS_PUBLISHED,
            30,
        )
        [job] = client.list_jobs(pub.ListJobsRequest(post_id=post_id)).jobs
    made = admin.posts(account="failover")
    assert [p["client_key"] for p in made] == [job.platform_key]  # once, never twice
    assert admin.duplicates() == []
