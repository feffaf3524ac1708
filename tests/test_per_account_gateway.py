"""Hello.per_account_slots over the wire: a worker with four slots that runs one job per account
at a time (as a browser worker does) is never handed a second job of an account it is busy with,
and both of its accounts keep moving; a negative bound is refused with what to fix; the device
list shows the bound."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from conftest import coordinator_process, coordinator_server, job_ids, publish
from scripted_worker import ScriptedWorker

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

pytestmark = pytest.mark.anyio
ACCOUNTS = ("a", "b")
POSTS_PER_ACCOUNT = 3


@pytest.mark.timeout(120)
async def test_one_job_per_account_at_a_time_while_both_accounts_progress(
    tmp_path: Path,
) -> None:
    with coordinator_process(tmp_path) as proc:
        async with (
            grpc.aio.insecure_channel(proc.address) as channel,
            ScriptedWorker(
                proc.address,
                "browser-1",
                capabilities=[("sandbox", acc) for acc in ACCOUNTS],
                slots=4,
                per_account_slots=1,
            ) as w,
        ):
            stub = publishing_pb2_grpc.PublishingStub(channel)
            account_of: dict[str, str] = {}
            for n in range(POSTS_PER_ACCOUNT):
                for acc in ACCOUNTS:
                    post = await publish(stub, text=f"{acc} {n}", targets=[("sandbox", acc)])
                    account_of[job_ids(post)[0]] = acc
            await w.hello()
            running: dict[str, wg.Assign] = {}  # account -> the job it runs
            done: set[str] = set()
            while len(done) < len(account_of):
                await w.sync()  # every Assign sent so far has arrived
                while w.pending("assign"):
                    a = (await w.next("assign")).assign
                    acc = account_of[a.job_id]
                    assert acc not in running, (
                        f"{a.job_id} of account {acc} assigned while {running[acc].job_id} runs"
                    )
                    running[acc] = a
                # Every account with work left has its job out: the bound is per account, and
                # the free slots serve the other account meanwhile.
                assert set(running) == {acc for j, acc in account_of.items() if j not in done}
                a = running.pop(min(running))  # finish one; the other keeps running meanwhile
                await w.ack(a)
                grant = await w.commit(a)
                assert isinstance(grant, wg.CommitGrant), grant
                ack = await w.succeed(a, f"p-{a.job_id}", f"https://sandbox.test/{a.job_id}")
                assert ack.accepted, ack.reason
                done.add(a.job_id)
            jobs = (await stub.ListJobs(pub.ListJobsRequest())).jobs
            assert {j.status for j in jobs} == {pb.JOB_STATUS_SUCCEEDED}
            devices = (await stub.ListDevices(pub.ListDevicesRequest())).devices
            assert [(d.id, d.slots, d.per_account_slots) for d in devices] == [("browser-1", 4, 1)]


async def test_a_negative_per_account_bound_is_refused_with_what_to_fix(tmp_path: Path) -> None:
    async with (
        coordinator_server(tmp_path) as env,
        ScriptedWorker(env.address, "dev-1", per_account_slots=-1) as w,
    ):
        await w.send(
            wg.WorkerMessage(
                hello=wg.Hello(
                    device_id="dev-1",
                    slots=2,
                    per_account_slots=-1,
                    capabilities=[pb.Target(platform="sandbox", account="acme")],
                )
            )
        )
        code, details = await w.wait_ended()
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "per_account_slots is -1" in details and "between 0" in details
