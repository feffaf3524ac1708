"""The worker's protocol logic without gRPC: the pure session machine feeding a real `JobRunner`
(virtual time, a fake outbox, a fake platform adapter). Each test plays the coordinator."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry

from postroom.clock import FakeClock
from postroom.tracing import make_tracer_provider
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg
from worker import session
from worker.adapters.base import AdapterRegistry, JobSpec, Prepared, Published
from worker.adapters.http import error_for
from worker.config import BackoffPolicy, Capability, WorkerConfig, lease_margin_s
from worker.errors import AdapterError, Duplicate, RateLimited, Transient
from worker.job_runner import JobRunner
from worker.job_state import JobPhase
from worker.metrics import WorkerMetrics
from worker.session import SessionState

pytestmark = pytest.mark.anyio

T0 = 1_800_000_000.0
TTL_S = 15.0
WAIT_S = 5.0  # real-time deadline for anything a test waits for


@dataclass
class FakePlatform:
    """What the fake adapters talk to: records every call and every post."""

    posts: dict[str, Published] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    commit_error: AdapterError | None = None
    commit_gate: anyio.Event | None = None  # when set, commit waits for it

    @property
    def commits(self) -> int:
        return self.calls.count("commit")


class FakeAdapter:
    def __init__(self, platform: FakePlatform) -> None:
        self.p = platform

    async def prepare(self, job: JobSpec) -> Prepared:
        self.p.calls.append("prepare")
        return Prepared(payload={"text": job.text}, summary="ready")

    async def screenshot(self, label: str) -> bytes | None:
        return f"PNG {label}".encode()

    async def commit(self, job: JobSpec, prepared: Prepared) -> Published:
        self.p.calls.append("commit")
        if self.p.commit_gate is not None:
            await self.p.commit_gate.wait()
        if self.p.commit_error is not None:
            raise self.p.commit_error
        post = Published(f"p-{len(self.p.posts) + 1}", f"https://fake/{job.platform_key}")
        self.p.posts[job.platform_key] = post
        return post

    async def verify(self, job: JobSpec) -> Published | None:
        self.p.calls.append("verify")
        return self.p.posts.get(job.platform_key)

    async def check_login(self, account: str) -> bool:
        return account != "logged-out"

    async def close(self) -> None:
        self.p.calls.append("close")


class Rig:
    """Plays the coordinator: delivers messages through `session.on_message`, reads the outbox."""

    def __init__(self, runner: JobRunner, clock: FakeClock, platform: FakePlatform) -> None:
        self.runner = runner
        self.clock = clock
        self.platform = platform
        self.state = SessionState()
        self.seen: list[wg.WorkerMessage] = []
        self._out: MemoryObjectSendStream[wg.WorkerMessage] | None = None
        self._in: MemoryObjectReceiveStream[wg.WorkerMessage] | None = None

    async def connect(self, resumed: list[wg.HeldJob] | None = None) -> None:
        self._out, self._in = anyio.create_memory_object_stream[wg.WorkerMessage](1000)
        self.state = SessionState(started_at=self.clock.now(), last_heard=self.clock.now())
        welcome = wg.Welcome(
            session_id="s1",
            heartbeat_interval_ms=5000,
            lease_ttl_ms=int(TTL_S * 1000),
            resumed=resumed or [],
            max_chunk_bytes=4,
            max_asset_bytes=1_000_000,
        )
        await self.deliver(wg.CoordinatorMessage(welcome=welcome))

    def disconnect(self) -> None:
        self.runner.detach()
        assert self._out is not None and self._in is not None
        self._out.close()
        self._in.close()

    def close(self) -> None:
        for stream in (self._out, self._in):
            if stream is not None:
                stream.close()

    async def deliver(self, msg: wg.CoordinatorMessage) -> None:
        self.state, commands = session.on_message(self.state, msg, self.clock.now())
        for command in commands:
            if isinstance(command, session.Welcomed):
                assert self._out is not None
                await self.runner.attach(
                    self._out, self.state.limits, resumed=command.resumed, deadline=command.deadline
                )
            elif isinstance(command, session.Ignored | session.Violation):
                raise AssertionError(command)
            elif not isinstance(command, session.CheckLogin | session.CoordinatorLeaving):
                self.runner.apply(command)

    async def expect(self, kind: str) -> wg.WorkerMessage:
        """The next message of `kind`; the ones before it are kept in `seen`."""
        assert self._in is not None
        with anyio.fail_after(WAIT_S):
            while True:
                msg = await self._in.receive()
                self.seen.append(msg)
                if msg.WhichOneof("msg") == kind:
                    return msg

    def drain(self) -> list[wg.WorkerMessage]:
        """Everything queued now, without waiting."""
        assert self._in is not None
        out: list[wg.WorkerMessage] = []
        while True:
            try:
                out.append(self._in.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                self.seen += out
                return out

    async def until(self, predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(WAIT_S):
            while not predicate():  # noqa: ASYNC110 - a poll with a deadline, on purpose
                await anyio.sleep(0.001)

    def kinds(self, msgs: list[wg.WorkerMessage] | None = None) -> list[str]:
        return [str(m.WhichOneof("msg")) for m in (self.seen if msgs is None else msgs)]

    async def assign(self, job_id: str = "j1", epoch: int = 1, **fields: object) -> wg.Assign:
        defaults: dict[str, object] = {
            "attempt": 1,
            "max_attempts": 3,
            "lease_deadline_unix_ms": int((self.clock.now() + TTL_S) * 1000),
            "platform": "sandbox",
            "account": "acme",
            "text": "hello",
            "platform_key": f"key-{job_id}",
        }
        a = wg.Assign(job_id=job_id, lease_epoch=epoch, **{**defaults, **fields})  # type: ignore[arg-type]
        await self.deliver(wg.CoordinatorMessage(assign=a))
        return a

    async def grant(self, job_id: str = "j1", epoch: int = 1) -> None:
        g = wg.CommitGrant(job_id=job_id, lease_epoch=epoch)
        await self.deliver(wg.CoordinatorMessage(commit_grant=g))

    async def ack_result(self, job_id: str = "j1", epoch: int = 1) -> None:
        ack = wg.ResultAck(job_id=job_id, lease_epoch=epoch, accepted=True)
        await self.deliver(wg.CoordinatorMessage(result_ack=ack))


@asynccontextmanager
async def rig(
    *, slots: int = 2, metrics: WorkerMetrics | None = None, tracer: Tracer | None = None
) -> AsyncIterator[Rig]:
    clock = FakeClock(T0)
    platform = FakePlatform()
    adapters = AdapterRegistry({"sandbox": lambda name: FakeAdapter(platform)})
    runner = JobRunner(
        adapters=adapters,
        clock=clock,
        slots=slots,
        lease_ttl_s=TTL_S,
        metrics=metrics,
        tracer=tracer,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        r = Rig(runner, clock, platform)
        try:
            await r.connect()
            yield r
        finally:
            tg.cancel_scope.cancel()
            r.close()


# ---- the commit permit ----------------------------------------------------------------------


async def test_commit_happens_only_after_the_grant() -> None:
    async with rig() as r:
        await r.assign()
        ack = (await r.expect("ack")).ack
        assert (ack.job_id, ack.lease_epoch) == ("j1", 1)
        request = (await r.expect("commit_request")).commit_request
        assert (request.job_id, request.lease_epoch) == ("j1", 1)
        assert r.platform.calls == ["prepare"]
        assert r.runner.phase("j1") is JobPhase.AWAITING_PERMIT

        await r.grant()
        result = (await r.expect("result")).result
        assert result.success and not result.found_existing
        assert (result.platform_post_id, result.url) == ("p-1", "https://fake/key-j1")
        assert r.platform.commits == 1
        steps = [m.log.step for m in r.seen if m.WhichOneof("msg") == "log"]
        for step in ("prepare", "commit_permit", "commit", "screenshot", "report"):
            assert step in steps
        chunks = [m.screenshot for m in r.seen if m.WhichOneof("msg") == "screenshot"]
        image = b"".join(c.data for c in chunks)
        assert image == b"PNG after_publish"
        assert all(len(c.data) <= 4 for c in chunks)  # Welcome.max_chunk_bytes
        assert chunks[-1].last and chunks[0].sha256 == hashlib.sha256(image).hexdigest()
        assert [c.offset for c in chunks] == list(range(0, len(image), 4))

        assert [h.job_id for h in r.runner.held_jobs()] == ["j1"]  # until the ResultAck
        await r.ack_result()
        assert r.runner.held_jobs() == []


async def test_commit_deny_abandons_without_posting_or_reporting() -> None:
    async with rig() as r:
        await r.assign()
        await r.expect("commit_request")
        deny = wg.CommitDeny(job_id="j1", lease_epoch=1, reason="lease too short")
        await r.deliver(wg.CoordinatorMessage(commit_deny=deny))
        await r.until(lambda: r.runner.phase("j1") is None)
        assert r.platform.commits == 0
        assert "result" not in r.kinds(r.drain())


async def test_grant_for_another_epoch_is_not_a_permit() -> None:
    async with rig() as r:
        await r.assign(epoch=7)
        await r.expect("commit_request")
        await r.grant(epoch=6)
        await r.deliver(wg.CoordinatorMessage(drop=wg.Drop(job_id="j1", lease_epoch=6)))
        assert r.runner.phase("j1") is JobPhase.AWAITING_PERMIT  # a Drop of an older lease too
        assert r.platform.commits == 0
        await r.grant(epoch=7)
        assert (await r.expect("result")).result.success


async def test_verify_first_found_reports_success_without_posting() -> None:
    async with rig() as r:
        r.platform.posts["key-j1"] = Published("p-old", "https://fake/old")
        await r.assign(verify_first=True)
        result = (await r.expect("result")).result
        assert result.success and result.found_existing
        assert result.platform_post_id == "p-old"
        assert "commit_request" not in r.kinds()
        assert r.platform.commits == 0


async def test_verify_first_not_found_posts_normally() -> None:
    async with rig() as r:
        await r.assign(verify_first=True)
        await r.expect("commit_request")
        assert r.platform.calls[:2] == ["verify", "prepare"]
        await r.grant()
        result = (await r.expect("result")).result
        assert result.success and not result.found_existing


# ---- cancel, drop, confirm ------------------------------------------------------------------


async def test_cancel_before_commit_posts_nothing() -> None:
    async with rig() as r:
        await r.assign()
        await r.expect("commit_request")
        cancel = wg.CancelJob(job_id="j1", lease_epoch=1, reason="operator")
        await r.deliver(wg.CoordinatorMessage(cancel=cancel))
        assert r.runner.phase("j1") is None
        await r.grant()  # too late: nobody is waiting for it
        await r.until(lambda: "close" in r.platform.calls)
        assert r.platform.commits == 0
        assert "result" not in r.kinds(r.drain())


async def test_cancel_during_commit_lets_it_finish_and_reports() -> None:
    async with rig() as r:
        r.platform.commit_gate = anyio.Event()
        await r.assign()
        await r.expect("commit_request")
        await r.grant()
        await r.until(lambda: r.runner.phase("j1") is JobPhase.COMMITTING)
        cancel = wg.CancelJob(job_id="j1", lease_epoch=1, reason="operator")
        await r.deliver(wg.CoordinatorMessage(cancel=cancel))
        r.platform.commit_gate.set()
        assert (await r.expect("result")).result.success  # the truth about the platform


async def test_drop_while_committing_aborts_the_call_and_reports_nothing() -> None:
    # The lease is over: a request the platform has not acknowledged must never land later
    # (worker/fence.py); one it has is in doubt, and the coordinator's next attempt looks first.
    async with rig() as r:
        r.platform.commit_gate = anyio.Event()
        await r.assign()
        await r.expect("commit_request")
        await r.grant()
        await r.until(lambda: r.runner.phase("j1") is JobPhase.COMMITTING)
        await r.deliver(wg.CoordinatorMessage(drop=wg.Drop(job_id="j1", lease_epoch=1)))
        assert r.runner.phase("j1") is None
        await r.until(lambda: "close" in r.platform.calls)
        r.platform.commit_gate.set()
        assert r.platform.posts == {}  # the call was stopped where it stood
        assert "result" not in r.kinds(r.drain())


async def test_require_confirm_waits_for_the_operator() -> None:
    async with rig() as r:
        await r.assign(require_confirm=True)
        await r.expect("awaiting_confirm")
        shot = [m.screenshot for m in r.seen if m.WhichOneof("msg") == "screenshot"]
        assert shot and shot[0].label == "before_confirm"
        assert "commit_request" not in r.kinds(r.drain())
        assert r.runner.phase("j1") is JobPhase.AWAITING_CONFIRM
        await r.deliver(wg.CoordinatorMessage(confirm=wg.ConfirmJob(job_id="j1", lease_epoch=1)))
        await r.expect("commit_request")
        await r.grant()
        assert (await r.expect("result")).result.success


# ---- leases ---------------------------------------------------------------------------------


async def test_unrenewed_lease_aborts_the_job_before_commit() -> None:
    async with rig() as r:
        await r.assign()
        await r.expect("commit_request")
        r.clock.advance(TTL_S - 3.5)  # the margin is max(1 s, 20 % of 15 s) = 3 s
        assert r.runner.phase("j1") is JobPhase.AWAITING_PERMIT
        r.clock.advance(1.0)
        await r.until(lambda: r.runner.phase("j1") is None)
        [abort] = r.runner.lease_aborts
        assert (abort.job_id, abort.phase) == ("j1", JobPhase.AWAITING_PERMIT)
        await r.grant()
        await r.until(lambda: "close" in r.platform.calls)
        assert r.platform.commits == 0
        assert "result" not in r.kinds(r.drain())


async def test_heartbeat_acks_keep_the_lease_alive() -> None:
    async with rig() as r:
        await r.assign()
        await r.expect("commit_request")
        for _ in range(4):
            r.clock.advance(10)
            r.state, hb = session.heartbeat(r.state, r.runner.held_jobs(), r.clock.now())
            assert [h.job_id for h in hb.heartbeat.active] == ["j1"]
            deadline_ms = int((r.clock.now() + TTL_S) * 1000)
            ack = wg.HeartbeatAck(seq=hb.heartbeat.seq, lease_deadline_unix_ms=deadline_ms)
            await r.deliver(wg.CoordinatorMessage(heartbeat_ack=ack))
        assert r.runner.lease_aborts == []
        await r.grant()
        assert_too_late_to_commit((await r.expect("result")).result, r.platform)


def assert_too_late_to_commit(result: wg.JobResult, platform: FakePlatform) -> None:
    """A permit that came after the commit's bound (counted from asking) is not used: the
    coordinator may rerun the job from then on, so nothing is sent, and the job says so."""
    assert not result.success and result.not_created and platform.commits == 0
    assert "after the commit's bound" in result.error_message


# ---- reconnects -----------------------------------------------------------------------------


async def test_result_is_repeated_after_reconnect_until_acknowledged() -> None:
    async with rig() as r:
        await r.assign()
        await r.expect("commit_request")
        await r.grant()
        first = (await r.expect("result")).result
        r.disconnect()
        assert r.runner.held_jobs() == [wg.HeldJob(job_id="j1", lease_epoch=1, committed=True)]

        await r.connect(resumed=r.runner.held_jobs())
        again = r.drain()
        assert r.kinds(again)[-1] == "result" and again[-1].result == first
        assert "screenshot" in r.kinds(again)  # its unacknowledged proof goes again too
        await r.ack_result()
        r.disconnect()

        await r.connect(resumed=[])
        assert r.drain() == []
        assert r.runner.held_jobs() == []


async def test_jobs_not_resumed_are_abandoned_silently() -> None:
    async with rig() as r:
        await r.assign()
        await r.expect("commit_request")
        r.disconnect()
        await r.connect(resumed=[])
        assert r.runner.held_jobs() == []
        await r.until(lambda: "close" in r.platform.calls)
        assert r.drain() == []
        assert r.platform.commits == 0


async def test_resumed_jobs_hold_a_ttl_from_the_reconnect() -> None:
    async with rig() as r:
        await r.assign()
        await r.expect("commit_request")
        r.disconnect()
        r.clock.advance(10)  # 2 s before the old deadline's margin
        await r.connect(resumed=r.runner.held_jobs())
        r.clock.advance(10)  # no heartbeat answered yet, still within the new lease
        assert r.runner.phase("j1") is JobPhase.AWAITING_PERMIT
        await r.grant()
        assert_too_late_to_commit((await r.expect("result")).result, r.platform)


async def test_pending_commit_request_is_repeated_after_resume() -> None:
    async with rig() as r:
        await r.assign()
        await r.expect("commit_request")
        r.disconnect()
        await r.connect(resumed=r.runner.held_jobs())
        assert r.kinds(r.drain()) == ["commit_request"]
        await r.grant()
        assert (await r.expect("result")).result.success


# ---- failures -------------------------------------------------------------------------------


async def test_rate_limit_is_reported_with_its_retry_time() -> None:
    async with rig() as r:
        retry_at = T0 + 90
        r.platform.commit_error = RateLimited(
            "slow down", retry_at=retry_at, quota_cap=False, http_status=429
        )
        await r.assign()
        await r.expect("commit_request")
        await r.grant()
        result = (await r.expect("result")).result
        assert not result.success
        assert result.error_class == pb.ERROR_CLASS_RATE_LIMITED
        assert result.retry_at_unix_ms == int(retry_at * 1000)
        assert (result.http_status, result.failed_step) == (429, "commit")
        labels = {m.screenshot.label for m in r.seen if m.WhichOneof("msg") == "screenshot"}
        assert labels == {"on_failure"}


@pytest.mark.parametrize(
    ("body", "not_created"),
    [
        ({"error": "server_error", "message": "busy", "created": False}, True),
        ({"error": "upstream_error", "message": "bad gateway"}, False),
    ],
)
async def test_a_5xx_that_says_nothing_was_created_is_reported_as_such(
    body: dict[str, object], not_created: bool
) -> None:
    error = error_for(httpx.Response(503, json=body), platform="sandbox", now=T0)
    assert isinstance(error, Transient) and error.not_created is not_created
    async with rig() as r:
        r.platform.commit_error = error
        await r.assign()
        await r.expect("commit_request")
        await r.grant()
        result = (await r.expect("result")).result
        assert result.error_class == pb.ERROR_CLASS_TRANSIENT
        assert result.not_created is not_created


async def test_duplicate_that_verification_finds_is_a_success() -> None:
    async with rig() as r:
        r.platform.commit_error = Duplicate("already there", existing_id="p-9", http_status=409)
        r.platform.posts["key-j1"] = Published("p-9", "https://fake/9")
        await r.assign()
        await r.expect("commit_request")
        await r.grant()
        result = (await r.expect("result")).result
        assert result.success and result.found_existing and result.platform_post_id == "p-9"


async def test_duplicate_that_verification_cannot_find_fails_as_duplicate() -> None:
    async with rig() as r:
        r.platform.commit_error = Duplicate("already there", http_status=409)
        await r.assign()
        await r.expect("commit_request")
        await r.grant()
        result = (await r.expect("result")).result
        assert not result.success
        assert result.error_class == pb.ERROR_CLASS_DUPLICATE
        assert result.failed_step == "commit"


# ---- observability -------------------------------------------------------------------------


async def test_a_run_is_one_span_under_the_coordinators_trace_with_step_children() -> None:
    exporter = InMemorySpanExporter()
    provider = make_tracer_provider("postroom-worker", exporter=exporter)
    registry = CollectorRegistry()
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    async with rig(metrics=WorkerMetrics(registry), tracer=provider.get_tracer("test")) as r:
        r.platform.commit_error = RateLimited("slow", retry_at=T0 + 30, quota_cap=True)
        await r.assign(traceparent=f"00-{trace_id}-{parent_id}-01", attempt=2)
        await r.expect("commit_request")
        await r.grant()
        await r.expect("result")
    spans = exporter.get_finished_spans()
    [run] = [s for s in spans if s.name == "postroom.worker.run"]
    assert format(run.context.trace_id, "032x") == trace_id
    assert run.parent is not None and format(run.parent.span_id, "016x") == parent_id
    attrs = dict(run.attributes or {})
    assert (attrs["postroom.platform"], attrs["postroom.account"]) == ("sandbox", "acme")
    assert attrs["postroom.attempt"] == 2
    assert attrs["postroom.error_class"] == "RATE_LIMITED"
    assert (attrs["postroom.retry_after_s"], attrs["postroom.quota_cap"]) == (30.0, True)
    steps = [s for s in spans if s.name == "postroom.worker.step"]
    names = [dict(s.attributes or {})["postroom.step"] for s in steps]
    assert {"prepare", "commit_permit", "commit", "screenshot", "report"} <= set(names)
    assert all(s.parent is not None and s.parent.span_id == run.context.span_id for s in steps)
    labels = {"platform": "sandbox", "step": "commit"}
    assert registry.get_sample_value("postroom_worker_step_duration_seconds_count", labels) == 1


# ---- slots ----------------------------------------------------------------------------------


async def test_never_more_jobs_running_than_slots() -> None:
    async with rig(slots=2) as r:
        for job_id in ("a", "b", "c"):
            await r.assign(job_id)
        await r.expect("commit_request")
        await r.expect("commit_request")
        acked = {m.ack.job_id for m in r.seen if m.WhichOneof("msg") == "ack"}
        assert len(acked) == 2 and r.runner.running_count() == 2
        assert r.runner.phase(({"a", "b", "c"} - acked).pop()) is JobPhase.WAITING_SLOT
        first = sorted(acked)[0]
        await r.grant(first)
        await r.expect("result")
        third = (await r.expect("ack")).ack.job_id
        assert third not in acked
        assert r.runner.running_count() == 2  # the finished one waits for its ResultAck, idle


# ---- the pure session machine ---------------------------------------------------------------


def test_hello_advertises_capabilities_slots_and_held_jobs() -> None:
    config = WorkerConfig(
        coordinator="127.0.0.1:1",
        device_id="w1",
        token="t",
        capabilities=(Capability.parse("sandbox:acme"), Capability.parse("mastodon")),
        concurrency=3,
    )
    held = [wg.HeldJob(job_id="j", lease_epoch=4, committed=True)]
    h = session.hello(config, held).hello
    assert (h.device_id, h.token, h.kind, h.slots) == ("w1", "t", pb.WORKER_KIND_API, 3)
    assert [(c.platform, c.account) for c in h.capabilities] == [
        ("sandbox", "acme"),
        ("mastodon", "*"),
    ]
    assert list(h.held_jobs) == held


def test_anything_before_welcome_is_a_violation() -> None:
    msg = wg.CoordinatorMessage(assign=wg.Assign(job_id="j"))
    _, commands = session.on_message(SessionState(), msg, T0)
    assert isinstance(commands[0], session.Violation)


def test_heartbeat_ack_never_extends_a_lease_past_ttl_from_sending() -> None:
    welcome = wg.Welcome(heartbeat_interval_ms=1000, lease_ttl_ms=3000)
    state, _ = session.on_message(SessionState(), wg.CoordinatorMessage(welcome=welcome), T0)
    state, hb = session.heartbeat(state, [], T0 + 1)
    # A coordinator clock running 60 s fast must not stretch our deadline.
    ack = wg.HeartbeatAck(seq=hb.heartbeat.seq, lease_deadline_unix_ms=int((T0 + 63) * 1000))
    state, [renew] = session.on_message(state, wg.CoordinatorMessage(heartbeat_ack=ack), T0 + 2)
    assert renew == session.Renew(deadline=T0 + 1 + 3)
    assert state.pending == ()


def test_assign_after_goodbye_is_ignored_and_deadline_is_capped() -> None:
    welcome = wg.Welcome(lease_ttl_ms=10_000)
    state, _ = session.on_message(SessionState(), wg.CoordinatorMessage(welcome=welcome), T0)
    far = wg.Assign(job_id="j", lease_epoch=1, lease_deadline_unix_ms=int((T0 + 99) * 1000))
    _, [start] = session.on_message(state, wg.CoordinatorMessage(assign=far), T0)
    assert isinstance(start, session.StartJob) and start.deadline == T0 + 10
    state, bye = session.goodbye(state, "SIGTERM")
    assert bye.goodbye.reason == "SIGTERM"
    _, [ignored] = session.on_message(state, wg.CoordinatorMessage(assign=far), T0)
    assert isinstance(ignored, session.Ignored)


def test_silence_for_a_ttl_means_the_stream_is_dead() -> None:
    welcome = wg.Welcome(lease_ttl_ms=3000)
    state, _ = session.on_message(SessionState(), wg.CoordinatorMessage(welcome=welcome), T0)
    assert not session.is_silent(state, T0 + 3)
    assert session.is_silent(state, T0 + 3.1)


def test_lease_margin_is_1s_or_a_fifth_of_the_ttl_but_at_most_half() -> None:
    assert [lease_margin_s(ttl) for ttl in (15.0, 3.0, 30.0, 1.0)] == [3.0, 1.0, 6.0, 0.5]


def test_reconnect_backoff_doubles_from_200ms_up_to_5s_with_jitter() -> None:
    policy = BackoffPolicy()
    assert [policy.delay_s(n, 1.0) for n in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert policy.delay_s(0, 0.0) == pytest.approx(0.1)
    assert policy.delay_s(40, 0.5) == pytest.approx(3.75)
