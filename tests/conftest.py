"""Shared test fixtures: a coordinator in-process or as a real process, and post helpers.

In-process (fast, virtual time)::

    async with coordinator_server(tmp_path) as (address, coordinator, clock):
        clock.advance(30)       # FakeClock: wakes the actor's timer, leases expire

As a process (restarts, SIGKILL, grpcurl)::

    with coordinator_process(tmp_path, db=tmp_path / "db.sqlite") as proc:
        proc.address            # "127.0.0.1:PORT"
        proc.kill()             # SIGKILL; proc.restart() starts it again on the same database

`publish(stub, ...)` creates, submits, approves and schedules a post in one call.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import anyio
import grpc
import pytest
from scripted_worker import ScriptedWorker

from coordinator import wire
from coordinator.actor import Coordinator, CoordinatorConfig
from coordinator.assets import AssetStore
from coordinator.content_rules import TextLimits
from coordinator.gateway import WorkerGatewayService
from coordinator.leasing.core import DEFAULT_CONFIRM_TIMEOUT_S, LeaseConfig
from coordinator.main import GRPC_SERVER_OPTIONS
from coordinator.publishing import PublishingService
from coordinator.store import open_store
from coordinator.worker_input import GatewayLimits
from postroom.clock import FakeClock, SystemClock
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

REPO_ROOT = Path(__file__).resolve().parent.parent
PROCESS_READY_TIMEOUT_S = 20.0
PROCESS_STOP_TIMEOUT_S = 10.0
TTL_S = 3.0  # coordinator_server's default lease TTL (heartbeat 1 s)


@pytest.fixture
def anyio_backend() -> str:
    """grpc.aio needs asyncio: never run these tests on trio."""
    return "asyncio"


# ---- in-process coordinator -----------------------------------------------------------------


class InProcess(NamedTuple):
    address: str
    coordinator: Coordinator
    clock: FakeClock | SystemClock

    def advance(self, seconds: float) -> None:
        """Move virtual time (fake_clock=True only); wakes the actor's timer."""
        assert isinstance(self.clock, FakeClock), "coordinator_server(fake_clock=False)"
        self.clock.advance(seconds)


@contextlib.asynccontextmanager
async def coordinator_server(
    tmp_path: Path,
    *,
    db: str = "memory://",
    fake_clock: bool = True,
    heartbeat_interval_s: float = 1.0,
    lease_ttl_s: float = TTL_S,
    restart_grace_s: float = 3.0,
    text_limits: TextLimits | None = None,
    gateway_limits: GatewayLimits | None = None,
    confirm_timeout_s: float = DEFAULT_CONFIRM_TIMEOUT_S,
) -> AsyncIterator[InProcess]:
    """Run the coordinator as `coordinator.main.serve` wires it, on 127.0.0.1 port 0.

    With `fake_clock` (the default) the coordinator's time is a FakeClock that only moves on
    `clock.advance(s)`, so heartbeats are never missed unless a test advances time. Assets go to
    `tmp_path / "assets"`. `text_limits` are what `--text-limit` flags would give (e.g. from
    `coordinator.main.parse_args([...]).text_limits`); `gateway_limits` the worker streams' limits
    (message rate, unfinished upload bytes). The server and the actor are stopped on exit.
    """
    store = open_store(db)
    await store.open()
    clock = FakeClock() if fake_clock else SystemClock()
    lease = LeaseConfig(
        heartbeat_interval_s=heartbeat_interval_s,
        lease_ttl_s=lease_ttl_s,
        restart_grace_s=restart_grace_s,
        commit_min_left_s=min(2.0, lease_ttl_s / 3),
        confirm_timeout_s=confirm_timeout_s,
    )
    coordinator = Coordinator(store=store, clock=clock, config=CoordinatorConfig(lease=lease))
    await coordinator.load()
    assets = AssetStore(tmp_path / "assets")
    server = grpc.aio.server(options=GRPC_SERVER_OPTIONS)
    wire.add_publishing(server, PublishingService(coordinator, assets, text_limits=text_limits))
    gateway = WorkerGatewayService(coordinator, assets, limits=gateway_limits)
    wire.add_worker_gateway(server, gateway)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(coordinator.run)
            try:
                yield InProcess(f"127.0.0.1:{port}", coordinator, clock)
            finally:
                await coordinator.stop()
                await server.stop(None)
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()


# ---- coordinator as a process ---------------------------------------------------------------


class CoordinatorProcess:
    """`python -m coordinator.main` on port 0 with a ready file; stopped by its PID only."""

    def __init__(self, workdir: Path, *, db: Path, args: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.db = db
        self.args = list(args)
        self.log_path = workdir / "coordinator.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.grpc_port = 0
        self.metrics_port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> None:
        """Start it and wait (polling, with a deadline) until it wrote its ready file."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        ready = self.workdir / "ready"
        ready.unlink(missing_ok=True)
        cmd = [
            sys.executable, "-m", "coordinator.main",
            "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--db", f"sqlite:///{self.db}", "--assets", str(self.workdir / "assets"),
            "--ready-file", str(ready), *self.args,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + PROCESS_READY_TIMEOUT_S
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"coordinator exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"coordinator not ready in {PROCESS_READY_TIMEOUT_S}s")
            time.sleep(0.02)
        grpc_port, metrics_port = ready.read_text().split()
        self.grpc_port, self.metrics_port = int(grpc_port), int(metrics_port)

    def stop(self, timeout_s: float = PROCESS_STOP_TIMEOUT_S) -> int:
        """SIGTERM (drain), then SIGKILL after `timeout_s`; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def kill(self) -> int:
        """SIGKILL, as a crash looks; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(PROCESS_STOP_TIMEOUT_S)

    def restart(self) -> None:
        """Start again on the same database (after stop() or kill())."""
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def coordinator_process(
    workdir: Path, *, db: Path | None = None, args: Sequence[str] = ()
) -> Iterator[CoordinatorProcess]:
    """A started CoordinatorProcess (SQLite at `db`, default workdir/db.sqlite), stopped on exit.
    In async tests start it with `await anyio.to_thread.run_sync(...)` if the loop must not
    block; `args` are extra flags, e.g. ["--heartbeat-interval", "0.5"]."""
    proc = CoordinatorProcess(workdir, db=db or workdir / "db.sqlite", args=args)
    proc.start()
    try:
        yield proc
    finally:
        code = proc.stop()
        if code not in (0, -signal.SIGKILL):
            raise AssertionError(f"coordinator exited {code}:\n{proc.log()}")


# ---- operator helpers -----------------------------------------------------------------------


async def publish(
    stub: publishing_pb2_grpc.PublishingAsyncStub,
    *,
    text: str = "hello from the tests",
    targets: Sequence[tuple[str, str]] = (("sandbox", "acme"),),
    scheduled_at: str = "",
    max_attempts: int = 0,
) -> pb.Post:
    """Create, submit, approve and schedule a post; returns it (with its target_states/jobs)."""
    post = await stub.CreatePost(
        pub.CreatePostRequest(
            text=text,
            targets=[pb.Target(platform=p, account=a) for p, a in targets],
            scheduled_at=scheduled_at,
            max_attempts=max_attempts,
        )
    )
    await stub.SubmitPost(pub.SubmitPostRequest(post_id=post.id))
    await stub.ApprovePost(pub.ApprovePostRequest(post_id=post.id, actor="approver"))
    scheduled: pb.Post = await stub.SchedulePost(pub.SchedulePostRequest(post_id=post.id))
    return scheduled


def job_ids(post: pb.Post) -> list[str]:
    return [t.job_id for t in post.target_states]


# ---- scripted-worker helpers ----------------------------------------------------------------


async def advance_alive(env: InProcess, seconds: float, *workers: ScriptedWorker) -> None:
    """Move virtual time in steps shorter than the TTL, heartbeating the workers in between."""
    while seconds > 0:
        step = min(seconds, TTL_S / 2)
        env.advance(step)
        seconds -= step
        for w in workers:
            await w.heartbeat()


async def run_to_success(w: ScriptedWorker, a: wg.Assign | wg.HeldJob, n: str = "1") -> None:
    await w.ack(a)
    grant = await w.commit(a)
    assert isinstance(grant, wg.CommitGrant), grant
    ack = await w.succeed(a, f"sb-{n}", f"https://sandbox.test/acme/{n}")
    assert ack.accepted, ack.reason
