"""Lean worker sessions for the benchmarks: the real `WorkerGateway.Connect` protocol on grpc.aio,
with a wall-clock timestamp on every message read and no bookkeeping beyond that.

(tests/scripted_worker.py is the step-by-step tool for tests; this is the cheap one for thousands
of sessions and precise timings.) In-process use::

    session = LeanSession(channel, "dev-1", slots=4, on_message=handler)
    welcome = await session.start()
    session.send(ack(assign))

As a child process (`python -m bench.wire MODE ...`; prints `ready` once every session has its
Welcome, runs until SIGTERM, prints `done {json}`):

    complete  sessions that finish every job at once: AssignAck + CommitRequest on Assign,
              a successful JobResult on CommitGrant (the protocol's minimum per job)
    hold      one session that acks its jobs (with --commit also takes the commit permit) and
              then sits on them, heartbeating; prints `held JOB_ID EPOCH UNIX_TIME` per job
    idle      sessions that only heartbeat (each on its own channel, as separate workers are)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence

import grpc

from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg
from postroom.v1 import worker_gateway_pb2_grpc

Handler = Callable[["LeanSession", wg.CoordinatorMessage, float], None]
JobRef = wg.Assign | wg.CommitGrant


def ack(a: JobRef) -> wg.WorkerMessage:
    return wg.WorkerMessage(ack=wg.AssignAck(job_id=a.job_id, lease_epoch=a.lease_epoch))


def commit_request(a: JobRef) -> wg.WorkerMessage:
    req = wg.CommitRequest(job_id=a.job_id, lease_epoch=a.lease_epoch)
    return wg.WorkerMessage(commit_request=req)


def success(a: JobRef) -> wg.WorkerMessage:
    result = wg.JobResult(
        job_id=a.job_id,
        lease_epoch=a.lease_epoch,
        success=True,
        platform_post_id=f"p-{a.job_id}",
        url=f"https://bench.invalid/{a.job_id}",
    )
    return wg.WorkerMessage(result=result)


class LeanSession:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        device_id: str,
        *,
        capabilities: Sequence[tuple[str, str]] = (("sandbox", "*"),),
        slots: int = 1,
        on_message: Handler | None = None,
        heartbeat_phase: float = 0.0,
    ) -> None:
        self.channel = channel
        self.device_id = device_id
        self.capabilities = list(capabilities)
        self.slots = slots
        self.on_message = on_message
        self.heartbeat_phase = heartbeat_phase  # fraction of an interval before the first beat
        self.welcome: wg.Welcome | None = None
        self.ended = asyncio.Event()
        self.end_status = ""
        self.heartbeats = 0
        self.held: dict[str, int] = {}  # job id -> lease epoch
        self._outq: asyncio.Queue[wg.WorkerMessage | None] = asyncio.Queue()
        self._welcomed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._call: grpc.aio.StreamStreamCall[wg.WorkerMessage, wg.CoordinatorMessage] | None = None

    async def _requests(self) -> AsyncIterator[wg.WorkerMessage]:
        while True:
            msg = await self._outq.get()
            if msg is None:
                return
            yield msg

    def send(self, msg: wg.WorkerMessage) -> None:
        self._outq.put_nowait(msg)

    async def start(self, timeout_s: float = 30.0) -> wg.Welcome:
        stub = worker_gateway_pb2_grpc.WorkerGatewayStub(self.channel)
        self._call = stub.Connect(self._requests())
        self._tasks.append(asyncio.create_task(self._read()))
        hello = wg.Hello(
            device_id=self.device_id,
            kind=pb.WORKER_KIND_API,
            capabilities=[pb.Target(platform=p, account=a) for p, a in self.capabilities],
            slots=self.slots,
            version="bench-lean",
        )
        self.send(wg.WorkerMessage(hello=hello))
        async with asyncio.timeout(timeout_s):
            await self._welcomed.wait()
        assert self.welcome is not None
        self._tasks.append(asyncio.create_task(self._beat()))
        return self.welcome

    async def _read(self) -> None:
        assert self._call is not None
        try:
            async for msg in self._call:
                at = time.time()
                if msg.HasField("welcome"):
                    self.welcome = msg.welcome
                    self._welcomed.set()
                self._track(msg)
                if self.on_message is not None:
                    self.on_message(self, msg, at)
            self.end_status = "EOF"
        except grpc.aio.AioRpcError as exc:
            self.end_status = f"{exc.code().name}: {exc.details()}"
        except asyncio.CancelledError:
            self.end_status = "cancelled"
        finally:
            self.ended.set()

    def _track(self, msg: wg.CoordinatorMessage) -> None:
        """What this session holds, reported in heartbeats as a real worker does (the
        coordinator recovers a lease its holder no longer reports)."""
        kind = msg.WhichOneof("msg")
        if kind == "assign":
            self.held[msg.assign.job_id] = msg.assign.lease_epoch
        elif kind in ("result_ack", "drop", "cancel"):
            ref = getattr(msg, kind)
            if self.held.get(ref.job_id) == ref.lease_epoch:
                del self.held[ref.job_id]

    async def _beat(self) -> None:
        assert self.welcome is not None
        interval = self.welcome.heartbeat_interval_ms / 1000
        await asyncio.sleep(interval * self.heartbeat_phase)
        while not self.ended.is_set():
            self.heartbeats += 1
            active = [wg.HeldJob(job_id=j, lease_epoch=e) for j, e in self.held.items()]
            beat = wg.Heartbeat(seq=self.heartbeats, active=active)
            self.send(wg.WorkerMessage(heartbeat=beat))
            await asyncio.sleep(interval)

    async def close(self, *, goodbye: bool = True) -> None:
        """Goodbye and end our side (a drain), or with goodbye=False just cancel (a crash)."""
        if goodbye and self._call is not None and not self.ended.is_set():
            self.send(wg.WorkerMessage(goodbye=wg.Goodbye(reason="bench done")))
            self._outq.put_nowait(None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.ended.wait()
        if self._call is not None:
            self._call.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class Completer:
    """Finishes every job as soon as the protocol lets it; counts results."""

    def __init__(self) -> None:
        self.assigned = 0
        self.completed = 0
        self.refused = 0
        self.first_assign = 0.0
        self.last_result_ack = 0.0
        self.assign_times: dict[str, float] = {}  # post_id -> when the Assign arrived
        self.record_posts = False

    def __call__(self, s: LeanSession, msg: wg.CoordinatorMessage, at: float) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "assign":
            self.assigned += 1
            self.first_assign = self.first_assign or at
            if self.record_posts:
                self.assign_times[msg.assign.post_id] = at
            s.send(ack(msg.assign))
            s.send(commit_request(msg.assign))
        elif kind == "commit_grant":
            s.send(success(msg.commit_grant))
        elif kind == "result_ack":
            if msg.result_ack.accepted:
                self.completed += 1
            else:
                self.refused += 1
            self.last_result_ack = at
        elif kind in ("commit_deny", "drop", "cancel"):
            self.refused += 1


# ---- child-process modes ------------------------------------------------------------------


async def _until_term() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def _complete(a: argparse.Namespace) -> dict[str, object]:
    channel = grpc.aio.insecure_channel(a.address)
    completer = Completer()
    sessions = [
        LeanSession(channel, f"{a.prefix}{i}", slots=a.slots, on_message=completer)
        for i in range(a.sessions)
    ]
    for s in sessions:
        await s.start()
    print("ready", flush=True)
    await _until_term()
    for s in sessions:
        await s.close()
    await channel.close(None)
    return {
        "assigned": completer.assigned,
        "completed": completer.completed,
        "refused": completer.refused,
    }


async def _hold(a: argparse.Namespace) -> dict[str, object]:
    channel = grpc.aio.insecure_channel(a.address)

    def on_message(s: LeanSession, msg: wg.CoordinatorMessage, at: float) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "assign":
            s.send(ack(msg.assign))
            if a.commit:
                s.send(commit_request(msg.assign))
            else:
                print(f"held {msg.assign.job_id} {msg.assign.lease_epoch} {at:.6f}", flush=True)
        elif kind == "commit_grant":
            grant = msg.commit_grant
            print(f"held {grant.job_id} {grant.lease_epoch} {at:.6f}", flush=True)

    session = LeanSession(channel, a.device_id, slots=a.slots, on_message=on_message)
    await session.start()
    print("ready", flush=True)
    await _until_term()
    await session.close()
    await channel.close(None)
    return {"heartbeats": session.heartbeats}


async def _idle(a: argparse.Namespace) -> dict[str, object]:
    rng = random.Random(a.prefix)
    channels = [grpc.aio.insecure_channel(a.address) for _ in range(a.sessions)]
    sessions = [
        LeanSession(ch, f"{a.prefix}{i}", slots=1, heartbeat_phase=rng.random())
        for i, ch in enumerate(channels)
    ]
    sem = asyncio.Semaphore(50)

    async def start(s: LeanSession) -> None:
        async with sem:
            await s.start(timeout_s=60)

    await asyncio.gather(*(start(s) for s in sessions))
    print(f"ready {len(sessions)}", flush=True)
    await _until_term()
    ended = sum(s.ended.is_set() for s in sessions)
    beats = sum(s.heartbeats for s in sessions)
    for s in sessions:
        await s.close(goodbye=False)
    for ch in channels:
        await ch.close(None)
    return {"sessions": len(sessions), "ended_early": ended, "heartbeats": beats}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wire", description=__doc__)
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("complete")
    c.add_argument("--address", required=True)
    c.add_argument("--prefix", default="lean-")
    c.add_argument("--sessions", type=int, default=1)
    c.add_argument("--slots", type=int, default=64)
    h = sub.add_parser("hold")
    h.add_argument("--address", required=True)
    h.add_argument("--device-id", required=True)
    h.add_argument("--slots", type=int, default=1)
    h.add_argument("--commit", action="store_true", help="take the commit permit, then sit")
    i = sub.add_parser("idle")
    i.add_argument("--address", required=True)
    i.add_argument("--prefix", default="idle-")
    i.add_argument("--sessions", type=int, default=100)
    a = p.parse_args(argv)
    modes = {"complete": _complete, "hold": _hold, "idle": _idle}
    summary = asyncio.run(modes[a.mode](a))
    print("done " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
