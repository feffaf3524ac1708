"""The lease protocol over real gRPC: scripted workers against an in-process coordinator (virtual
time), and against a coordinator process that is SIGKILLed and restarted on its SQLite database.

What a user would notice is asserted through the public API (GetJob, GetPost, GetAsset) and the
messages a worker receives, never through the coordinator's internals.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import grpc
import pytest
from conftest import (
    TTL_S,
    InProcess,
    advance_alive,
    coordinator_process,
    coordinator_server,
    job_ids,
    publish,
    run_to_success,
)
from scripted_worker import ScriptedWorker, StreamEnded

from coordinator.leasing.core import DEFAULT_MAX_CHUNK_BYTES
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

MARGIN_S = 1.0  # LeaseConfig.expiry_margin_s default
if TYPE_CHECKING:  # the async stub type exists only in the .pyi
    Stub = publishing_pb2_grpc.PublishingAsyncStub


@asynccontextmanager
async def harness(tmp_path: Path, **kw: object) -> AsyncIterator[tuple[InProcess, Stub]]:
    async with (
        coordinator_server(tmp_path, **kw) as env,  # type: ignore[arg-type]
        grpc.aio.insecure_channel(env.address) as channel,
    ):
        yield env, publishing_pb2_grpc.PublishingStub(channel)


async def get_job(stub: Stub, job_id: str) -> pb.Job:
    job: pb.Job = await stub.GetJob(pub.GetJobRequest(job_id=job_id))
    return job


# ---- the happy path -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_assign_ack_commit_success_is_visible_through_the_api(tmp_path: Path) -> None:
    async with harness(tmp_path) as (env, stub), ScriptedWorker(env.address, "dev-1") as w:
        welcome = await w.hello()
        assert welcome.session_id and welcome.lease_ttl_ms == int(TTL_S * 1000)
        post = await publish(stub, text="launch day")
        (job_id,) = job_ids(post)

        a = (await w.next("assign")).assign
        assert (a.job_id, a.post_id, a.text) == (job_id, post.id, "launch day")
        assert a.lease_epoch == 1 and a.attempt == 1 and not a.verify_first
        assert a.platform_key and a.idempotency_key.startswith(post.id)
        assert (await get_job(stub, job_id)).status == pb.JOB_STATUS_CLAIMED

        await w.ack(a)
        await w.log(a, "compose", "typing the text")
        grant = await w.commit(a)
        assert isinstance(grant, wg.CommitGrant) and grant.lease_epoch == a.lease_epoch
        await w.log(a, "publish", "clicked post")
        ack = await w.succeed(a, "sb-1", "https://sandbox.test/acme/1")
        assert ack.accepted

        job = await get_job(stub, job_id)
        assert job.status == pb.JOB_STATUS_SUCCEEDED
        assert (job.result_post_id, job.result_url) == ("sb-1", "https://sandbox.test/acme/1")
        (run,) = job.runs
        assert (run.outcome, run.committed, run.device_id, run.lease_epoch) == (
            "succeeded",
            True,
            "dev-1",
            1,
        )
        assert [(x.step, x.message) for x in run.logs] == [
            ("compose", "typing the text"),
            ("publish", "clicked post"),
        ]
        got = await stub.GetPost(pub.GetPostRequest(post_id=post.id))
        assert got.status == pb.POST_STATUS_PUBLISHED
        assert got.target_states[0].result_url == "https://sandbox.test/acme/1"


# ---- lost streams, fencing ------------------------------------------------------------------


@pytest.mark.anyio
async def test_stream_killed_before_permit_is_reassigned_at_once_and_old_commit_denied(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as (env, stub):
        async with ScriptedWorker(env.address, "dev-1") as w1:
            await w1.hello()
            (job_id,) = job_ids(await publish(stub))
            a1 = (await w1.next("assign")).assign
            await w1.ack(a1)
            async with ScriptedWorker(env.address, "dev-2") as w2:
                await w2.hello()
                await w1.kill()  # no virtual time passes: recovery is event-driven
                a2 = (await w2.next("assign")).assign
                assert a2.job_id == job_id and a2.lease_epoch > a1.lease_epoch
                assert not a2.verify_first and a2.attempt == 2

                # The first worker comes back and tries to carry on with its old lease.
                async with ScriptedWorker(env.address, "dev-1") as w1b:
                    welcome = await w1b.hello(held=[a1])
                    assert list(welcome.resumed) == []
                    deny = await w1b.commit(a1)
                    assert isinstance(deny, wg.CommitDeny), deny
                    assert "stale" in deny.reason or "not leased" in deny.reason
                    assert not (await w1b.succeed(a1, "dup", "https://dup")).accepted

                await run_to_success(w2, a2)
        job = await get_job(stub, job_id)
        assert job.status == pb.JOB_STATUS_SUCCEEDED and job.device_id == "dev-2"
        assert [(r.lease_epoch, r.outcome, r.committed) for r in job.runs] == [
            (a1.lease_epoch, "lease_lost", False),
            (a2.lease_epoch, "succeeded", True),
        ]


@pytest.mark.anyio
async def test_stream_killed_after_permit_waits_for_deadline_then_verify_first(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as (env, stub):
        async with ScriptedWorker(env.address, "dev-1") as w1:
            await w1.hello()
            (job_id,) = job_ids(await publish(stub))
            a1 = (await w1.next("assign")).assign
            await w1.ack(a1)
            assert isinstance(await w1.commit(a1), wg.CommitGrant)
            async with ScriptedWorker(env.address, "dev-2") as w2:
                await w2.hello()
                await w1.kill()
                # In doubt: the job stays leased to dev-1 until its deadline plus the margin.
                for step in (TTL_S - 0.5, 1.0):  # deadline - 0.5, deadline + 0.5
                    env.advance(step)
                    await w2.sync()  # also keeps dev-2's own session alive
                    assert w2.pending("assign") == []
                    job = await get_job(stub, job_id)
                    assert (job.status, job.device_id) == (pb.JOB_STATUS_RUNNING, "dev-1")
                env.advance(1.0)  # deadline + 1.5 > deadline + margin
                a2 = (await w2.next("assign")).assign
                assert a2.job_id == job_id and a2.lease_epoch > a1.lease_epoch
                assert a2.verify_first
                assert (await get_job(stub, job_id)).verify_first
                await w2.ack(a2)
                assert isinstance(await w2.commit(a2), wg.CommitGrant)
                ok = await w2.result(
                    wg.JobResult(
                        job_id=job_id,
                        lease_epoch=a2.lease_epoch,
                        success=True,
                        platform_post_id="sb-1",
                        url="https://sandbox.test/acme/1",
                        found_existing=True,
                    )
                )
                assert ok.accepted
        job = await get_job(stub, job_id)
        assert job.status == pb.JOB_STATUS_SUCCEEDED and not job.verify_first
        assert [r.outcome for r in job.runs] == ["lease_lost", "succeeded"]


@pytest.mark.anyio
async def test_heartbeat_silence_kills_the_session_and_requeues_its_job(tmp_path: Path) -> None:
    async with harness(tmp_path) as (env, stub):
        async with (
            ScriptedWorker(env.address, "silent") as w1,
            ScriptedWorker(env.address, "alive") as w2,
        ):
            await w1.hello()
            (job_id,) = job_ids(await publish(stub))
            a1 = (await w1.next("assign")).assign
            await w1.ack(a1)
            await w2.hello()
            env.advance(TTL_S - 1.0)
            await w2.heartbeat()
            assert w2.pending("assign") == []
            env.advance(1.5)  # silent for TTL + 0.5; dev-2 heard from 1.5 s ago
            a2 = (await w2.next("assign")).assign
            assert a2.job_id == job_id and a2.lease_epoch > a1.lease_epoch
            assert not a2.verify_first
            await w1.wait_ended()  # the coordinator closed the dead session's stream
            await run_to_success(w2, a2)
        devices = await stub.ListDevices(pub.ListDevicesRequest())
        states = {d.id: d.state for d in devices.devices}
        assert states["silent"] == pb.DEVICE_STATE_OFFLINE


@pytest.mark.anyio
async def test_reconnect_within_grace_resumes_the_job_and_accepts_the_old_epoch(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as (env, stub):
        async with ScriptedWorker(env.address, "dev-1") as w1:
            await w1.hello()
            (job_id,) = job_ids(await publish(stub))
            a1 = (await w1.next("assign")).assign
            await w1.ack(a1)
            assert isinstance(await w1.commit(a1), wg.CommitGrant)
            await w1.kill()
        env.advance(1.0)  # well inside the lease
        async with ScriptedWorker(env.address, "dev-1") as w1b:
            welcome = await w1b.hello(held=[a1])
            assert [(h.job_id, h.lease_epoch, h.committed) for h in welcome.resumed] == [
                (job_id, a1.lease_epoch, True)
            ]
            ack = await w1b.succeed(a1, "sb-1", "https://sandbox.test/acme/1")
            assert ack.accepted and ack.lease_epoch == a1.lease_epoch
            await w1b.sync()
            assert w1b.pending("assign") == []
        job = await get_job(stub, job_id)
        assert (job.status, job.lease_epoch, len(job.runs)) == (
            pb.JOB_STATUS_SUCCEEDED,
            a1.lease_epoch,
            1,
        )


@pytest.mark.anyio
async def test_a_stream_ending_after_a_reconnecting_goodbye_keeps_its_job_for_the_reconnect(
    tmp_path: Path,
) -> None:
    """What a coordinator fanning a worker's stream out says when another shard owner died: the
    stream ends, the worker lives and dials again. Its job is not requeued to another worker
    meanwhile, and the worker's next stream resumes it by epoch: one run, one attempt."""
    async with harness(tmp_path) as (env, stub):
        async with ScriptedWorker(env.address, "dev-1") as w1:
            await w1.hello()
            (job_id,) = job_ids(await publish(stub))
            a1 = (await w1.next("assign")).assign
            await w1.ack(a1)
            async with ScriptedWorker(env.address, "dev-2") as w2:
                await w2.hello()
                await w1.goodbye("the shard owner at 10.0.0.2 ended", reconnecting=True)
                code, _ = await w1.wait_ended()
                assert code == grpc.StatusCode.OK
                await w2.sync()  # the session's end reached the coordinator before this
                assert w2.pending("assign") == []
                job = await get_job(stub, job_id)
                assert (job.status, job.device_id, job.attempt) == (
                    pb.JOB_STATUS_RUNNING,
                    "dev-1",
                    1,
                )
                env.advance(1.0)
                async with ScriptedWorker(env.address, "dev-1") as w1b:
                    welcome = await w1b.hello(held=[a1])
                    assert [(h.job_id, h.lease_epoch, h.committed) for h in welcome.resumed] == [
                        (job_id, a1.lease_epoch, False)
                    ]
                    assert isinstance(await w1b.commit(a1), wg.CommitGrant)
                    assert (await w1b.succeed(a1, "sb-1", "https://sandbox.test/acme/1")).accepted
        job = await get_job(stub, job_id)
        assert (job.status, job.attempt, len(job.runs)) == (pb.JOB_STATUS_SUCCEEDED, 1, 1)
        found = await stub.ListAuditEvents(
            pub.ListAuditEventsRequest(action="DEVICE_DISCONNECTED", subject_id="dev-1")
        )
        reasons = [e.details_json for e in found.events]
        assert any("detached: reconnecting" in r for r in reasons), reasons


@pytest.mark.anyio
async def test_stale_epoch_messages_are_refused(tmp_path: Path) -> None:
    async with harness(tmp_path) as (env, stub), ScriptedWorker(env.address, "dev-1") as w:
        await w.hello()
        (job_id,) = job_ids(await publish(stub))
        a1 = (await w.next("assign")).assign
        await w.ack(a1)
        assert (await w.fail(a1, pb.ERROR_CLASS_TRANSIENT, "HTTP 503")).accepted
        await advance_alive(env, 10, w)  # past the backoff (5 s +- 20 %)
        a2 = (await w.next("assign")).assign
        assert a2.lease_epoch == a1.lease_epoch + 1 and a2.attempt == 2

        stale = await w.succeed(a1, "sb-old", "https://old")
        assert not stale.accepted and "stale" in stale.reason
        assert isinstance(await w.commit(a1), wg.CommitDeny)
        await w.log(a1, "compose", "from the past")
        drop = (await w.next("drop")).drop
        assert (drop.job_id, drop.lease_epoch) == (job_id, a1.lease_epoch)

        await run_to_success(w, a2)
        job = await get_job(stub, job_id)
        assert job.status == pb.JOB_STATUS_SUCCEEDED and job.result_post_id == "sb-1"
        assert all(log.message != "from the past" for r in job.runs for log in r.logs)


@pytest.mark.anyio
async def test_credit_never_more_assigns_outstanding_than_slots(tmp_path: Path) -> None:
    targets = [("sandbox", f"acct{i}") for i in range(5)]
    async with harness(tmp_path) as (env, stub), ScriptedWorker(env.address, "dev-1", slots=2) as w:
        await w.hello()
        post = await publish(stub, targets=targets)
        await w.sync()  # every Assign the coordinator sent has arrived
        outstanding = [m.assign for m in w.pending("assign")]
        assert len(outstanding) == 2
        for m in w.pending("assign"):
            await w.take(["assign"], job_id=m.assign.job_id)
        done: list[str] = []
        while outstanding:
            a = outstanding.pop(0)
            await run_to_success(w, a, n=a.job_id)
            done.append(a.job_id)
            await w.sync()
            fresh = w.pending("assign")
            for m in fresh:
                await w.take(["assign"], job_id=m.assign.job_id)
                outstanding.append(m.assign)
            assert len(outstanding) <= 2, outstanding
        assert sorted(done) == sorted(job_ids(post))
        got = await stub.GetPost(pub.GetPostRequest(post_id=post.id))
        assert got.status == pb.POST_STATUS_PUBLISHED


# ---- refused streams ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_hello_without_device_id_is_invalid_argument(tmp_path: Path) -> None:
    async with harness(tmp_path) as (env, _), ScriptedWorker(env.address, "") as w:
        with pytest.raises(StreamEnded) as err:
            await w.hello()
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "device_id" in err.value.details


# ---- screenshots ----------------------------------------------------------------------------


def png_bytes(size: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + os.urandom(size - 8)


@pytest.mark.anyio
async def test_oversized_screenshot_chunk_is_refused_and_other_jobs_unaffected(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as (env, stub):
        async with (
            ScriptedWorker(env.address, "big", slots=1) as big,
            ScriptedWorker(env.address, "other", slots=1) as other,
        ):
            await big.hello()
            await other.hello()
            post = await publish(stub, targets=[("sandbox", "a"), ("sandbox", "b")])
            mine = (await big.next("assign")).assign
            theirs = (await other.next("assign")).assign
            await big.ack(mine)
            await other.ack(theirs)

            data = png_bytes(DEFAULT_MAX_CHUNK_BYTES + 1)
            ack = await big.screenshot(mine, data, chunk=len(data))
            assert not ack.ok and ack.error.startswith("RESOURCE_EXHAUSTED"), ack.error

            before = await get_job(stub, theirs.job_id)
            assert (before.status, before.lease_epoch) == (
                pb.JOB_STATUS_RUNNING,
                theirs.lease_epoch,
            )
            await run_to_success(other, theirs, "b")
            await run_to_success(big, mine, "a")  # the refusal did not end the big one's stream
        got = await stub.GetPost(pub.GetPostRequest(post_id=post.id))
        assert got.status == pb.POST_STATUS_PUBLISHED


@pytest.mark.anyio
async def test_chunked_screenshot_is_stored_and_downloadable_byte_for_byte(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as (env, stub), ScriptedWorker(env.address, "dev-1") as w:
        await w.hello()
        (job_id,) = job_ids(await publish(stub))
        a = (await w.next("assign")).assign
        await w.ack(a)
        data = png_bytes(300_000)
        bad = await w.screenshot(a, data, chunk=64 * 1024, sha256="0" * 64)
        assert not bad.ok and "sha256" in bad.error
        ack = await w.screenshot(a, data, chunk=64 * 1024, label="after_publish")
        assert ack.ok, ack.error
        assert ack.asset_id == hashlib.sha256(data).hexdigest()

        chunks = [c async for c in stub.GetAsset(pub.GetAssetRequest(asset_id=ack.asset_id))]
        assert b"".join(c.data for c in chunks) == data
        assert chunks[0].total_size == len(data) and chunks[0].content_type == "image/png"

        (run,) = (await get_job(stub, job_id)).runs
        (shot,) = run.screenshots
        assert (shot.asset_id, shot.label, shot.size_bytes) == (
            ack.asset_id,
            "after_publish",
            len(data),
        )


# ---- a hostile stream -----------------------------------------------------------------------


async def hostile_garbage(evil: ScriptedWorker, job_id: str, epoch: int) -> None:
    """Everything a stream that does not hold the job might send about it."""
    for forged_epoch in (0, epoch, epoch + 1):
        forged = wg.HeldJob(job_id=job_id, lease_epoch=forged_epoch, committed=True)
        assert isinstance(await evil.commit(forged), wg.CommitDeny)
        assert not (await evil.succeed(forged, "forged", "https://evil")).accepted, forged_epoch
        assert not (await evil.fail(forged, pb.ERROR_CLASS_INVALID_CONTENT, "no")).accepted
        await evil.ack(forged)
        await evil.log(forged, "evil", "forged log")
        await evil.send(
            wg.WorkerMessage(
                awaiting_confirm=wg.AwaitingConfirm(job_id=job_id, lease_epoch=forged_epoch)
            )
        )
        bad = await evil.screenshot(forged, png_bytes(100))
        assert not bad.ok and bad.error.startswith("FAILED_PRECONDITION")
    unknown = wg.HeldJob(job_id="j-does-not-exist", lease_epoch=1)
    assert not (await evil.succeed(unknown, "x", "https://x")).accepted


@pytest.mark.anyio
async def test_hostile_stream_never_affects_another_workers_job(tmp_path: Path) -> None:
    async with harness(tmp_path) as (env, stub):
        async with ScriptedWorker(env.address, "victim", slots=1) as victim:
            await victim.hello()
            (job_id,) = job_ids(await publish(stub))
            a = (await victim.next("assign")).assign
            await victim.ack(a)

            async with ScriptedWorker(env.address, "evil") as evil:
                claimed = wg.HeldJob(job_id=job_id, lease_epoch=a.lease_epoch, committed=True)
                welcome = await evil.hello(held=[claimed])
                assert list(welcome.resumed) == []
                await hostile_garbage(evil, job_id, a.lease_epoch)  # before the commit permit
                assert isinstance(await victim.commit(a), wg.CommitGrant)
                await hostile_garbage(evil, job_id, a.lease_epoch)  # and after it
                await evil.send(wg.WorkerMessage(hello=wg.Hello(device_id="victim", slots=9)))
                code, _ = await evil.wait_ended()
                assert code == grpc.StatusCode.FAILED_PRECONDITION

            job = await get_job(stub, job_id)
            assert (job.status, job.device_id, job.lease_epoch) == (
                pb.JOB_STATUS_RUNNING,
                "victim",
                a.lease_epoch,
            )
            await victim.sync()
            assert victim.pending("drop") == [] and victim.pending("cancel") == []
            ack = await victim.succeed(a, "sb-1", "https://sandbox.test/acme/1")
            assert ack.accepted
        job = await get_job(stub, job_id)
        assert job.status == pb.JOB_STATUS_SUCCEEDED and job.result_post_id == "sb-1"
        (run,) = job.runs
        assert all(log.step != "evil" for log in run.logs)


# ---- the coordinator process restarted on its database --------------------------------------

RESTART_JOBS = 6
COMMITTED = 3  # the first COMMITTED jobs got their commit permit before the crash


async def lease_all(address: str, w: ScriptedWorker) -> list[wg.Assign]:
    """Publish RESTART_JOBS jobs, take them all, ack them, commit the first COMMITTED."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = publishing_pb2_grpc.PublishingStub(channel)
        await w.hello()
        await publish(stub, targets=[("sandbox", f"acct{i}") for i in range(RESTART_JOBS)])
        assigns = [(await w.next("assign")).assign for _ in range(RESTART_JOBS)]
        for a in assigns:
            await w.ack(a)
        for a in assigns[:COMMITTED]:
            assert isinstance(await w.commit(a), wg.CommitGrant)
        await w.sync()  # acks were processed (and committed to the database) before the crash
    return assigns


async def final_jobs(address: str) -> list[pb.Job]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = publishing_pb2_grpc.PublishingStub(channel)
        resp = await stub.ListJobs(pub.ListJobsRequest(page_size=100))
        return [await get_job(stub, j.id) for j in resp.jobs]


@pytest.mark.anyio
async def test_restarted_coordinator_resumes_held_jobs_by_epoch(tmp_path: Path) -> None:
    args = ["--heartbeat-interval", "2", "--lease-ttl", "10"]  # grace window: 10 s
    with coordinator_process(tmp_path, args=args) as proc:
        async with ScriptedWorker(proc.address, "dev-1", slots=RESTART_JOBS) as w:
            assigns = await lease_all(proc.address, w)
            proc.kill()
            with pytest.raises(StreamEnded):
                await w.next("assign")
        await anyio.to_thread.run_sync(proc.restart)

        successes: list[str] = []
        async with ScriptedWorker(proc.address, "dev-1", slots=RESTART_JOBS) as w:
            held = [
                wg.HeldJob(job_id=a.job_id, lease_epoch=a.lease_epoch, committed=i < COMMITTED)
                for i, a in enumerate(assigns)
            ]
            welcome = await w.hello(held=held)
            assert sorted((h.job_id, h.lease_epoch, h.committed) for h in welcome.resumed) == (
                sorted((h.job_id, h.lease_epoch, h.committed) for h in held)
            )
            for a in assigns[COMMITTED:]:
                assert isinstance(await w.commit(a), wg.CommitGrant)
            for a in assigns:
                ack = await w.succeed(a, f"sb-{a.job_id}", f"https://sandbox.test/{a.job_id}")
                assert ack.accepted, ack.reason
                successes.append(a.job_id)
            await w.sync()
            assert w.pending("assign") == []

        jobs = await final_jobs(proc.address)
    assert sorted(successes) == sorted(j.id for j in jobs) and len(jobs) == RESTART_JOBS
    for job in jobs:
        assert job.status == pb.JOB_STATUS_SUCCEEDED
        assert [r.outcome for r in job.runs] == ["succeeded"]
        assert job.result_post_id == f"sb-{job.id}"


@pytest.mark.anyio
async def test_restarted_coordinator_releases_jobs_of_a_worker_that_never_returns(
    tmp_path: Path,
) -> None:
    args = ["--heartbeat-interval", "0.5", "--lease-ttl", "2"]  # grace 2 s, margin 1 s
    with coordinator_process(tmp_path, args=args) as proc:
        async with ScriptedWorker(proc.address, "gone", slots=RESTART_JOBS) as w:
            assigns = await lease_all(proc.address, w)
            proc.kill()
        restarting = time.monotonic()  # the grace window starts after this, at load
        await anyio.to_thread.run_sync(proc.restart)

        by_job = {a.job_id: a for a in assigns}
        committed = {a.job_id for a in assigns[:COMMITTED]}
        async with ScriptedWorker(proc.address, "other", slots=RESTART_JOBS) as w2:
            await w2.hello()
            got: dict[str, wg.Assign] = {}
            deadline = time.monotonic() + 15
            while len(got) < RESTART_JOBS and time.monotonic() < deadline:
                await w2.heartbeat()  # keep this session alive meanwhile
                try:
                    a = (await w2.next("assign", timeout=0.3)).assign
                except TimeoutError:
                    continue
                got[a.job_id] = a
            assert time.monotonic() - restarting >= 3.0  # not before grace (2 s) + margin (1 s)
            assert set(got) == set(by_job)
            for job_id, a in got.items():
                assert a.lease_epoch > by_job[job_id].lease_epoch
                assert a.verify_first == (job_id in committed), job_id
            for a in got.values():
                await run_to_success(w2, a, a.job_id)

        jobs = await final_jobs(proc.address)
    for job in jobs:
        assert job.status == pb.JOB_STATUS_SUCCEEDED and job.device_id == "other"
        assert [r.outcome for r in job.runs] == ["lease_lost", "succeeded"]
