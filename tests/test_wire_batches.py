"""Several messages per wire message (CoordinatorMessage.batch / WorkerMessage.batch): a worker
whose Hello says it takes batches gets one commit's Welcome and Assigns in one write, and its own
batches are taken in order with fencing unchanged; a worker that did not say so never sees a
batch; a batch inside a batch, or an empty one, ends the stream with what to fix. The coalescing
writer itself (postroom/coalesce.py): a lone message goes at once, what piled up goes together,
within its byte bound."""

from __future__ import annotations

from pathlib import Path

import anyio
import grpc
import pytest
from anyio.streams.memory import MemoryObjectSendStream
from conftest import coordinator_server, job_ids, publish
from scripted_worker import ScriptedWorker, StreamEnded

from coordinator.main import GRPC_SERVER_OPTIONS
from postroom.coalesce import Coalescer
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg
from worker import session
from worker.config import DEFAULT_MAX_CHUNK_BYTES

pytestmark = pytest.mark.anyio
TARGETS = [("sandbox", "a"), ("sandbox", "b"), ("sandbox", "c")]
SERVER_MAX_RECEIVE_BYTES = dict(GRPC_SERVER_OPTIONS)["grpc.max_receive_message_length"]


def _batch(*msgs: wg.WorkerMessage) -> wg.WorkerMessage:
    return wg.WorkerMessage(batch=wg.WorkerBatch(messages=msgs))


def _ack(a: wg.Assign) -> wg.WorkerMessage:
    return wg.WorkerMessage(ack=wg.AssignAck(job_id=a.job_id, lease_epoch=a.lease_epoch))


def _commit(a: wg.Assign, epoch: int | None = None) -> wg.WorkerMessage:
    e = a.lease_epoch if epoch is None else epoch
    return wg.WorkerMessage(commit_request=wg.CommitRequest(job_id=a.job_id, lease_epoch=e))


def _success(a: wg.Assign) -> wg.WorkerMessage:
    result = wg.JobResult(
        job_id=a.job_id, lease_epoch=a.lease_epoch, success=True, platform_post_id=f"p-{a.job_id}"
    )
    return wg.WorkerMessage(result=result)


async def test_a_batching_worker_gets_one_commit_in_one_write_and_its_batches_keep_fencing(
    tmp_path: Path,
) -> None:
    async with (
        coordinator_server(tmp_path) as env,
        grpc.aio.insecure_channel(env.address) as channel,
        ScriptedWorker(env.address, "dev-1", slots=3, batches=True) as w,
    ):
        stub = publishing_pb2_grpc.PublishingStub(channel)
        post = await publish(stub, targets=TARGETS)
        welcome = await w.hello()
        assert welcome.accepts_batches
        assigns = [(await w.next("assign")).assign for _ in TARGETS]
        assert {a.job_id for a in assigns} == set(job_ids(post))
        # Welcome and the three leases were decided together: one wire message carried them.
        assert w.wire[0].WhichOneof("msg") == "batch"
        assert [m.WhichOneof("msg") for m in w.wire[0].batch.messages] == ["welcome"] + [
            "assign"
        ] * 3
        a, b, c = assigns
        # One write: acks, then permits; b's request carries a stale epoch and is refused.
        await w.send(_batch(_ack(a), _ack(b), _ack(c), _commit(a), _commit(b, b.lease_epoch - 1)))
        grant = await w.take(["commit_grant", "commit_deny"], job_id=a.job_id)
        assert grant.WhichOneof("msg") == "commit_grant"
        refused = await w.take(["commit_deny", "drop"], job_id=b.job_id)
        assert refused.WhichOneof("msg") in ("commit_deny", "drop")
        await w.send(_batch(_commit(b), _commit(c)))
        for job in (b, c):
            assert (await w.next("commit_grant", job_id=job.job_id)).commit_grant
        await w.send(_batch(_success(a), _success(b), _success(c)))
        for job in assigns:
            assert (await w.next("result_ack", job_id=job.job_id)).result_ack.accepted
        jobs = (await stub.ListJobs(pub.ListJobsRequest())).jobs
        assert {j.status for j in jobs} == {pb.JOB_STATUS_SUCCEEDED}


async def test_a_worker_that_did_not_ask_for_batches_never_gets_one(tmp_path: Path) -> None:
    async with (
        coordinator_server(tmp_path) as env,
        grpc.aio.insecure_channel(env.address) as channel,
        ScriptedWorker(env.address, "dev-1", slots=3) as w,
    ):
        await publish(publishing_pb2_grpc.PublishingStub(channel), targets=TARGETS)
        await w.hello()
        for _ in TARGETS:
            await w.next("assign")
        await w.sync()
        assert "batch" not in [m.WhichOneof("msg") for m in w.wire]
        assert len(w.wire) == len(w.received)


@pytest.mark.parametrize(
    ("batch", "says"),
    [
        (_batch(_batch(wg.WorkerMessage(heartbeat=wg.Heartbeat(seq=1)))), "batch inside a batch"),
        (wg.WorkerMessage(batch=wg.WorkerBatch()), "empty WorkerMessage.batch"),
    ],
)
async def test_a_nested_or_empty_batch_ends_the_stream_with_what_to_fix(
    tmp_path: Path, batch: wg.WorkerMessage, says: str
) -> None:
    async with coordinator_server(tmp_path) as env, ScriptedWorker(env.address, "dev-1") as w:
        await w.hello()
        await w.send(batch)
        with pytest.raises(StreamEnded) as ended:
            await w.next("heartbeat_ack")
        assert ended.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert says in ended.value.details


# ---- the coalescing writer ------------------------------------------------------------------


async def test_coalescer_sends_a_lone_message_at_once_and_batches_what_piled_up() -> None:
    send, recv = anyio.create_memory_object_stream[bytes](100)
    with recv:
        await _coalesce(send, Coalescer(recv, len, max_messages=3, max_bytes=10))


async def _coalesce(send: MemoryObjectSendStream[bytes], pending: Coalescer[bytes]) -> None:
    send.send_nowait(b"one")
    assert await pending.next_batch() == [b"one"]  # nothing behind it: not held back
    for item in (b"a", b"b", b"c", b"d"):
        send.send_nowait(item)
    assert await pending.next_batch() == [b"a", b"b", b"c"]  # at most max_messages
    assert await pending.next_batch() == [b"d"]
    for item in (b"12345", b"67890", b"x"):
        send.send_nowait(item)
    assert await pending.next_batch() == [b"12345", b"67890"]  # 10 bytes: the bound
    send.close()
    assert await pending.next_batch() == [b"x"]  # carried over, in order
    with pytest.raises(anyio.EndOfStream):
        await pending.next_batch()


async def test_batches_of_screenshot_chunks_stay_within_the_coordinators_message_limit() -> None:
    chunk = b"x" * DEFAULT_MAX_CHUNK_BYTES  # 256 KiB, the largest a worker sends
    send, recv = anyio.create_memory_object_stream[wg.WorkerMessage](10)
    with send, recv:
        for offset in range(4):
            sc = wg.ScreenshotChunk(job_id="j", upload_id="u", offset=offset, data=chunk)
            send.send_nowait(wg.WorkerMessage(screenshot=sc))
        pending = Coalescer(recv, wg.WorkerMessage.ByteSize)
        offsets: list[int] = []
        while len(offsets) < 4:
            wire = wg.WorkerMessage(batch=wg.WorkerBatch(messages=await pending.next_batch()))
            assert wire.ByteSize() < SERVER_MAX_RECEIVE_BYTES
            offsets += [m.screenshot.offset for m in wire.batch.messages]
        assert offsets == [0, 1, 2, 3]


# ---- the worker's side, pure -----------------------------------------------------------------


def test_the_worker_reads_a_batch_as_its_messages_and_refuses_a_nested_one() -> None:
    welcome = wg.CoordinatorMessage(welcome=wg.Welcome(session_id="s-1", accepts_batches=True))
    drop = wg.CoordinatorMessage(drop=wg.Drop(job_id="j", lease_epoch=1))
    wire = wg.CoordinatorMessage(batch=wg.CoordinatorBatch(messages=[welcome, drop]))
    state = session.SessionState()
    commands = []
    for one in session.unbatch(wire):
        state, out = session.on_message(state, one, 0.0)
        commands += out
    assert state.peer_batches and state.session_id == "s-1"
    assert [type(c).__name__ for c in commands] == ["Welcomed", "Drop"]
    _, out = session.on_message(state, wire, 0.0)  # a batch that reached on_message is nested
    assert out == [session.Violation("a batch inside a batch")]
    lone = wg.WorkerMessage(goodbye=wg.Goodbye())
    assert session.batch([lone]) is lone
