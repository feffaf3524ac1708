"""Devices over real gRPC: a worker proves its identity with its own device token, may claim only
the accounts it was enrolled for, loses its session the moment it is revoked (its jobs go to
another worker), can be replaced only by a stream that proves the same identity, and cannot
report a success it was never permitted to publish."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from access_rig import Rig, secure_coordinator
from scripted_worker import ScriptedWorker, StreamEnded

from coordinator.access.registry import AccessPolicy
from postroom.v1 import access_pb2 as ac
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

pytestmark = pytest.mark.anyio
ACME = ("sandbox", "acme")
OTHER = ("sandbox", "other")
REVOCATION_DEADLINE_S = 2.0


async def refused(
    rig: Rig, device_id: str, token: str, caps: list[tuple[str, str]]
) -> tuple[grpc.StatusCode | None, str]:
    """Hello, expecting the stream to be ended: (code, details)."""
    async with ScriptedWorker(rig.address, device_id, capabilities=caps, token=token) as w:
        with pytest.raises(StreamEnded) as caught:
            await w.hello()
        return caught.value.code, caught.value.details


async def publish(rig: Rig, *targets: tuple[str, str]) -> list[str]:
    """Written by an author, approved by an approver (four eyes), scheduled: its job ids."""
    author = rig.stub(await rig.token(f"author-{time.monotonic_ns()}", ac.ROLE_AUTHOR))
    approver = rig.stub(await rig.token(f"approver-{time.monotonic_ns()}", ac.ROLE_APPROVER))
    post = await author.call(
        "CreatePost",
        pub.CreatePostRequest(
            text="hello", targets=[pb.Target(platform=p, account=a) for p, a in targets]
        ),
    )
    assert isinstance(post, pb.Post)
    await author.call("SubmitPost", pub.SubmitPostRequest(post_id=post.id))
    await approver.call("ApprovePost", pub.ApprovePostRequest(post_id=post.id))
    scheduled = await author.call("SchedulePost", pub.SchedulePostRequest(post_id=post.id))
    assert isinstance(scheduled, pb.Post)
    return [t.job_id for t in scheduled.target_states]


async def job(rig: Rig, job_id: str) -> pb.Job:
    found = await rig.stub(rig.admin_token).call("GetJob", pub.GetJobRequest(job_id=job_id))
    assert isinstance(found, pb.Job)
    return found


async def test_a_device_proves_who_it_is_with_its_own_token(tmp_path: Path) -> None:
    async with secure_coordinator(tmp_path) as rig:
        token = await rig.enroll("dev-1", "sandbox:acme")
        async with ScriptedWorker(rig.address, "dev-1", capabilities=[ACME], token=token) as w:
            assert (await w.hello()).session_id
        cases = [
            ("dev-1", "", grpc.StatusCode.UNAUTHENTICATED, "requires a device token"),
            ("dev-1", "prd_bogus", grpc.StatusCode.UNAUTHENTICATED, "unknown"),
            ("dev-1", rig.admin_token, grpc.StatusCode.UNAUTHENTICATED, "operator token"),
            ("dev-2", token, grpc.StatusCode.PERMISSION_DENIED, "belongs to device 'dev-1'"),
        ]
        for device_id, presented, code, fragment in cases:
            got, details = await refused(rig, device_id, presented, [ACME])
            assert got == code, (device_id, details)
            assert fragment in details
            assert token not in details and rig.admin_token not in details


async def test_a_device_claims_only_the_accounts_it_was_enrolled_for(tmp_path: Path) -> None:
    async with secure_coordinator(tmp_path) as rig:
        token = await rig.enroll("dev-1", "sandbox:acme")
        for caps in ([OTHER], [("sandbox", "*")], [ACME, OTHER]):
            code, details = await refused(rig, "dev-1", token, caps)
            assert code == grpc.StatusCode.PERMISSION_DENIED, details
            assert "not enrolled for" in details
        acme_job, other_job = await publish(rig, ACME, OTHER)
        async with ScriptedWorker(
            rig.address, "dev-1", capabilities=[ACME], token=token, slots=4
        ) as w:
            await w.hello()
            assert (await w.next("assign")).assign.job_id == acme_job
            await w.sync()
            await w.sync()  # two rounds: nothing else is on its way
            assert w.pending("assign") == []
        assert (await job(rig, other_job)).status == pb.JOB_STATUS_QUEUED

        # An enrollment for every account of a platform covers a worker that serves them all.
        wide = await rig.enroll("dev-all", "sandbox:*")
        async with ScriptedWorker(
            rig.address, "dev-all", capabilities=[("sandbox", "*")], token=wide
        ) as w:
            await w.hello()
            assert (await w.next("assign")).assign.job_id == other_job


async def test_revoking_a_device_ends_its_session_at_once_and_recovers_its_jobs(
    tmp_path: Path,
) -> None:
    async with secure_coordinator(tmp_path) as rig:
        t1 = await rig.enroll("dev-1", "sandbox:acme")
        t2 = await rig.enroll("dev-2", "sandbox:acme")
        (job_id,) = await publish(rig, ACME)
        admin = rig.stub(rig.admin_token)
        async with ScriptedWorker(rig.address, "dev-1", capabilities=[ACME], token=t1) as w1:
            await w1.hello()
            first = (await w1.next("assign")).assign
            await w1.ack(first)
            async with ScriptedWorker(rig.address, "dev-2", capabilities=[ACME], token=t2) as w2:
                await w2.hello()
                started = time.monotonic()
                revoked = await admin.call("RevokeDevice", ac.RevokeDeviceRequest(name="dev-1"))
                assert isinstance(revoked, ac.DeviceEnrollment) and revoked.HasField("revoked_at")
                code, details = await w1.wait_ended(REVOCATION_DEADLINE_S)
                assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in details
                again = (await w2.next("assign", REVOCATION_DEADLINE_S)).assign
                assert time.monotonic() - started < REVOCATION_DEADLINE_S
                assert (again.job_id, again.lease_epoch) == (job_id, first.lease_epoch + 1)
        code, details = await refused(rig, "dev-1", t1, [ACME])
        assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in details
        devices = await admin.call("ListDevices", pub.ListDevicesRequest())
        assert isinstance(devices, pub.ListDevicesResponse)
        state = {d.id: d.state for d in devices.devices}
        assert state["dev-1"] == pb.DEVICE_STATE_OFFLINE
        audit = await admin.call("ListAuditEvents", pub.ListAuditEventsRequest(subject_id="dev-1"))
        assert isinstance(audit, pub.ListAuditEventsResponse)
        revocations = [e for e in audit.events if e.action == "DEVICE_REVOKED"]
        assert [e.actor for e in revocations] == ["user:bootstrap-admin"]


async def test_a_second_hello_must_prove_the_same_identity(tmp_path: Path) -> None:
    async with secure_coordinator(tmp_path) as rig:
        token = await rig.enroll("dev-1", "sandbox:acme")
        other = await rig.enroll("dev-9", "sandbox:acme")
        (job_id,) = await publish(rig, ACME)
        async with ScriptedWorker(rig.address, "dev-1", capabilities=[ACME], token=token) as w1:
            await w1.hello()
            a = (await w1.next("assign")).assign
            for presented in ("", "prd_guess", other):
                code, _ = await refused(rig, "dev-1", presented, [ACME])
                assert code in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                )
            # The takeover attempts changed nothing: w1 still holds its job.
            await w1.sync()
            assert not w1.ended and w1.held == {job_id: a.lease_epoch}
            assert (await job(rig, job_id)).device_id == "dev-1"

            async with ScriptedWorker(rig.address, "dev-1", capabilities=[ACME], token=token) as w2:
                await w2.hello(held=[a])
                code, details = await w1.wait_ended()
                assert code == grpc.StatusCode.ALREADY_EXISTS, details
                assert "connected again" in details
                await w2.sync()
                current = await job(rig, job_id)
                assert current.device_id == "dev-1" and current.status in (
                    pb.JOB_STATUS_CLAIMED,
                    pb.JOB_STATUS_QUEUED,
                )


async def test_a_success_without_a_commit_permit_is_not_counted(tmp_path: Path) -> None:
    async with secure_coordinator(tmp_path) as rig:
        token = await rig.enroll("dev-1", "sandbox:acme")
        (job_id,) = await publish(rig, ACME)
        async with ScriptedWorker(rig.address, "dev-1", capabilities=[ACME], token=token) as w:
            await w.hello()
            a = (await w.next("assign")).assign
            await w.ack(a)
            ack = await w.succeed(a, "forged", "https://sandbox.test/forged")
            assert not ack.accepted and "commit permit" in ack.reason
            assert (await job(rig, job_id)).status != pb.JOB_STATUS_SUCCEEDED
            b = (await w.next("assign")).assign  # it runs again, under a new epoch
            assert (b.job_id, b.lease_epoch) == (job_id, a.lease_epoch + 1)
            await w.ack(b)
            assert isinstance(await w.commit(b), wg.CommitGrant)
            assert (await w.succeed(b, "sb-1", "https://sandbox.test/acme/1")).accepted
        done = await job(rig, job_id)
        assert (done.status, done.result_post_id) == (pb.JOB_STATUS_SUCCEEDED, "sb-1")


async def test_the_first_token_turns_authentication_on(tmp_path: Path) -> None:
    async with secure_coordinator(tmp_path, policy=AccessPolicy(), bootstrap=False) as rig:
        anyone = rig.stub("")
        listed = await anyone.call("ListPosts", pub.ListPostsRequest())
        assert isinstance(listed, pub.ListPostsResponse)
        async with ScriptedWorker(rig.address, "dev-open", capabilities=[ACME]) as w:
            await w.hello()  # open: no token needed
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await anyone.call(
                    "CreateToken", ac.CreateTokenRequest(name="vera", role=ac.ROLE_VIEWER)
                )
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            made = await anyone.call(
                "CreateToken", ac.CreateTokenRequest(name="root", role=ac.ROLE_ADMIN)
            )
            assert isinstance(made, ac.CreateTokenResponse)
            code, details = await w.wait_ended()
            assert code == grpc.StatusCode.UNAUTHENTICATED and "turned on" in details
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await anyone.call("ListPosts", pub.ListPostsRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        me = await rig.stub(made.secret).call("WhoAmI", ac.WhoAmIRequest())
        assert isinstance(me, ac.WhoAmIResponse) and me.actor == "user:root"
