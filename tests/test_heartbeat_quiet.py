"""Quiet heartbeats: a session that holds no lease and reports none is answered by the gateway
itself (LeaseCore.quiet_heartbeat_ack), and the actor takes in that it was heard (Heard) before
it next judges liveness. What a worker sees must not change: the same ack, after its Welcome; a
silent session still ends a TTL after its last heartbeat; a session holding a lease is still
renewed by the actor."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from conftest import TTL_S, InProcess, coordinator_server, job_ids, publish
from lease_harness import Harness, make_post, one_assign
from scripted_worker import ScriptedWorker

from coordinator.domain import Target
from coordinator.leasing import commands as c
from coordinator.leasing import outbound as o
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

WAIT_S = 10.0

# ---- the core -------------------------------------------------------------------------------


def test_an_idle_session_gets_the_ack_the_actor_would_send() -> None:
    h = Harness()
    h.open("s1")
    h.advance(2.0)
    quiet = h.core.quiet_heartbeat_ack("s1", 7, h.now)
    assert quiet == o.HeartbeatAck(7, h.now + h.config.lease_ttl_s)
    (sent,) = h.heartbeat("s1", 7).messages
    assert sent == ("s1", quiet)
    assert h.core.quiet_heartbeat_ack("nobody", 1, h.now) is None  # no ack for it either way


def test_a_session_holding_a_lease_goes_through_the_actor() -> None:
    h = Harness()
    h.add(*make_post("p1", [Target("sandbox", "acme")], h.now))
    assign = one_assign(h.open("s1"))
    assert h.core.quiet_heartbeat_ack("s1", 1, h.now) is None
    h.advance(h.config.heartbeat_interval_s)
    h.heartbeat("s1")  # the actor's heartbeat renews it
    assert h.core.leases[assign.job_id].deadline == h.now + h.config.lease_ttl_s


def test_heard_keeps_a_session_alive_and_silence_ends_it_a_ttl_after_the_last_beat() -> None:
    h = Harness()
    h.open("s1", device="d1")
    ttl = h.config.lease_ttl_s
    for _ in range(4):  # four TTLs of quiet heartbeats, each taken in as the actor would
        h.advance(ttl / 2)
        h.command(c.Heard((("s1", h.now),)))
        assert h.tick().close_sessions == []
    last = h.now
    h.command(c.Heard((("s1", last - 1.0),)))  # an older beat does not move time back
    h.advance(ttl - 0.1)
    assert h.tick().close_sessions == []
    h.advance(0.2)
    assert h.tick().close_sessions == ["s1"]
    assert h.core.devices["d1"].last_seen_at == last
    assert "s1" not in h.core.sessions
    h.command(c.Heard((("s1", h.now),)))  # a closed session's beat is ignored
    assert "s1" not in h.core.sessions


# ---- over gRPC ------------------------------------------------------------------------------


async def device(env: InProcess, device_id: str) -> pb.Device:
    async with grpc.aio.insecure_channel(env.address) as channel:
        stub = publishing_pb2_grpc.PublishingStub(channel)
        devices = await stub.ListDevices(pub.ListDevicesRequest())
    return next(d for d in devices.devices if d.id == device_id)


@pytest.mark.anyio
async def test_an_idle_worker_is_acked_stays_online_and_goes_offline_a_ttl_after_silence(
    tmp_path: Path,
) -> None:
    async with coordinator_server(tmp_path) as env, ScriptedWorker(env.address, "idle") as w:
        await w.hello()
        for _ in range(8):  # several TTLs, answered by the gateway
            env.advance(TTL_S / 3)
            ack = await w.heartbeat()
            assert ack.lease_deadline_unix_ms == int((env.clock.now() + TTL_S) * 1000)
        last = env.clock.now()
        env.advance(TTL_S - 0.5)  # the timer ticks: still alive
        assert (await device(env, "idle")).state == pb.DEVICE_STATE_ONLINE
        env.advance(1.0)  # silent for TTL + 0.5
        await w.wait_ended(WAIT_S)
        gone = await device(env, "idle")
        assert gone.state == pb.DEVICE_STATE_OFFLINE
        assert gone.last_seen_at.ToMilliseconds() == int(last * 1000)


@pytest.mark.anyio
async def test_a_heartbeat_right_after_hello_is_acked_after_the_welcome(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"  # the Hello's commit takes a while: a real race
    async with (
        coordinator_server(tmp_path, db=db) as env,
        ScriptedWorker(env.address, "eager") as w,
    ):
        hello = wg.Hello(
            device_id="eager",
            kind=pb.WORKER_KIND_API,
            capabilities=[pb.Target(platform="sandbox", account="*")],
            slots=1,
        )
        await w.send(wg.WorkerMessage(hello=hello))
        for seq in (1, 2, 3):  # not waiting for the Welcome
            await w.send(wg.WorkerMessage(heartbeat=wg.Heartbeat(seq=seq)))
        await w.take(["heartbeat_ack"], where=lambda m: m.heartbeat_ack.seq == 3)
        kinds = [m.WhichOneof("msg") for m in w.received]
        assert kinds[0] == "welcome"
        assert [m.heartbeat_ack.seq for m in w.received if m.HasField("heartbeat_ack")] == [1, 2, 3]


@pytest.mark.anyio
async def test_a_worker_that_takes_a_job_keeps_it_by_heartbeats(tmp_path: Path) -> None:
    async with (
        coordinator_server(tmp_path) as env,
        grpc.aio.insecure_channel(env.address) as channel,
        ScriptedWorker(env.address, "busy") as w,
    ):
        stub = publishing_pb2_grpc.PublishingStub(channel)
        await w.hello()
        for _ in range(3):  # idle first: quiet heartbeats
            env.advance(TTL_S / 3)
            await w.heartbeat()
        (job_id,) = job_ids(await publish(stub))
        assign = (await w.next("assign")).assign
        await w.ack(assign)
        for _ in range(6):  # two TTLs: only the heartbeats renew the lease
            env.advance(TTL_S / 3)
            ack = await w.heartbeat()
        assert ack.lease_deadline_unix_ms == int((env.clock.now() + TTL_S) * 1000)
        job = await stub.GetJob(pub.GetJobRequest(job_id=job_id))
        assert job.status == pb.JOB_STATUS_RUNNING and job.lease_epoch == assign.lease_epoch
        assert w.pending("drop") == []
