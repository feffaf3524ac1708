"""Lease round trips per second through a real coordinator process.

    python -m bench.lease_roundtrip [--jobs 2000] [--db sqlite|memory] [--slots 256]

Set-up (untimed): a coordinator process starts (SQLite in a temp dir, or memory://), and N posts
with one target each are created, submitted, approved and scheduled through Publishing, in
concurrent batches. Then one worker stream with many slots connects and runs every job's full
round trip as fast as the protocol allows: Assign -> AssignAck + CommitRequest -> CommitGrant ->
JobResult(success) -> ResultAck. The figure is N / (last ResultAck - Hello): each round trip is a
lease, a permit and a result, each committed to the store before the worker hears of it.
Afterwards ListJobs checks that exactly N jobs are SUCCEEDED.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import grpc

from bench import wire
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc, worker_gateway_pb2_grpc
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JOBS = 2000
DEFAULT_SLOTS = 256
SETUP_CONCURRENCY = 64
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
RUN_TIMEOUT_S = 600.0
Db = Literal["sqlite", "memory"]


@dataclass(frozen=True, slots=True)
class RoundTrips:
    jobs: int
    db: str
    slots: int
    leases_per_s: float
    total_s: float
    setup_s: float
    succeeded: int


# ---- the coordinator process ----------------------------------------------------------------


@contextmanager
def coordinator(workdir: Path, db: Db) -> Iterator[str]:
    """A coordinator process on port 0; yields its address; stopped by PID (TERM, then KILL)."""
    ready = workdir / "ready"
    url = f"sqlite:///{workdir / 'bench.db'}" if db == "sqlite" else "memory://"
    cmd = [
        sys.executable, "-m", "coordinator.main", "--listen", "127.0.0.1:0",
        "--metrics-listen", "127.0.0.1:0", "--db", url, "--assets", str(workdir / "assets"),
        "--ready-file", str(ready), "--log-level", "WARNING",
    ]  # fmt: skip
    with open(workdir / "coordinator.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"coordinator exited {proc.returncode}; see {log.name}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"coordinator not ready in {READY_TIMEOUT_S:g}s")
            time.sleep(0.02)
        yield f"127.0.0.1:{ready.read_text().split()[0]}"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


# ---- set-up: N approved, scheduled posts ----------------------------------------------------


async def schedule_posts(stub: publishing_pb2_grpc.PublishingAsyncStub, n: int) -> None:
    limit = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def one(i: int) -> None:
        async with limit:
            post = await stub.CreatePost(
                pub.CreatePostRequest(
                    text=f"round trip {i}",
                    targets=[pb.Target(platform="sandbox", account=f"acct-{i % 50}")],
                )
            )
            await stub.SubmitPost(pub.SubmitPostRequest(post_id=post.id))
            await stub.ApprovePost(pub.ApprovePostRequest(post_id=post.id))
            await stub.SchedulePost(pub.SchedulePostRequest(post_id=post.id))

    await asyncio.gather(*(one(i) for i in range(n)))


async def count_succeeded(stub: publishing_pb2_grpc.PublishingAsyncStub) -> int:
    total, token = 0, ""
    while True:
        page = await stub.ListJobs(
            pub.ListJobsRequest(status=pb.JOB_STATUS_SUCCEEDED, page_size=1000, page_token=token)
        )
        total += len(page.jobs)
        token = page.next_page_token
        if not token:
            return total


# ---- the worker: one stream, every round trip pipelined -------------------------------------


async def run_worker(address: str, n: int, slots: int) -> float:
    """Complete n jobs; returns seconds from Hello to the n-th accepted ResultAck."""
    outbox: asyncio.Queue[wg.WorkerMessage | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[wg.WorkerMessage]:
        while (msg := await outbox.get()) is not None:
            yield msg

    hello = wg.Hello(
        device_id="bench-roundtrip",
        kind=pb.WORKER_KIND_API,
        capabilities=[pb.Target(platform="sandbox", account="*")],
        slots=slots,
        version="bench",
    )
    done = 0
    held: dict[str, int] = {}  # job id -> lease epoch, reported in heartbeats
    heartbeat: asyncio.Task[None] | None = None
    async with grpc.aio.insecure_channel(address) as channel:
        stub = worker_gateway_pb2_grpc.WorkerGatewayStub(channel)
        started = time.perf_counter()
        outbox.put_nowait(wg.WorkerMessage(hello=hello))
        call = stub.Connect(requests())
        try:
            async for msg in call:
                kind = msg.WhichOneof("msg")
                if kind == "assign":
                    held[msg.assign.job_id] = msg.assign.lease_epoch
                    # A no-op job prepares nothing: its commit request follows the ack at once.
                    outbox.put_nowait(wire.ack(msg.assign))
                    outbox.put_nowait(wire.commit_request(msg.assign))
                elif kind == "commit_grant":
                    outbox.put_nowait(wire.success(msg.commit_grant))
                elif kind == "result_ack":
                    held.pop(msg.result_ack.job_id, None)
                    if not msg.result_ack.accepted:
                        raise RuntimeError(f"result refused: {msg.result_ack}")
                    done += 1
                    if done == n:
                        elapsed = time.perf_counter() - started
                        outbox.put_nowait(wg.WorkerMessage(goodbye=wg.Goodbye(reason="done")))
                        outbox.put_nowait(None)
                        return elapsed
                elif kind == "welcome":
                    interval = msg.welcome.heartbeat_interval_ms / 1000
                    heartbeat = asyncio.create_task(_heartbeats(outbox, interval, held))
                elif kind in ("commit_deny", "drop", "cancel"):
                    raise RuntimeError(f"unexpected {kind}: {msg}")
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            call.cancel()
    raise RuntimeError(f"stream ended after {done} of {n} round trips")


async def _heartbeats(
    outbox: asyncio.Queue[wg.WorkerMessage | None], interval_s: float, held: dict[str, int]
) -> None:
    """Heartbeats that report what is held, as a real worker's do."""
    seq = 0
    while True:
        await asyncio.sleep(interval_s)
        seq += 1
        active = [wg.HeldJob(job_id=j, lease_epoch=e) for j, e in held.items()]
        outbox.put_nowait(wg.WorkerMessage(heartbeat=wg.Heartbeat(seq=seq, active=active)))


# ---- entry point ----------------------------------------------------------------------------


async def measure(n: int, db: Db, slots: int) -> RoundTrips:
    with (
        tempfile.TemporaryDirectory(prefix="postroom-bench-") as tmp,
        coordinator(Path(tmp), db) as address,
    ):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = publishing_pb2_grpc.PublishingStub(channel)
            t0 = time.perf_counter()
            await schedule_posts(stub, n)
            setup_s = time.perf_counter() - t0
            async with asyncio.timeout(RUN_TIMEOUT_S):
                total_s = await run_worker(address, n, slots)
            succeeded = await count_succeeded(stub)
    if succeeded != n:
        raise RuntimeError(f"{succeeded} jobs SUCCEEDED, expected {n}")
    return RoundTrips(n, db, slots, n / total_s, total_s, setup_s, succeeded)


def main(argv: list[str] | None = None) -> RoundTrips:
    p = argparse.ArgumentParser(prog="python -m bench.lease_roundtrip", description=__doc__)
    p.add_argument(
        "--jobs", type=int, default=DEFAULT_JOBS, help="round trips (default %(default)s)"
    )
    p.add_argument("--db", choices=["sqlite", "memory"], default="sqlite")
    p.add_argument("--slots", type=int, default=DEFAULT_SLOTS, help="worker slots (%(default)s)")
    a = p.parse_args(argv)
    if a.jobs < 1 or a.slots < 1:
        p.error("--jobs and --slots must be at least 1")
    result = asyncio.run(measure(a.jobs, a.db, a.slots))
    print(
        f"lease round trips: {result.jobs} in {result.total_s:.2f} s = "
        f"{result.leases_per_s:,.0f} leases/s (db {result.db}, {result.slots} slots; "
        f"set-up {result.setup_s:.1f} s; {result.succeeded} SUCCEEDED)"
    )
    print(json.dumps(asdict(result)))
    return result


if __name__ == "__main__":
    main()
