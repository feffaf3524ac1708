"""Hostile worker streams against one in-process coordinator over real gRPC (127.0.0.1).

A guard device holds two jobs (one past its commit permit). Hostile streams — an enrolled device
of its own sending Hypothesis-generated WorkerMessages (about its own jobs, the guard's jobs,
made-up ones; unknown enums, extreme numbers and times, stale epochs, oversized chunks), raw
bytes, made-up Hellos, floods, and Hellos in the guard's name — must each get a proper answer
(a Drop, a refused ack, or the stream ended with INVALID_ARGUMENT / RESOURCE_EXHAUSTED /
UNAUTHENTICATED / PERMISSION_DENIED / FAILED_PRECONDITION), while the coordinator keeps serving,
logs no ERROR, and the guard's jobs stay exactly as they were in the store.

How many inputs each message kind got is printed at the end (`-s`) and written to
$POSTROOM_FUZZ_REPORT when set (`make fuzz`).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import anyio.from_thread
import grpc
import pytest
from conftest import InProcess, coordinator_server, publish
from fuzz_requests import FUZZ_EXAMPLES, Counts, Pools, garbage, messages, summary
from google.protobuf.message import Message
from hostile_rig import (
    GUARD_ACCOUNT,
    GUARD_DEVICE,
    ErrorLog,
    Guard,
    admin_channel,
    enroll,
    hostile_session,
    report_fuzz,
    start_guard,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripted_worker import ScriptedWorker, StreamEnded

from coordinator.leasing.state import DEFAULT_MAX_CHUNK_BYTES
from coordinator.worker_input import GatewayLimits
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

HOSTILE = "hostile-1"
HOSTILE_ACCOUNT = "hostile"
KINDS = [f.name for f in wg.WorkerMessage.DESCRIPTOR.oneofs_by_name["msg"].fields]
# How a hostile stream may end: never UNKNOWN, INTERNAL or UNAVAILABLE.
PROPER_ENDS = {
    None,  # still open
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.CANCELLED,  # we hung up
}
# Writing to a stream the coordinator has just ended.
SEND_FAILED = (grpc.aio.AioRpcError, asyncio.InvalidStateError)
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Rig:
    portal: anyio.from_thread.BlockingPortal
    env: InProcess
    channel: grpc.aio.Channel
    guard: Guard
    token: str  # the hostile device's
    errors: ErrorLog
    counts: Counts = field(default_factory=dict)
    ends: dict[str, Counts] = field(default_factory=dict)

    @property
    def stub(self) -> publishing_pb2_grpc.PublishingAsyncStub:
        return publishing_pb2_grpc.PublishingStub(self.channel)

    def count(self, key: str, end: grpc.StatusCode | None = None) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
        if end is not None:
            seen = self.ends.setdefault(key, {})
            seen[end.name] = seen.get(end.name, 0) + 1


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with hostile_session(tmp_path_factory.mktemp("hostile-worker"), _setup) as rig:
        try:
            yield rig
        finally:
            report_fuzz(
                "generated inputs per worker message (and how the stream ended)",
                summary(rig.counts, [f"{k} messages" for k in KINDS], rig.ends),
                {"worker": rig.counts, "ends": rig.ends},
            )


async def _setup(portal: anyio.from_thread.BlockingPortal, env: InProcess, errors: ErrorLog) -> Rig:
    channel = await admin_channel(env)
    stub = publishing_pb2_grpc.PublishingStub(channel)
    guard = await start_guard(env, stub)
    token = await enroll(stub, HOSTILE, [("sandbox", HOSTILE_ACCOUNT)])
    return Rig(portal, env, channel, guard, token, errors)


@asynccontextmanager
async def hostile(rig: Rig, *, slots: int = 2) -> AsyncIterator[ScriptedWorker]:
    async with ScriptedWorker(
        rig.env.address,
        HOSTILE,
        capabilities=[("sandbox", HOSTILE_ACCOUNT)],
        slots=slots,
        token=rig.token,
    ) as w:
        await w.hello()
        yield w


async def _own_job(rig: Rig, w: ScriptedWorker) -> wg.Assign:
    """A job of the hostile device's own account, leased to it: one left over from an earlier
    example (recovered when its stream ended), else a new one. Its account's gate is opened
    first: an earlier example may have closed it with a rate-limit answer."""
    await rig.stub.ReopenRateLimit(
        pub.ReopenRateLimitRequest(platform="sandbox", account=HOSTILE_ACCOUNT)
    )
    await w.sync()
    if not w.pending("assign"):
        await publish(rig.stub, text="hostile's own", targets=[("sandbox", HOSTILE_ACCOUNT)])
    return (await w.next("assign")).assign


async def _unique_sync(w: ScriptedWorker) -> None:
    """A heartbeat round trip with a seq no generated heartbeat uses."""
    seq = random.randrange(2**62, 2**63)
    await w.send(wg.WorkerMessage(heartbeat=wg.Heartbeat(seq=seq)))
    await w.take(["heartbeat_ack"], where=lambda m: m.heartbeat_ack.seq == seq)


async def _after(rig: Rig, w: ScriptedWorker | None, key: str) -> None:
    """After a hostile stream: how it ended is proper, the guard is untouched, nothing logged."""
    end: grpc.StatusCode | None = None
    if w is not None:
        if not w.ended:
            try:
                await _unique_sync(w)  # everything sent before it has been handled
            except (StreamEnded, *SEND_FAILED):
                await w.wait_ended()
        end, details = w.end_status
        assert end in PROPER_ENDS, (end, details)
        if end not in (None, grpc.StatusCode.CANCELLED):
            assert details.strip(), f"the stream ended {end} without saying why"
        await w.kill()
    rig.count(key, end or grpc.StatusCode.OK)
    assert await rig.guard.changes() == []
    assert not rig.errors.records, rig.errors.messages()


def test_generated_message_sequences(rig: Rig) -> None:
    @FUZZ_SETTINGS
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        # Drawn here (Hypothesis draws on its own thread); sent inside the portal's loop.
        w, pools = rig.portal.call(_open_with_job, rig)
        try:
            sent = data.draw(st.lists(worker_messages(pools), max_size=6))
            for msg in sent:
                rig.count(f"{msg.WhichOneof('msg')} messages")
            rig.portal.call(_send_all, rig, w, sent)
        finally:
            rig.portal.call(w.kill)

    check()


async def _open_with_job(rig: Rig) -> tuple[ScriptedWorker, Pools]:
    """A hostile stream holding a job of its own; ids and epochs for the messages to use: its
    job's, the guard's, made-up ones."""
    w = ScriptedWorker(
        rig.env.address, HOSTILE, capabilities=[("sandbox", HOSTILE_ACCOUNT)], token=rig.token
    )
    await w.__aenter__()
    await w.hello()
    mine = await _own_job(rig, w)
    pools = Pools()
    pools.ids = [mine.job_id, *[j.id for j in rig.guard.jobs], "j-unknown"]
    pools.epochs = [mine.lease_epoch, mine.lease_epoch + 1, 0, -1, 2**63 - 1]
    pools.epochs += [j.lease_epoch for j in rig.guard.jobs]
    pools.now_ms = int(rig.env.coordinator.clock.now() * 1000)
    pools.accounts = [HOSTILE_ACCOUNT, GUARD_ACCOUNT]
    return w, pools


def worker_messages(pools: Pools) -> st.SearchStrategy[wg.WorkerMessage]:
    """Any WorkerMessage, each kind about as often (a Hello mid-stream, which just ends it, one
    time in twenty)."""
    fields = wg.WorkerMessage.DESCRIPTOR.fields_by_name

    def of_kind(kind: str) -> st.SearchStrategy[wg.WorkerMessage]:
        sub = fields[kind].message_type
        assert sub is not None
        return messages(sub, pools).map(lambda m: _wrap(kind, m))

    kinds = [k for k in KINDS if k != "hello"]
    return st.sampled_from(kinds * 2 + ["hello"]).flatmap(of_kind)


def _wrap(kind: str, inner: Message) -> wg.WorkerMessage:
    msg = wg.WorkerMessage()
    getattr(msg, kind).CopyFrom(inner)
    return msg


async def _send_all(rig: Rig, w: ScriptedWorker, sent: list[wg.WorkerMessage]) -> None:
    """Each message, then a round trip, so that nothing is written after the coordinator ended
    the stream (writing on regardless makes grpc's client report its own INTERNAL status)."""
    for msg in sent:
        try:
            await w.send(msg)
            await _unique_sync(w)
        except (StreamEnded, *SEND_FAILED):  # the coordinator ended the stream
            break
    await _after(rig, w, "sequences")


def test_generated_hellos(rig: Rig) -> None:
    """First messages that are not a proper Hello, or a Hello of someone else."""

    @FUZZ_SETTINGS
    @given(hello=messages(wg.Hello.DESCRIPTOR, _hello_pools(rig)) | _plausible_hellos(rig))
    def check(hello: wg.Hello) -> None:
        rig.portal.call(_one_hello, rig, hello)

    check()


def _plausible_hellos(rig: Rig) -> st.SearchStrategy[wg.Hello]:
    """Hellos that look right, with one thing wrong or someone else's: past the shape checks,
    into identity and account binding."""
    accounts = st.sampled_from([HOSTILE_ACCOUNT, GUARD_ACCOUNT, "*", "a" * 100_000])
    return st.builds(
        wg.Hello,
        device_id=st.sampled_from([HOSTILE, GUARD_DEVICE, "stranger", "x" * 129]),
        token=st.sampled_from([rig.token, "", "prd_forged", rig.token + "x"]),
        kind=st.sampled_from([pb.WORKER_KIND_API, pb.WORKER_KIND_BROWSER, 7]),
        capabilities=st.lists(
            st.builds(
                pb.Target, platform=st.sampled_from(["sandbox", "x", "nowhere"]), account=accounts
            ),
            min_size=1,
            max_size=3,
        ),
        slots=st.sampled_from([1, 2, 0, -1, 1_001, 2**31 - 1]),
        held_jobs=st.lists(
            st.builds(
                wg.HeldJob,
                job_id=st.sampled_from([j.id for j in rig.guard.jobs] + ["j-x"]),
                lease_epoch=st.sampled_from([1, 2, 0, -1]),
            ),
            max_size=2,
        ),
    )


def _hello_pools(rig: Rig) -> Pools:
    pools = Pools()
    pools.ids = [GUARD_DEVICE, HOSTILE, "stranger", rig.token]
    pools.accounts = [GUARD_ACCOUNT, HOSTILE_ACCOUNT, "*"]
    return pools


async def _one_hello(rig: Rig, hello: wg.Hello) -> None:
    async with ScriptedWorker(rig.env.address, "x") as w:
        await w.send(wg.WorkerMessage(hello=hello))
        with suppress(StreamEnded):
            await w.take(["welcome"])
        await _after(rig, w, "Hello as the first message")


def test_raw_bytes_first_and_after_hello(rig: Rig) -> None:
    @settings(FUZZ_SETTINGS, max_examples=max(5, FUZZ_EXAMPLES // 2))
    @given(data=garbage(), after_hello=st.booleans())
    def check(data: bytes, after_hello: bool) -> None:
        rig.portal.call(_raw, rig, data, after_hello)

    check()


async def _raw(rig: Rig, data: bytes, after_hello: bool) -> tuple[grpc.StatusCode, str]:
    call = rig.channel.stream_stream(
        "/postroom.v1.WorkerGateway/Connect", request_serializer=None, response_deserializer=None
    )(None)
    if after_hello:
        hello = wg.Hello(
            device_id=HOSTILE,
            token=rig.token,
            kind=pb.WORKER_KIND_API,
            capabilities=[pb.Target(platform="sandbox", account=HOSTILE_ACCOUNT)],
            slots=1,
        )
        await call.write(wg.WorkerMessage(hello=hello).SerializeToString())
    with suppress(*SEND_FAILED), anyio.move_on_after(2.0):
        await call.write(data)
        while isinstance(await call.read(), bytes):  # until EOF
            pass
    if not call.done():  # the bytes happened to be a valid message: fine, we hang up
        call.cancel()
        rig.count("raw bytes", grpc.StatusCode.OK)
        return grpc.StatusCode.CANCELLED, ""
    code, details = await call.code(), await call.details() or ""
    rig.count("raw bytes", code)
    assert code in PROPER_ENDS, (code, details)
    assert await rig.guard.changes() == []
    return code, details


def test_garbage_ends_the_stream_invalid_argument(rig: Rig) -> None:
    for after_hello in (False, True):
        code, details = rig.portal.call(_raw, rig, b"\xff\xff\xff\xff", after_hello)
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert "not a valid postroom.v1.WorkerMessage" in details


# ---- the cases the issue names ----------------------------------------------------------------


def test_an_absurd_retry_time_is_taken_capped_and_committed(rig: Rig) -> None:
    """An honest worker relays a platform's retry_after of 2^62 ms: the result is accepted (not
    refused and re-sent forever), the job waits at most 31 days, the gate likewise."""

    async def run() -> None:
        async with hostile(rig) as w:
            job = await _own_job(rig, w)
            await w.ack(job)
            ack = await w.result(
                wg.JobResult(
                    job_id=job.job_id,
                    lease_epoch=job.lease_epoch,
                    error_class=pb.ERROR_CLASS_RATE_LIMITED,
                    error_message="429",
                    retry_at_unix_ms=2**62,
                )
            )
            assert ack.accepted, ack.reason
            now = rig.env.coordinator.clock.now()
            stored = await rig.env.coordinator.store.get_job(job.job_id)
            assert stored.status.value == "QUEUED"
            assert now < stored.not_before <= now + 31 * 86400
            gates = await rig.stub.ListRateLimits(pub.ListRateLimitsRequest(closed_only=True))
            mine = [g for g in gates.gates if g.target.account == HOSTILE_ACCOUNT]
            assert mine and mine[0].closed_until.seconds <= now + 31 * 86400
            await rig.stub.ReopenRateLimit(
                pub.ReopenRateLimitRequest(platform="sandbox", account=HOSTILE_ACCOUNT)
            )
            await _after(rig, w, "named cases")

    rig.portal.call(run)


def test_unknown_enums_and_absurd_log_times_are_taken_as_the_safe_default(rig: Rig) -> None:
    async def run() -> None:
        async with hostile(rig) as w:
            job = await _own_job(rig, w)
            await w.ack(job)
            log = wg.JobLog(
                job_id=job.job_id,
                lease_epoch=job.lease_epoch,
                step="prepare",
                level=77,  # type: ignore[arg-type]
                message="from a newer worker",
                at_unix_ms=2**62,
            )
            await w.send(wg.WorkerMessage(log=log))
            ack = await w.result(
                wg.JobResult(
                    job_id=job.job_id,
                    lease_epoch=job.lease_epoch,
                    error_class=99,  # type: ignore[arg-type]
                    error_message="a class from the future",
                )
            )
            assert ack.accepted, ack.reason
            shown = await rig.stub.GetJob(pub.GetJobRequest(job_id=job.job_id))
            assert shown.last_error_class == pb.ERROR_CLASS_TRANSIENT
            assert "error class 99 unknown" in shown.last_error
            [line] = [e for r in shown.runs for e in r.logs if e.message == "from a newer worker"]
            assert line.level == pb.LOG_LEVEL_INFO
            assert line.at.seconds == int(rig.env.coordinator.clock.now())
            await _after(rig, w, "named cases")

    rig.portal.call(run)


def test_other_devices_jobs_and_stale_epochs_are_dropped(rig: Rig) -> None:
    async def run() -> None:
        async with hostile(rig) as w:
            for job in rig.guard.jobs:
                ack = await w.result(
                    wg.JobResult(job_id=job.id, lease_epoch=job.lease_epoch, success=True)
                )
                assert not ack.accepted
                deny = await w.commit(wg.HeldJob(job_id=job.id, lease_epoch=job.lease_epoch))
                assert isinstance(deny, wg.CommitDeny)
            mine = await _own_job(rig, w)
            await w.ack(wg.HeldJob(job_id=mine.job_id, lease_epoch=mine.lease_epoch - 1))
            drop = await w.next("drop", job_id=mine.job_id)
            assert "stale" in drop.drop.reason
            await _after(rig, w, "named cases")

    rig.portal.call(run)


def test_a_hello_in_the_guards_name_is_refused_and_the_guard_goes_on(rig: Rig) -> None:
    async def run() -> None:
        for token in ("", rig.token, "pd-" + "0" * 40):
            async with ScriptedWorker(
                rig.env.address,
                GUARD_DEVICE,
                capabilities=[("sandbox", GUARD_ACCOUNT)],
                token=token,
            ) as w:
                with pytest.raises(StreamEnded) as ended:
                    await w.hello()
                assert ended.value.code in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ), ended.value
                await _after(rig, w, "takeover attempts")
        # Nor may the hostile device claim the guard's account under its own name.
        async with ScriptedWorker(
            rig.env.address, HOSTILE, capabilities=[("sandbox", GUARD_ACCOUNT)], token=rig.token
        ) as w:
            with pytest.raises(StreamEnded) as ended:
                await w.hello()
            assert ended.value.code is grpc.StatusCode.PERMISSION_DENIED, ended.value
            await _after(rig, w, "takeover attempts")

    rig.portal.call(run)


def test_oversized_screenshots_are_refused_and_the_stream_goes_on(rig: Rig) -> None:
    async def run() -> None:
        async with hostile(rig) as w:
            job = await _own_job(rig, w)
            await w.ack(job)
            big = b"\x89PNG\r\n\x1a\n" + b"x" * DEFAULT_MAX_CHUNK_BYTES
            refused = await w.screenshot(job, big, chunk=len(big))
            assert not refused.ok and "RESOURCE_EXHAUSTED" in refused.error
            liar = await w.screenshot(job, b"\x89PNG\r\n\x1a\nsmall", sha256="0" * 64)
            assert not liar.ok and "sha256" in liar.error
            # The declared size counts against the session's unfinished-upload bound.
            chunk = wg.ScreenshotChunk(
                job_id=job.job_id,
                lease_epoch=job.lease_epoch,
                upload_id="u-huge",
                label="on_failure",
                sha256="0" * 64,
                total_size=2**40,
                data=b"x",
            )
            await w.send(wg.WorkerMessage(screenshot=chunk))
            huge = await w.take(
                ["screenshot_ack"], where=lambda m: m.screenshot_ack.upload_id == "u-huge"
            )
            assert not huge.screenshot_ack.ok
            good = b"\x89PNG\r\n\x1a\n" + b"fine"
            ok = await w.screenshot(job, good)
            assert ok.ok and ok.asset_id == hashlib.sha256(good).hexdigest()
            await _after(rig, w, "named cases")

    rig.portal.call(run)


@pytest.mark.anyio
async def test_a_flood_ends_that_stream_resource_exhausted_and_no_other(tmp_path: Path) -> None:
    # A bucket of 100 that (practically) never refills: message 101 is the flood. The flooder
    # stops writing there, so the status it reads is the coordinator's, not its own client's
    # (grpc reports INTERNAL to a client that keeps writing on an ended stream).
    limits = GatewayLimits(max_messages_per_s=0.001, burst_messages=100)
    async with (
        coordinator_server(tmp_path, gateway_limits=limits) as env,
        ScriptedWorker(env.address, "calm", capabilities=[("sandbox", "calm")]) as calm,
        ScriptedWorker(env.address, "flood", capabilities=[("sandbox", "flood")]) as flood,
    ):
        await calm.hello()
        await flood.hello()
        for seq in range(101):
            await flood.send(wg.WorkerMessage(heartbeat=wg.Heartbeat(seq=seq)))
        code, details = await flood.wait_ended()
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        assert "messages per second" in details
        await calm.sync()  # the calm stream was never touched
        assert not calm.ended


def test_the_coordinator_still_serves_after_all_of_it(rig: Rig) -> None:
    async def run() -> None:
        async with hostile(rig) as w:
            job = await _own_job(rig, w)
            await w.ack(job)
            assert isinstance(await w.commit(job), wg.CommitGrant)
            assert (await w.succeed(job, "p1", "https://sandbox.test/p1")).accepted
            await _after(rig, w, "named cases")
        posts = await rig.stub.ListPosts(pub.ListPostsRequest(page_size=1000))
        assert posts.posts

    rig.portal.call(run)
