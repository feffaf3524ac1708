"""A real worker against a scripted fake coordinator: a `WorkerGatewayServicer` on a grpc.aio
server on 127.0.0.1 port 0, driven step by step by each test. Platform calls go to an in-test
httpx MockTransport (in-process worker) or to the real sandbox server (subprocess worker)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import grpc
import httpx
import pytest

from postroom.clock import SystemClock
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg
from postroom.v1 import worker_gateway_pb2_grpc as wg_grpc
from worker.adapters.base import AdapterRegistry
from worker.adapters.sandbox import sandbox_factory
from worker.config import BackoffPolicy, Capability, WorkerConfig
from worker.errors import SessionRefused
from worker.shell import Worker

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 10.0
PROCESS_WAIT_S = 30.0  # a Python process importing grpc on a loaded machine
HEARTBEAT_MS = 200
TTL_MS = 3000


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
async def _one_event_loop_per_module() -> AsyncIterator[None]:
    """grpc.aio's core can finish a closed call's bookkeeping just after a test returns; with a
    fresh event loop per test that lands on a closed loop ("Event loop is closed"). One loop for
    the module gives it a live one."""
    yield


# ---- the fake coordinator -------------------------------------------------------------------


class FakeSession:
    """One stream as the coordinator sees it. Everything the worker sent is kept in `log`;
    `next(kind)` returns the next message of that kind not yet taken (waiting with a deadline)."""

    def __init__(self, hello: wg.Hello) -> None:
        self.hello = hello
        self.log: list[wg.WorkerMessage] = []  # batches unpacked
        self.wire_kinds: list[str] = []  # as read
        self.outbox: asyncio.Queue[wg.CoordinatorMessage | None] = asyncio.Queue()
        self.worker_done = asyncio.Event()  # the worker half-closed (or the stream broke)
        self.auto_ack_heartbeats = True
        self._taken: dict[str, int] = {}
        self._changed = asyncio.Event()

    def send(self, **fields: Any) -> None:
        self.outbox.put_nowait(wg.CoordinatorMessage(**fields))

    def welcome(
        self,
        resumed: list[wg.HeldJob] | None = None,
        *,
        ttl_ms: int = TTL_MS,
        accepts_batches: bool = False,
    ) -> None:
        self.send(
            welcome=wg.Welcome(
                session_id=f"s-{id(self)}",
                heartbeat_interval_ms=min(HEARTBEAT_MS, ttl_ms // 3),
                lease_ttl_ms=ttl_ms,
                resumed=resumed or [],
                max_chunk_bytes=1024,
                max_asset_bytes=1 << 20,
                accepts_batches=accepts_batches,
            )
        )

    def end(self) -> None:
        """End the stream from the coordinator's side (the handler returns)."""
        self.outbox.put_nowait(None)

    def kinds(self) -> list[str]:
        return [str(m.WhichOneof("msg")) for m in self.log]

    def of(self, kind: str) -> list[wg.WorkerMessage]:
        return [m for m in self.log if m.WhichOneof("msg") == kind]

    async def next(self, kind: str, timeout_s: float = WAIT_S) -> wg.WorkerMessage:
        with anyio.fail_after(timeout_s):
            while True:
                taken = self._taken.get(kind, 0)
                found = self.of(kind)
                if len(found) > taken:
                    self._taken[kind] = taken + 1
                    return found[taken]
                self._changed.clear()
                await self._changed.wait()

    def received(self, msg: wg.WorkerMessage) -> None:
        self.wire_kinds.append(str(msg.WhichOneof("msg")))
        if msg.HasField("batch"):
            for one in msg.batch.messages:
                self.received(one)
            return
        self.log.append(msg)
        self._changed.set()
        if msg.WhichOneof("msg") == "heartbeat" and self.auto_ack_heartbeats:
            deadline = int((time.time() + TTL_MS / 1000) * 1000)
            ack = wg.HeartbeatAck(seq=msg.heartbeat.seq, lease_deadline_unix_ms=deadline)
            self.send(heartbeat_ack=ack)


class FakeCoordinator(wg_grpc.WorkerGatewayServicer):
    def __init__(self) -> None:
        self.sessions: asyncio.Queue[FakeSession] = asyncio.Queue()
        self.refuse: grpc.StatusCode | None = None

    async def next_session(self, timeout_s: float = WAIT_S) -> FakeSession:
        with anyio.fail_after(timeout_s):
            return await self.sessions.get()

    async def Connect(
        self,
        request_iterator: AsyncIterator[wg.WorkerMessage],
        context: grpc.aio.ServicerContext[wg.WorkerMessage, wg.CoordinatorMessage],
    ) -> AsyncIterator[wg.CoordinatorMessage]:
        first = await anext(request_iterator)
        if self.refuse is not None:
            await context.abort(self.refuse, "no such token")
        session = FakeSession(first.hello)
        self.sessions.put_nowait(session)

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    session.received(msg)
            finally:
                session.worker_done.set()
                session._changed.set()

        reader = asyncio.create_task(read())
        try:
            while (msg := await session.outbox.get()) is not None:
                yield msg
        finally:
            reader.cancel()


@asynccontextmanager
async def fake_coordinator() -> AsyncIterator[tuple[str, FakeCoordinator]]:
    fake = FakeCoordinator()
    server = grpc.aio.server()
    wg_grpc.add_WorkerGatewayServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", fake
    finally:
        await server.stop(None)


# ---- a fake platform behind httpx.MockTransport ---------------------------------------------


class Platform:
    def __init__(self) -> None:
        self.posts: list[dict[str, str]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")  # api, platform, accounts, account, leaf
        account, leaf = parts[3], parts[4]
        if leaf == "me":
            return httpx.Response(401 if account == "logged-out" else 200, json={})
        if request.method == "GET":
            key = request.url.params.get("client_key")
            return httpx.Response(200, json={"posts": [p for p in self.posts if p["key"] == key]})
        body = json.loads(request.content)
        post = {"id": f"p{len(self.posts) + 1}", "url": "https://fake/p", "key": body["client_key"]}
        self.posts.append(post)
        return httpx.Response(201, json=post)


def make_worker(address: str, platform: Platform, *, slots: int = 2, token: str = "") -> Worker:
    config = WorkerConfig(
        coordinator=address,
        device_id="w-test",
        token=token,
        capabilities=(Capability.parse("sandbox:acme"), Capability.parse("sandbox")),
        concurrency=slots,
        reconnect=BackoffPolicy(initial_s=0.05, max_s=0.2),
        drain_timeout_s=WAIT_S,
    )
    factory = sandbox_factory(
        base_url="http://sandbox.test",
        clock=SystemClock(),
        transport=httpx.MockTransport(platform.handle),
    )
    return Worker(config=config, adapters=AdapterRegistry({"sandbox": factory}))


@asynccontextmanager
async def running_worker(
    address: str, platform: Platform, *, slots: int = 2, token: str = ""
) -> AsyncIterator[Worker]:
    worker = make_worker(address, platform, slots=slots, token=token)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            yield worker
        finally:
            tg.cancel_scope.cancel()


def assign(job_id: str, epoch: int = 1, **fields: Any) -> wg.Assign:
    return wg.Assign(
        job_id=job_id,
        lease_epoch=epoch,
        attempt=1,
        max_attempts=3,
        lease_deadline_unix_ms=int((time.time() + TTL_MS / 1000) * 1000),
        platform="sandbox",
        account="acme",
        text=f"text of {job_id}",
        platform_key=f"key-{job_id}",
        **fields,
    )


async def wait_for(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(WAIT_S):
        while not predicate():  # noqa: ASYNC110 - a poll with a deadline, on purpose
            await anyio.sleep(0.01)


# ---- tests ----------------------------------------------------------------------------------


async def test_hello_carries_identity_capabilities_and_slots() -> None:
    async with (
        fake_coordinator() as (address, fake),
        running_worker(address, Platform(), slots=3, token="secret") as worker,
    ):
        s = await fake.next_session()
        h = s.hello
        assert (h.device_id, h.token, h.kind, h.slots) == ("w-test", "secret", 1, 3)
        assert [(c.platform, c.account) for c in h.capabilities] == [
            ("sandbox", "acme"),
            ("sandbox", "*"),
        ]
        assert list(h.held_jobs) == [] and h.version
        assert not worker.ready.is_set()
        s.welcome()
        await s.next("heartbeat")
        assert worker.ready.is_set()


async def test_credit_never_more_jobs_running_than_slots() -> None:
    platform = Platform()
    async with (
        fake_coordinator() as (address, fake),
        running_worker(address, platform, slots=2) as worker,
    ):
        s = await fake.next_session()
        s.welcome()
        for job_id in ("a", "b", "c"):
            s.send(assign=assign(job_id))
        first = (await s.next("commit_request")).commit_request
        await s.next("commit_request")
        acked = [m.ack.job_id for m in s.of("ack")]
        assert len(acked) == 2 and worker.runner.running_count() == 2
        s.send(commit_grant=wg.CommitGrant(job_id=first.job_id, lease_epoch=1))
        result = (await s.next("result")).result
        assert result.success and result.job_id == first.job_id
        await wait_for(lambda: len(s.of("ack")) == 3)  # a slot freed when the first finished
        assert s.of("ack")[2].ack.job_id not in acked
        hb = (await s.next("heartbeat")).heartbeat
        assert len(hb.active) == 3  # held until their ResultAck
        assert worker.runner.running_count() == 2


@pytest.mark.parametrize("batching", [False, True])
async def test_batches_only_to_a_coordinator_that_takes_them(batching: bool) -> None:
    platform = Platform()
    async with fake_coordinator() as (address, fake), running_worker(address, platform):
        s = await fake.next_session()
        assert s.hello.accepts_batches
        s.welcome(accepts_batches=batching)
        jobs = [wg.CoordinatorMessage(assign=assign(j)) for j in ("j1", "j2")]
        s.send(batch=wg.CoordinatorBatch(messages=jobs))  # both are run, in order
        for _ in jobs:
            asked = (await s.next("commit_request")).commit_request
            s.send(commit_grant=wg.CommitGrant(job_id=asked.job_id, lease_epoch=1))
        results = [(await s.next("result")).result for _ in jobs]
        assert sorted((r.job_id, r.success) for r in results) == [("j1", True), ("j2", True)]
        for j in ("j1", "j2"):
            about = [m.WhichOneof("msg") for m in s.log if _job_of(m) == j]
            assert about.index("ack") < about.index("commit_request") < about.index("result")
        if not batching:  # an older coordinator never gets a message it cannot read
            assert "batch" not in s.wire_kinds


def _job_of(msg: wg.WorkerMessage) -> str:
    return str(getattr(getattr(msg, str(msg.WhichOneof("msg"))), "job_id", ""))


async def test_commit_waits_for_the_permit() -> None:
    platform = Platform()
    async with fake_coordinator() as (address, fake), running_worker(address, platform):
        s = await fake.next_session()
        s.welcome()
        s.send(assign=assign("j1", epoch=4))
        await s.next("commit_request")
        kinds = s.kinds()
        assert kinds.index("ack") < kinds.index("commit_request")
        assert platform.posts == []  # prepared, not posted
        s.send(commit_grant=wg.CommitGrant(job_id="j1", lease_epoch=4))
        result = (await s.next("result")).result
        assert (result.success, result.lease_epoch, result.platform_post_id) == (True, 4, "p1")
        assert len(platform.posts) == 1
        kinds = s.kinds()
        chunks = [m.screenshot for m in s.of("screenshot")]
        assert chunks[0].label == "after_publish" and chunks[-1].last
        assert all(len(c.data) <= 1024 for c in chunks)
        assert kinds.index("screenshot") < kinds.index("result")
        assert kinds[-1] != "log" or kinds.index("result") < len(kinds)
        steps = {m.log.step for m in s.of("log")}
        assert {"prepare", "commit_permit", "commit", "screenshot", "report"} <= steps
        s.send(result_ack=wg.ResultAck(job_id="j1", lease_epoch=4, accepted=True))
        await wait_for(lambda: not (s.of("heartbeat") and s.of("heartbeat")[-1].heartbeat.active))


async def test_stale_epoch_drop_abandons_the_job() -> None:
    platform = Platform()
    async with fake_coordinator() as (address, fake), running_worker(address, platform) as w:
        s = await fake.next_session()
        s.welcome()
        s.send(assign=assign("j1", epoch=2))
        await s.next("commit_request")
        s.send(drop=wg.Drop(job_id="j1", lease_epoch=2, reason="stale lease epoch 2"))
        await wait_for(lambda: w.runner.held_jobs() == [])
        s.send(commit_grant=wg.CommitGrant(job_id="j1", lease_epoch=2))
        n = len(s.of("heartbeat"))
        await wait_for(lambda: len(s.of("heartbeat")) > n + 1)
        assert platform.posts == []
        assert s.of("result") == []
        assert list(s.of("heartbeat")[-1].heartbeat.active) == []


async def test_reconnects_and_resumes_held_jobs() -> None:
    platform = Platform()
    async with fake_coordinator() as (address, fake), running_worker(address, platform) as w:
        s1 = await fake.next_session()
        s1.welcome()
        s1.send(assign=assign("keep", epoch=3))
        s1.send(assign=assign("lose", epoch=5))
        await s1.next("commit_request")
        await s1.next("commit_request")
        s1.end()  # the coordinator goes away mid-job

        s2 = await fake.next_session()
        held = {(h.job_id, h.lease_epoch, h.committed) for h in s2.hello.held_jobs}
        assert held == {("keep", 3, False), ("lose", 5, False)}
        s2.welcome(resumed=[wg.HeldJob(job_id="keep", lease_epoch=3)])
        again = (await s2.next("commit_request")).commit_request  # repeated on the new stream
        assert (again.job_id, again.lease_epoch) == ("keep", 3)
        await wait_for(lambda: [h.job_id for h in w.runner.held_jobs()] == ["keep"])
        s2.send(commit_grant=wg.CommitGrant(job_id="keep", lease_epoch=3))
        result = (await s2.next("result")).result
        assert result.success and result.job_id == "keep"
        assert [p["key"] for p in platform.posts] == ["key-keep"]

        s2.end()  # before the ResultAck: the result must come again
        s3 = await fake.next_session()
        assert [(h.job_id, h.committed) for h in s3.hello.held_jobs] == [("keep", True)]
        s3.welcome(resumed=list(s3.hello.held_jobs))
        assert (await s3.next("result")).result == result
        s3.send(result_ack=wg.ResultAck(job_id="keep", lease_epoch=3, accepted=True))
        await wait_for(lambda: w.runner.held_jobs() == [])
        assert len(platform.posts) == 1


async def test_a_silent_coordinator_is_left_after_one_ttl() -> None:
    async with fake_coordinator() as (address, fake), running_worker(address, Platform()) as w:
        s1 = await fake.next_session()
        s1.auto_ack_heartbeats = False  # hung: the TCP connection is fine, nobody answers
        s1.welcome(ttl_ms=600)
        started = time.monotonic()
        s2 = await fake.next_session()
        assert time.monotonic() - started >= 0.6
        s2.welcome()
        await s2.next("heartbeat")
        assert w.sessions_started == 2


async def test_coordinator_goodbye_keeps_jobs_and_takes_no_new_ones() -> None:
    platform = Platform()
    async with fake_coordinator() as (address, fake), running_worker(address, platform) as w:
        s = await fake.next_session()
        s.welcome()
        s.send(assign=assign("j1"))
        await s.next("commit_request")
        s.send(goodbye=wg.Goodbye(reason="coordinator restarting"))
        s.send(assign=assign("late"))
        s.send(commit_grant=wg.CommitGrant(job_id="j1", lease_epoch=1))
        assert (await s.next("result")).result.success
        assert [m.ack.job_id for m in s.of("ack")] == ["j1"]
        s.end()
        s2 = await fake.next_session()
        assert [h.job_id for h in s2.hello.held_jobs] == ["j1"]
        assert w.sessions_started == 1


async def test_login_check_is_answered() -> None:
    async with fake_coordinator() as (address, fake), running_worker(address, Platform()):
        s = await fake.next_session()
        s.welcome()
        for request_id, account in (("r1", "acme"), ("r2", "logged-out")):
            target = pb.Target(platform="sandbox", account=account)
            s.send(login_check=wg.LoginCheck(request_id=request_id, target=target))
        answers = {}
        for _ in range(2):
            answer = (await s.next("login_check")).login_check
            answers[answer.request_id] = answer.state
        assert answers == {"r1": pb.LOGIN_STATE_LOGGED_IN, "r2": pb.LOGIN_STATE_NEEDS_LOGIN}


async def test_refused_hello_stops_the_worker() -> None:
    async with fake_coordinator() as (address, fake):
        fake.refuse = grpc.StatusCode.UNAUTHENTICATED
        worker = make_worker(address, Platform())
        with pytest.raises(SessionRefused, match="UNAUTHENTICATED"), anyio.fail_after(WAIT_S):
            await worker.run()  # no reconnecting: a wrong token stays wrong
        assert not worker.ready.is_set()


# ---- SIGTERM drain, as processes ------------------------------------------------------------


def _start(argv: list[str], out: Path) -> subprocess.Popen[bytes]:
    """stdout to `out`, stderr to `out` with a .log suffix."""
    with open(out, "wb") as stdout, open(out.with_suffix(".log"), "wb") as stderr:
        return subprocess.Popen(argv, cwd=REPO, stdout=stdout, stderr=stderr)


async def _wait_file(path: Path, proc: subprocess.Popen[bytes], needle: str = "") -> str:
    with anyio.fail_after(PROCESS_WAIT_S):
        while True:
            apath = anyio.Path(path)
            text = await apath.read_text() if await apath.exists() else ""
            if text and needle in text:
                return text
            assert proc.poll() is None, f"process exited:\n{text}"
            await anyio.sleep(0.02)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


async def test_sigterm_drains_in_flight_job_and_exits_0(tmp_path: Path) -> None:
    ready = tmp_path / "sandbox.ready"
    sandbox = _start(
        [sys.executable, "-m", "sandbox", "--listen", "127.0.0.1:0", "--ready-file", str(ready)],
        tmp_path / "sandbox.log",
    )
    try:
        sandbox_url = f"http://127.0.0.1:{(await _wait_file(ready, sandbox)).strip()}"
        async with fake_coordinator() as (address, fake):
            out = tmp_path / "worker.out"
            argv = [
                sys.executable, "-m", "worker.main", "--coordinator", address,
                "--device-id", "w-proc", "--kind", "api", "--platform", "sandbox:acme",
                "--concurrency", "2", "--sandbox-url", sandbox_url,
            ]  # fmt: skip
            worker = _start(argv, out)
            try:
                s = await fake.next_session(PROCESS_WAIT_S)
                s.welcome()
                line = await _wait_file(out, worker, "\n")
                assert line.startswith(f"worker w-proc ready (coordinator {address}) metrics http")

                s.send(assign=assign("j1"))
                await s.next("commit_request")
                os.kill(worker.pid, signal.SIGTERM)
                assert (await s.next("goodbye")).goodbye.reason.startswith("SIGTERM")
                s.send(assign=assign("late"))  # raced the goodbye: must not be taken
                s.send(commit_grant=wg.CommitGrant(job_id="j1", lease_epoch=1))
                result = (await s.next("result")).result
                assert result.success
                assert worker.poll() is None  # still waiting for the ResultAck
                s.send(result_ack=wg.ResultAck(job_id="j1", lease_epoch=1, accepted=True))
                with anyio.fail_after(WAIT_S):
                    await s.worker_done.wait()  # it half-closed its side
                s.end()
                with anyio.fail_after(WAIT_S):
                    code = await anyio.to_thread.run_sync(worker.wait)
                assert code == 0, out.with_suffix(".log").read_text()
                assert [m.ack.job_id for m in s.of("ack")] == ["j1"]
            finally:
                _stop(worker)
        async with httpx.AsyncClient() as client:
            posts = (await client.get(f"{sandbox_url}/admin/posts")).json()["posts"]
        assert [p["client_key"] for p in posts] == ["key-j1"]
    finally:
        _stop(sandbox)
