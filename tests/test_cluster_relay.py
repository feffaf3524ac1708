"""Workers may connect to any coordinator: a standby relays a worker's stream to the active one.

The active coordinator is a real in-process coordinator with authentication on (access_rig); the
standby is a gRPC server wired as coordinator.main wires one (the forwarding and relaying
interceptors, the WorkerGateway of a coordinator that never runs, with the cluster role's
refusal). What a worker notices is asserted: the active's welcome and errors through the
standby, its Goodbye or its hanging up seen by the active as such, and the refusal, naming the
active, when relaying cannot help.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import grpc
import pytest
from access_rig import Rig, secure_coordinator
from scripted_worker import ScriptedWorker, StreamEnded

from coordinator import wire
from coordinator.access.registry import AccessPolicy, Credentials
from coordinator.actor import Coordinator, CoordinatorConfig
from coordinator.assets import AssetStore
from coordinator.cluster.forward import FORWARDED_HEADER, ForwardToActive
from coordinator.cluster.relay import RelayWorkersToActive
from coordinator.cluster.role import ClusterRole
from coordinator.gateway import WorkerGatewayService
from coordinator.store import open_store
from postroom.clock import SystemClock
from postroom.tls import ClientTls
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg
from postroom.v1 import worker_gateway_pb2_grpc as wg_grpc

pytestmark = pytest.mark.anyio
WAIT_S = 10.0


@dataclass
class Standby:
    address: str
    role: ClusterRole
    relay: RelayWorkersToActive


@contextlib.asynccontextmanager
async def standby_server(tmp_path: Path, role: ClusterRole) -> AsyncIterator[Standby]:
    store = open_store("memory://")
    await store.open()
    credentials = Credentials(policy=AccessPolicy(require_auth=True))  # it knows no token
    coordinator = Coordinator(
        store=store, clock=SystemClock(), config=CoordinatorConfig(), credentials=credentials
    )
    tls = ClientTls(insecure_plaintext=True)
    forward = ForwardToActive(is_active=role.is_active, active_address=role.active_address, tls=tls)
    relay = RelayWorkersToActive(role, forward.channel)
    server = grpc.aio.server(interceptors=[forward, relay])
    gateway = WorkerGatewayService(
        coordinator, AssetStore(tmp_path / "standby"), refusal=role.refusal
    )
    wire.add_worker_gateway(server, gateway)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(coordinator.run)  # as a process would; no worker's stream reaches it
            try:
                yield Standby(f"127.0.0.1:{port}", role, relay)
            finally:
                await coordinator.stop()
                await server.stop(None)
                await forward.close()
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()


@contextlib.asynccontextmanager
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Rig, Standby]]:
    """The active coordinator and a standby that knows it."""
    async with secure_coordinator(tmp_path / "active") as active:
        role = ClusterRole("standby", "127.0.0.1:1", leader_address=active.address)
        async with standby_server(tmp_path, role) as standby:
            yield active, standby


async def disconnects(active: Rig) -> list[str]:
    """The reasons of the active's DEVICE_DISCONNECTED audit events, polled until one is there."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = await active.stub(active.admin_token).call(
            "ListAuditEvents", pub.ListAuditEventsRequest(action="DEVICE_DISCONNECTED")
        )
        assert isinstance(found, pub.ListAuditEventsResponse)
        if found.events or time.monotonic() > deadline:
            return [e.details_json for e in found.events]
        await anyio.sleep(0.05)


async def test_a_worker_through_a_standby_is_welcomed_by_the_active_and_its_goodbye_reaches_it(
    tmp_path: Path,
) -> None:
    async with pair(tmp_path) as (active, standby):
        token = await active.enroll("dev-r", "sandbox:a")
        async with ScriptedWorker(
            standby.address, "dev-r", capabilities=[("sandbox", "a")], token=token
        ) as w:
            welcome = await w.hello()
            assert welcome.session_id.startswith("s-")
            await w.heartbeat()
            devices = await active.stub(active.admin_token).call(
                "ListDevices", pub.ListDevicesRequest()
            )
            assert isinstance(devices, pub.ListDevicesResponse)
            assert [(d.id, d.state) for d in devices.devices] == [("dev-r", pb.DEVICE_STATE_ONLINE)]
            await w.goodbye("done for today")
            code, _ = await w.wait_ended()
            assert code == grpc.StatusCode.OK
        (reason,) = await disconnects(active)
        assert "worker said goodbye: done for today" in reason
        assert standby.relay.relayed == 1


async def test_a_worker_that_hangs_up_on_the_standby_is_lost_to_the_active(
    tmp_path: Path,
) -> None:
    async with pair(tmp_path) as (active, standby):
        token = await active.enroll("dev-r", "sandbox:a")
        async with ScriptedWorker(
            standby.address, "dev-r", capabilities=[("sandbox", "a")], token=token
        ) as w:
            await w.hello()
            await w.kill()  # no Goodbye: the relay cancels its call to the active
        (reason,) = await disconnects(active)
        assert "worker lost" in reason or "stream broke" in reason


async def test_the_actives_refusal_of_a_wrong_token_reaches_the_worker_unchanged(
    tmp_path: Path,
) -> None:
    async with pair(tmp_path) as (active, standby):
        await active.enroll("dev-r", "sandbox:a")
        ended = []
        for address in (active.address, standby.address):
            async with ScriptedWorker(
                address, "dev-r", capabilities=[("sandbox", "a")], token="wrong"
            ) as w:
                with pytest.raises(StreamEnded):
                    await w.hello()
                ended.append(w.end_status)
        assert ended[0] == ended[1]
        assert ended[0][0] == grpc.StatusCode.UNAUTHENTICATED


async def refused(address: str, *, forwarded: bool = False) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = wg_grpc.WorkerGatewayStub(channel)
        metadata = ((FORWARDED_HEADER, "1"),) if forwarded else ()
        hello = wg.WorkerMessage(hello=wg.Hello(device_id="dev-r", slots=1))
        call = stub.Connect(iter([hello]), metadata=metadata, timeout=WAIT_S)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
    return caught.value.code(), caught.value.details() or ""


async def test_a_standby_refuses_naming_the_active_when_relaying_cannot_help(
    tmp_path: Path,
) -> None:
    async with pair(tmp_path) as (active, standby):
        # Already forwarded once (two coordinators that each believe the other active).
        assert await refused(standby.address, forwarded=True) == (
            grpc.StatusCode.UNAVAILABLE,
            f"standby: this coordinator is not active; the active one is {active.address}",
        )
        standby.role.leader_address = None  # a takeover is in progress
        assert await refused(standby.address) == (
            grpc.StatusCode.UNAVAILABLE,
            "standby: this coordinator is not active; no coordinator is active yet",
        )
        assert standby.relay.relayed == 0


class HangingActive(wg_grpc.WorkerGatewayServicer):
    """An active coordinator's gateway that welcomes a worker, then says nothing more."""

    async def Connect(
        self, request_iterator: AsyncIterator[wg.WorkerMessage], context: object
    ) -> AsyncIterator[wg.CoordinatorMessage]:
        await anext(request_iterator)
        yield wg.CoordinatorMessage(welcome=wg.Welcome(session_id="s-hanging"))
        await anyio.sleep_forever()


async def test_a_relayed_stream_ends_unavailable_when_the_active_dies(tmp_path: Path) -> None:
    server = grpc.aio.server()
    wg_grpc.add_WorkerGatewayServicer_to_server(HangingActive(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        role = ClusterRole("standby", "127.0.0.1:1", leader_address=f"127.0.0.1:{port}")
        async with (
            standby_server(tmp_path, role) as standby,
            ScriptedWorker(standby.address, "dev-r") as w,
        ):
            assert (await w.hello()).session_id == "s-hanging"
            await server.stop(None)  # the active is gone, its connections with it
            code, _ = await w.wait_ended(WAIT_S)
            assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)
