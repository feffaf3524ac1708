"""Placement "spread": one worker stream, fanned out by the coordinator it dialled to every owner.

Two in-process gRPC servers on 127.0.0.1:0 stand in for two owners of shards: A (the coordinator
the worker dials, with the `FanOutWorkers` interceptor; its own leg comes back to it through a
loopback channel marked forwarded) and B. Their WorkerGateway is scripted (what each owner got,
what it sends and when it ends are the test's); the worker is a real gRPC client. What the worker
notices is asserted: one Welcome, every owner's jobs, acks that come when every owner renewed,
its stream's end when an owner's ends; and what each owner notices: the worker's Hello with its
share of slots, the messages of its jobs only, the worker's goodbye or its loss.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import grpc
import pytest
from access_rig import secure_coordinator
from conftest import coordinator_server, job_ids, publish
from scripted_worker import ScriptedWorker

from coordinator.cluster.fanout import FanOutWorkers, OwnerChannels
from coordinator.cluster.fanout_owners import DownOwners
from coordinator.cluster.fanout_routing import Routes, split_slots
from coordinator.cluster.forward import FORWARDED_HEADER
from postroom.tls import ClientTls
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg
from postroom.v1 import worker_gateway_pb2_grpc as wg_grpc

pytestmark = pytest.mark.anyio
WAIT_S = 10.0
TOKEN = "device-token-1"
OWNER_DOWN_S = 12.0  # how long the rig's fan-out leaves out an owner that does not answer
Ctx = grpc.aio.ServicerContext[wg.WorkerMessage, wg.CoordinatorMessage]
WorkerCall = grpc.aio.StreamStreamCall[wg.WorkerMessage, wg.CoordinatorMessage]


@dataclass
class Owner:
    """A scripted owner's WorkerGateway: one stream, recorded."""

    name: str
    resume: frozenset[str] = frozenset()  # held job ids it keeps
    accepts_batches: bool = True
    lease_ttl_ms: int = 30_000
    refuse: tuple[grpc.StatusCode, str] | None = None
    welcomes: bool = True  # False: it never answers the Hello
    ends_on_eof: bool = True  # it ends its side after the worker's half-close, as a gateway does
    hellos: list[wg.Hello] = field(default_factory=list)
    metadata: list[dict[str, str | bytes]] = field(default_factory=list)
    received: asyncio.Queue[wg.WorkerMessage] = field(default_factory=asyncio.Queue)
    outbox: asyncio.Queue[wg.CoordinatorMessage | None] = field(default_factory=asyncio.Queue)
    eof: asyncio.Event = field(default_factory=asyncio.Event)  # the worker's half-close
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # the stream is over here
    cancelled: bool = False  # it ended cancelled (the peer hung up), as a lost stream does

    async def next(self) -> wg.WorkerMessage:
        with anyio.fail_after(WAIT_S):
            return await self.received.get()

    async def send(self, **msg: Any) -> None:
        await self.outbox.put(wg.CoordinatorMessage(**msg))


class ScriptedGateway(wg_grpc.WorkerGatewayServicer):
    def __init__(self, owner: Owner) -> None:
        self.owner = owner

    async def Connect(
        self, request_iterator: AsyncIterator[wg.WorkerMessage], context: Ctx
    ) -> AsyncIterator[wg.CoordinatorMessage]:
        owner = self.owner
        try:
            hello = (await anext(request_iterator)).hello
            owner.hellos.append(hello)
            owner.metadata.append(dict(context.invocation_metadata() or ()))
            if owner.refuse is not None:
                await context.abort(*owner.refuse)
            if not owner.welcomes:
                await asyncio.Event().wait()  # until cancelled
            resumed = [h for h in hello.held_jobs if h.job_id in owner.resume]
            yield wg.CoordinatorMessage(
                welcome=wg.Welcome(
                    session_id=f"s-{owner.name}",
                    heartbeat_interval_ms=5_000,
                    lease_ttl_ms=owner.lease_ttl_ms,
                    resumed=resumed,
                    max_chunk_bytes=65_536,
                    max_asset_bytes=1 << 20,
                    accepts_batches=owner.accepts_batches,
                )
            )

            async def read() -> None:
                async for msg in request_iterator:
                    await owner.received.put(msg)
                owner.eof.set()
                if owner.ends_on_eof:
                    await owner.outbox.put(None)

            reader = asyncio.create_task(read())
            try:
                while (msg := await owner.outbox.get()) is not None:
                    yield msg
            finally:
                reader.cancel()
        except asyncio.CancelledError:
            owner.cancelled = True
            raise
        finally:
            owner.ended.set()


@dataclass
class Rig:
    a: Owner
    b: Owner
    address: str  # A's: where the worker dials
    owners: list[str]  # what the fan-out reads as the owners' addresses
    fan: FanOutWorkers
    b_server: grpc.aio.Server
    clock: list[float]  # the fan-out's monotonic clock (its down marks'), moved by the test
    b_address: str = ""

    async def restart_b(self, b: Owner) -> None:
        """B (stopped) is back at its address, a new process: `b`."""
        self.b = b
        self.b_server, _ = await _serve(b, int(self.b_address.rpartition(":")[2]))


async def _serve(
    owner: Owner, port: int = 0, interceptors: Sequence[Any] = ()
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=list(interceptors))
    wg_grpc.add_WorkerGatewayServicer_to_server(ScriptedGateway(owner), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


@contextlib.asynccontextmanager
async def rig(a: Owner, b: Owner, *, welcome_timeout_s: float = WAIT_S) -> AsyncIterator[Rig]:
    channels = OwnerChannels(ClientTls(insecure_plaintext=True))
    owners: list[str] = []
    clock = [1_000.0]
    fan = FanOutWorkers(
        lambda: owners,
        channels.channel,
        welcome_timeout_s=welcome_timeout_s,
        owner_down_s=OWNER_DOWN_S,
        monotonic=lambda: clock[0],
    )
    a_server, a_port = await _serve(a, interceptors=[fan])
    b_server, b_port = await _serve(b)
    owners += [f"127.0.0.1:{a_port}", f"127.0.0.1:{b_port}"]
    r = Rig(a, b, owners[0], owners, fan, b_server, clock, owners[1])
    try:
        yield r
    finally:
        await a_server.stop(None)
        await r.b_server.stop(None)
        await channels.close()


def held(job_id: str, epoch: int) -> wg.HeldJob:
    return wg.HeldJob(job_id=job_id, lease_epoch=epoch)


def hello(slots: int = 3, held_jobs: Sequence[wg.HeldJob] = ()) -> wg.WorkerMessage:
    return wg.WorkerMessage(
        hello=wg.Hello(
            device_id="dev-1",
            token=TOKEN,
            capabilities=[pb.Target(platform="mastodon", account="*")],
            slots=slots,
            held_jobs=held_jobs,
            per_account_slots=1,
            accepts_batches=True,
        )
    )


@contextlib.asynccontextmanager
async def worker(r: Rig, first: wg.WorkerMessage) -> AsyncIterator[WorkerCall]:
    async with grpc.aio.insecure_channel(r.address) as channel:
        stub = wg_grpc.WorkerGatewayStub(channel)
        call: WorkerCall = stub.Connect(None, metadata=(("authorization", f"Bearer {TOKEN}"),))
        await call.write(first)
        try:
            yield call
        finally:
            call.cancel()


async def read(call: WorkerCall) -> wg.CoordinatorMessage:
    with anyio.fail_after(WAIT_S):
        msg = await call.read()
    assert isinstance(msg, wg.CoordinatorMessage), "the stream ended"
    return msg


async def status(call: WorkerCall) -> grpc.StatusCode:
    with anyio.fail_after(WAIT_S):
        try:
            while isinstance(await call.read(), wg.CoordinatorMessage):
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        code: grpc.StatusCode = await call.code()
        return code


def assign(job_id: str, epoch: int = 1) -> wg.Assign:
    return wg.Assign(job_id=job_id, lease_epoch=epoch, platform="mastodon", account="acct")


async def welcomed(r: Rig, call: WorkerCall) -> wg.Welcome:
    msg = await read(call)
    assert msg.WhichOneof("msg") == "welcome"
    return msg.welcome


# ---- the opening --------------------------------------------------------------------------


async def test_the_worker_gets_one_welcome_with_every_owners_resumed_jobs() -> None:
    a = Owner("a", resume=frozenset({"job-a"}), lease_ttl_ms=30_000)
    b = Owner("b", resume=frozenset({"job-b"}), lease_ttl_ms=20_000, accepts_batches=False)
    held_jobs = [held("job-a", 3), held("job-b", 4), held("job-gone", 5)]
    async with rig(a, b) as r, worker(r, hello(slots=3, held_jobs=held_jobs)) as call:
        welcome = await welcomed(r, call)
        assert welcome.session_id == "s-a"
        assert {(h.job_id, h.lease_epoch) for h in welcome.resumed} == {
            ("job-a", 3),
            ("job-b", 4),
        }
        assert welcome.lease_ttl_ms == 20_000  # the shorter lease: renewed in time for both
        assert not welcome.accepts_batches  # B does not take batches
        # Each owner got the worker's Hello: its token and metadata, every held job, a share
        # of the slots that together never exceed the worker's.
        for owner, slots in ((a, 2), (b, 1)):
            (h,) = owner.hellos
            assert (h.device_id, h.token, h.slots, h.per_account_slots) == (
                "dev-1",
                TOKEN,
                slots,
                1,
            )
            assert [j.job_id for j in h.held_jobs] == ["job-a", "job-b", "job-gone"]
            assert owner.metadata[0]["authorization"] == f"Bearer {TOKEN}"
            assert owner.metadata[0][FORWARDED_HEADER] == "1"
        assert r.fan.fanned_out == 1
        # Work from both owners reaches the worker after the Welcome.
        await a.send(assign=assign("a-1"))
        await b.send(assign=assign("b-1"))
        got = {(await read(call)).assign.job_id, (await read(call)).assign.job_id}
        assert got == {"a-1", "b-1"}


async def test_an_owner_refusing_the_hello_refuses_the_stream_as_it_said() -> None:
    b = Owner("b", refuse=(grpc.StatusCode.UNAUTHENTICATED, "unknown device token"))
    # A ends only when cancelled: its end tells a loss from a goodbye.
    async with rig(Owner("a", ends_on_eof=False), b) as r, worker(r, hello()) as call:
        assert await status(call) is grpc.StatusCode.UNAUTHENTICATED
        assert "unknown device token" in (await call.details() or "")
        with anyio.fail_after(WAIT_S):
            await r.a.ended.wait()  # A's leg is not left open
        # Refused, the worker will not be back at once: A sees it lost, not reconnecting.
        assert r.a.cancelled and r.a.received.empty()


def test_slots_are_split_so_the_owners_never_assign_more_than_the_worker_runs() -> None:
    assert split_slots(3, 2) == [2, 1]
    assert split_slots(8, 3) == [3, 3, 2]
    assert split_slots(1, 1) == [1]
    assert split_slots(1, 3) == [1, 1, 1]  # fewer slots than owners: at least 1 each
    assert split_slots(0, 2) == [0, 0]  # an invalid count: each owner refuses it


# ---- routing ------------------------------------------------------------------------------


async def test_job_messages_go_to_the_owner_that_leased_the_job() -> None:
    a, b = Owner("a"), Owner("b", resume=frozenset({"old-b"}))
    async with rig(a, b) as r, worker(r, hello(held_jobs=[held("old-b", 2)])) as call:
        await welcomed(r, call)
        await a.send(assign=assign("a-1"))
        await read(call)
        await b.send(assign=assign("b-1", epoch=7))
        await read(call)
        await call.write(wg.WorkerMessage(ack=wg.AssignAck(job_id="b-1", lease_epoch=7)))
        await call.write(wg.WorkerMessage(ack=wg.AssignAck(job_id="a-1", lease_epoch=1)))
        await call.write(wg.WorkerMessage(result=wg.JobResult(job_id="old-b", lease_epoch=2)))
        await call.write(wg.WorkerMessage(result=wg.JobResult(job_id="nobody", lease_epoch=1)))
        assert (await b.next()).ack.job_id == "b-1"
        assert (await b.next()).result.job_id == "old-b"  # resumed by B: B's
        assert (await a.next()).ack.job_id == "a-1"
        assert (await a.next()).result.job_id == "nobody"  # unknown: the first owner's
        # A login check is answered to the owner that asked.
        target = pb.Target(platform="mastodon", account="acct")
        await b.send(login_check=wg.LoginCheck(request_id="r-1", target=target))
        assert (await read(call)).login_check.request_id == "r-1"
        answer = wg.LoginCheckResult(request_id="r-1", target=target)
        await call.write(wg.WorkerMessage(login_check=answer))
        assert (await b.next()).login_check.request_id == "r-1"


async def test_heartbeats_reach_every_owner_and_are_acked_once_all_renewed() -> None:
    async with rig(Owner("a"), Owner("b")) as r, worker(r, hello()) as call:
        a, b = r.a, r.b
        await welcomed(r, call)
        await a.send(assign=assign("a-1"))
        await b.send(assign=assign("b-1"))
        await read(call)
        await read(call)
        beat = wg.Heartbeat(seq=1, active=[held("a-1", 1), held("b-1", 1)])
        await call.write(wg.WorkerMessage(heartbeat=beat))
        got_a, got_b = (await a.next()).heartbeat, (await b.next()).heartbeat
        assert (got_a.seq, [h.job_id for h in got_a.active]) == (1, ["a-1"])
        assert (got_b.seq, [h.job_id for h in got_b.active]) == (1, ["b-1"])
        # A renews first, to a later deadline: the worker hears nothing of it until B renews
        # too, then one ack with the earlier deadline.
        await a.send(heartbeat_ack=wg.HeartbeatAck(seq=1, lease_deadline_unix_ms=2_000_000))
        await b.send(heartbeat_ack=wg.HeartbeatAck(seq=1, lease_deadline_unix_ms=1_000_000))
        ack = await read(call)
        assert ack.WhichOneof("msg") == "heartbeat_ack"
        assert (ack.heartbeat_ack.seq, ack.heartbeat_ack.lease_deadline_unix_ms) == (1, 1_000_000)


async def test_a_worker_batch_is_split_per_owner_in_order() -> None:
    async with rig(Owner("a"), Owner("b")) as r, worker(r, hello()) as call:
        a, b = r.a, r.b
        assert (await welcomed(r, call)).accepts_batches
        # B sends its Assigns in one batch: they reach the worker as they came.
        await a.send(assign=assign("a-1"))
        await read(call)
        batch = wg.CoordinatorBatch(
            messages=[wg.CoordinatorMessage(assign=assign(j)) for j in ("b-1", "b-2")]
        )
        await b.send(batch=batch)
        got = await read(call)
        assert [m.assign.job_id for m in got.batch.messages] == ["b-1", "b-2"]
        messages = [
            wg.WorkerMessage(log=wg.JobLog(job_id="b-1", lease_epoch=1, message="1")),
            wg.WorkerMessage(log=wg.JobLog(job_id="a-1", lease_epoch=1, message="2")),
            wg.WorkerMessage(result=wg.JobResult(job_id="b-2", lease_epoch=1)),
            wg.WorkerMessage(heartbeat=wg.Heartbeat(seq=5, active=[held("b-1", 1)])),
            wg.WorkerMessage(result=wg.JobResult(job_id="b-1", lease_epoch=1)),
        ]
        await call.write(wg.WorkerMessage(batch=wg.WorkerBatch(messages=messages)))
        to_b = (await b.next()).batch.messages
        assert [m.WhichOneof("msg") for m in to_b] == ["log", "result", "heartbeat", "result"]
        assert [to_b[0].log.message, to_b[1].result.job_id, to_b[3].result.job_id] == [
            "1",
            "b-2",
            "b-1",
        ]
        assert [h.job_id for h in to_b[2].heartbeat.active] == ["b-1"]
        to_a = (await a.next()).batch.messages
        assert [m.WhichOneof("msg") for m in to_a] == ["log", "heartbeat"]
        assert to_a[0].log.message == "2"
        assert list(to_a[1].heartbeat.active) == []


# ---- ending -------------------------------------------------------------------------------


async def reconnecting_goodbye(owner: Owner) -> wg.Goodbye:
    """The Goodbye a fan-out ending for the cluster's reasons sends, then its half-close."""
    msg = await owner.next()
    assert msg.WhichOneof("msg") == "goodbye" and msg.goodbye.reconnecting, msg
    assert owner.eof.is_set() and not owner.cancelled
    return msg.goodbye


async def test_an_owner_dying_tells_the_other_owner_the_worker_reconnects_then_ends() -> None:
    """B dies. A's leg is fine: A hears Goodbye(reconnecting) and the half-close, and its leg is
    over (so A keeps the worker's leases for its reconnect, not recovering them as a lost
    worker's) before the worker hears UNAVAILABLE and dials again."""
    async with rig(Owner("a"), Owner("b")) as r, worker(r, hello()) as call:
        await welcomed(r, call)
        await r.b_server.stop(None)
        assert await status(call) is grpc.StatusCode.UNAVAILABLE
        assert r.a.ended.is_set()  # before the worker's stream ended
        goodbye = await reconnecting_goodbye(r.a)
        assert r.owners[1] in goodbye.reason


async def test_an_owner_that_never_welcomes_detaches_the_others() -> None:
    """No Welcome from B in time: A, which welcomed the worker (and may have resumed its held
    jobs), hears that it reconnects; the worker is told to retry."""
    a, b = Owner("a", resume=frozenset({"job-a"})), Owner("b", welcomes=False)
    async with (
        rig(a, b, welcome_timeout_s=0.5) as r,
        worker(r, hello(held_jobs=[held("job-a", 2)])) as call,
    ):
        assert await status(call) is grpc.StatusCode.UNAVAILABLE
        assert "no Welcome" in (await call.details() or "")
        await reconnecting_goodbye(a)
        with anyio.fail_after(WAIT_S):
            await b.ended.wait()
        assert b.cancelled


async def test_the_worker_hanging_up_is_a_loss_for_every_owner() -> None:
    a, b = Owner("a", ends_on_eof=False), Owner("b", ends_on_eof=False)  # ended only by a cancel
    async with rig(a, b) as r, worker(r, hello()) as call:
        await welcomed(r, call)
        call.cancel()
        with anyio.fail_after(WAIT_S):
            await r.a.ended.wait()
            await r.b.ended.wait()
        for owner in (r.a, r.b):  # no goodbye: lost, as directly
            assert owner.cancelled and owner.received.empty()


async def test_a_worker_whose_every_owner_cannot_be_reached_is_told_to_retry() -> None:
    async with rig(Owner("a"), Owner("b")) as r:
        r.owners[:] = ["127.0.0.1:1"]  # the one owner's address, nothing listening there
        async with worker(r, hello()) as call:
            assert await status(call) is grpc.StatusCode.UNAVAILABLE
            details = await call.details() or ""
            assert "the shard owner(s) at 127.0.0.1:1 do not answer" in details
            assert "active coordinator" not in details  # there is no one active in spread
        assert r.a.hellos == [] and r.b.hellos == []


# ---- an owner that does not answer ------------------------------------------------------


async def beat(call: WorkerCall, owners: Sequence[Owner], seq: int) -> wg.HeartbeatAck:
    """A heartbeat the worker sends and every owner acknowledges: its stream goes on."""
    await call.write(wg.WorkerMessage(heartbeat=wg.Heartbeat(seq=seq)))
    for owner in owners:
        assert (await owner.next()).heartbeat.seq == seq
        await owner.send(heartbeat_ack=wg.HeartbeatAck(seq=seq, lease_deadline_unix_ms=seq))
    msg = await read(call)
    assert msg.WhichOneof("msg") == "heartbeat_ack", msg
    return msg.heartbeat_ack


async def test_a_dead_owner_is_left_out_until_it_owns_shards_again() -> None:
    """B dies (nothing listens at its address) while the owners still name it, as they do until
    its shard leases run out. The worker is served by A alone, with all its slots; the owners
    still naming B do not end its stream, nor does B leaving them (its shards claimed by A). B
    started again and owning shards again: the stream is re-established with a leg to B."""
    async with rig(Owner("a"), Owner("b")) as r:
        await r.b_server.stop(None)
        async with worker(r, hello(slots=3)) as call:
            assert (await welcomed(r, call)).session_id == "s-a"
            assert [h.slots for h in r.a.hellos] == [3]  # the slots split among the legs opened
            await r.a.send(assign=assign("a-1"))
            assert (await read(call)).assign.job_id == "a-1"
            assert (await beat(call, [r.a], seq=1)).seq == 1  # B still an owner: goes on
            r.owners.remove(r.b_address)  # B's shards are A's now
            assert (await beat(call, [r.a], seq=2)).seq == 2  # nothing changed for the worker
            await r.restart_b(Owner("b2"))
            r.owners.append(r.b_address)  # B is back and has claimed shards
            await call.write(wg.WorkerMessage(heartbeat=wg.Heartbeat(seq=3)))
            assert await status(call) is grpc.StatusCode.UNAVAILABLE
            assert "changed" in (await call.details() or "")
            assert "changed" in (await reconnecting_goodbye(r.a)).reason
        async with worker(r, hello(slots=3)) as call:
            assert (await welcomed(r, call)).session_id == "s-a"
            assert [h.slots for h in r.a.hellos] == [3, 2]
            assert [h.slots for h in r.b.hellos] == [1]
            await r.b.send(assign=assign("b-1"))
            assert (await read(call)).assign.job_id == "b-1"


async def test_an_owner_back_at_its_address_is_reached_once_its_mark_runs_out() -> None:
    """B dies and comes back (same address) while still an owner all along: streams go on
    without it until its down mark runs out, then are re-established with a leg to it."""
    async with rig(Owner("a"), Owner("b")) as r:
        await r.b_server.stop(None)
        async with worker(r, hello(slots=2)) as call:
            await welcomed(r, call)
            await r.restart_b(Owner("b2"))
            assert (await beat(call, [r.a], seq=1)).seq == 1  # still marked down: left out
            r.clock[0] += OWNER_DOWN_S
            await call.write(wg.WorkerMessage(heartbeat=wg.Heartbeat(seq=2)))
            assert await status(call) is grpc.StatusCode.UNAVAILABLE
            assert "changed" in (await reconnecting_goodbye(r.a)).reason
        async with worker(r, hello(slots=2)) as call:
            await welcomed(r, call)
            assert [h.slots for h in r.b.hellos] == [1]
            assert (await beat(call, [r.a, r.b], seq=3)).seq == 3


async def test_an_owner_that_answers_unavailable_is_not_left_out() -> None:
    """B is up but refuses the Hello with UNAVAILABLE (say, not serving yet): the stream fails
    as B said, and the reconnect still opens a leg to B (only an owner that cannot be reached is
    left out)."""
    b = Owner("b", refuse=(grpc.StatusCode.UNAVAILABLE, "not serving yet"))
    async with rig(Owner("a"), b) as r:
        async with worker(r, hello()) as call:
            assert await status(call) is grpc.StatusCode.UNAVAILABLE
            assert "not serving yet" in (await call.details() or "")
        b.refuse = None
        async with worker(r, hello()) as call:
            await welcomed(r, call)
            assert len(b.hellos) == 2


def test_a_down_mark_lasts_until_the_address_is_no_longer_an_owner_or_runs_out() -> None:
    now = [0.0]
    down = DownOwners(10.0, lambda: now[0])
    assert down.mark("b") and not down.mark("b")  # the second: already marked
    assert down.live(["a", "b", "c"]) == ["a", "c"]
    assert down.live(["a", "c"]) == ["a", "c"]  # b no longer an owner: its mark is forgotten
    assert down.live(["a", "b", "c"]) == ["a", "b", "c"]  # b owns shards again: reached
    down.mark("c")
    now[0] = 9.9
    assert down.live(["a", "c"]) == ["a"]
    now[0] = 10.0
    assert down.live(["a", "c"]) == ["a", "c"]  # run out: tried again


async def test_the_workers_goodbye_and_half_close_reach_every_owner() -> None:
    async with rig(Owner("a"), Owner("b")) as r, worker(r, hello()) as call:
        await welcomed(r, call)
        await call.write(wg.WorkerMessage(goodbye=wg.Goodbye(reason="draining")))
        await call.done_writing()
        for owner in (r.a, r.b):
            assert (await owner.next()).goodbye.reason == "draining"
            with anyio.fail_after(WAIT_S):
                await owner.eof.wait()
        await r.a.outbox.put(None)  # A ends its side: the worker's stream is over, OK
        assert await status(call) is grpc.StatusCode.OK
        with anyio.fail_after(WAIT_S):
            await r.b.ended.wait()


async def test_the_worker_is_told_to_reconnect_when_the_owners_change() -> None:
    async with rig(Owner("a"), Owner("b")) as r, worker(r, hello()) as call:
        await welcomed(r, call)
        r.owners.append("127.0.0.1:1")  # a third coordinator took shards
        await call.write(wg.WorkerMessage(heartbeat=wg.Heartbeat(seq=1)))
        assert await status(call) is grpc.StatusCode.UNAVAILABLE
        assert "reconnect" in (await call.details() or "")
        for owner in (r.a, r.b):  # both keep the worker's leases for its reconnect
            assert "changed" in (await reconnecting_goodbye(owner)).reason


def test_routes_drop_a_heartbeat_ack_no_worker_heartbeat_asked_for() -> None:
    routes = Routes(2)
    routes.welcome([wg.Welcome(session_id="s-a"), wg.Welcome(session_id="s-b")])
    stray = wg.CoordinatorMessage(heartbeat_ack=wg.HeartbeatAck(seq=9))
    assert routes.from_upstream(0, stray) == []


# ---- a real owner -------------------------------------------------------------------------


async def test_a_real_owners_gateway_authenticates_the_worker_and_hears_its_goodbye(
    tmp_path: Path,
) -> None:
    """A front coordinator fans the stream out to a real coordinator (authentication on) and a
    scripted one: the real one checks the worker's token itself, renews with the scripted one,
    and records the worker's goodbye as it would a direct worker's."""
    front, b = Owner("front"), Owner("b")
    async with secure_coordinator(tmp_path) as real, rig(front, b) as r:
        r.owners[0] = real.address  # the front only fans out (its own gateway unused)
        token = await real.enroll("dev-f", "sandbox:a")
        async with ScriptedWorker(
            r.address, "dev-f", capabilities=[("sandbox", "a")], token=token, slots=2
        ) as w:
            welcome = await w.hello()
            assert welcome.session_id.startswith("s-")  # the real gateway's session
            assert welcome.lease_ttl_ms == 3_000  # the real one's (shorter than B's)
            assert [h.slots for h in b.hellos] == [1]

            async def b_renews() -> None:
                beat = (await b.next()).heartbeat
                await b.send(heartbeat_ack=wg.HeartbeatAck(seq=beat.seq))

            async with anyio.create_task_group() as tg:
                tg.start_soon(b_renews)
                assert (await w.heartbeat()).lease_deadline_unix_ms > 0  # the real one's
            await w.goodbye("done for today")
            assert (await b.next()).goodbye.reason == "done for today"
            code, _ = await w.wait_ended(WAIT_S)
            assert code == grpc.StatusCode.OK
        assert front.hellos == []
        deadline = anyio.current_time() + WAIT_S
        while True:
            found = await real.stub(real.admin_token).call(
                "ListAuditEvents", pub.ListAuditEventsRequest(action="DEVICE_DISCONNECTED")
            )
            assert isinstance(found, pub.ListAuditEventsResponse)
            if found.events or anyio.current_time() > deadline:
                break
            await anyio.sleep(0.05)
        assert "worker said goodbye: done for today" in found.events[0].details_json


async def test_a_real_owner_keeps_the_job_of_a_worker_whose_other_owner_died(
    tmp_path: Path,
) -> None:
    """A real coordinator and a scripted B own shards; the worker holds a job of the real one's
    when B dies. The real one hears that the worker reconnects: the job stays the worker's (not
    requeued, no attempt counted), and the worker's next stream (B gone from the owners) resumes
    it by epoch and publishes it once."""
    async with coordinator_server(tmp_path) as real, rig(Owner("front"), Owner("b")) as r:
        r.owners[0] = real.address
        async with grpc.aio.insecure_channel(real.address) as channel:
            stub = publishing_pb2_grpc.PublishingStub(channel)
            (job_id,) = job_ids(await publish(stub))
            async with ScriptedWorker(r.address, "dev-1") as w:
                await w.hello()
                a1 = (await w.next("assign")).assign
                await w.ack(a1)
                await r.b_server.stop(None)
                code, _ = await w.wait_ended(WAIT_S)
                assert code == grpc.StatusCode.UNAVAILABLE
            job = await stub.GetJob(pub.GetJobRequest(job_id=job_id))
            assert (job.status, job.device_id, job.attempt) == (pb.JOB_STATUS_RUNNING, "dev-1", 1)
            r.owners[1:] = []  # B's shards are the real one's now
            async with ScriptedWorker(r.address, "dev-1") as w:
                welcome = await w.hello(held=[a1])
                assert [(h.job_id, h.lease_epoch) for h in welcome.resumed] == [
                    (job_id, a1.lease_epoch)
                ]
                assert isinstance(await w.commit(a1), wg.CommitGrant)
                assert (await w.succeed(a1, "sb-1", "https://sandbox.test/acme/1")).accepted
            job = await stub.GetJob(pub.GetJobRequest(job_id=job_id))
            assert (job.status, job.attempt, len(job.runs)) == (pb.JOB_STATUS_SUCCEEDED, 1, 1)


def test_routes_follow_a_job_handed_to_another_owner_under_a_newer_lease() -> None:
    routes = Routes(2)
    routes.welcome([wg.Welcome(session_id="s-a"), wg.Welcome(session_id="s-b")])
    routes.from_upstream(1, wg.CoordinatorMessage(assign=assign("j", epoch=3)))
    routes.from_upstream(0, wg.CoordinatorMessage(assign=assign("j", epoch=4)))  # handed over
    routes.from_upstream(1, wg.CoordinatorMessage(drop=wg.Drop(job_id="j", lease_epoch=3)))
    result = wg.WorkerMessage(result=wg.JobResult(job_id="j", lease_epoch=4))
    assert [i for i, _ in routes.from_worker(result)] == [0]  # the new owner's
    routes.from_upstream(
        0, wg.CoordinatorMessage(result_ack=wg.ResultAck(job_id="j", lease_epoch=4))
    )
    assert routes.jobs == {}  # the worker forgot it: so does the fan-out
