"""Item 5: a 1 MiB screenshot from the worker to a stored asset.

A lean session in this process holds a job (acked, RUNNING) and uploads 1 MiB of fresh random
bytes (so every upload really writes: assets are content-addressed) as ScreenshotChunks of
256 KiB (the coordinator's max_chunk_bytes). Time = first chunk handed to gRPC -> ScreenshotAck
read; the coordinator acks after checking the sha256 and writing the file (fsync + rename).
Several uploads per run; a run's figure is their median (max kept in the details).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from bench.common import Context, Figure, Publisher, cluster, say
from bench.wire import LeanSession, ack
from postroom.v1 import worker_gateway_pb2 as wg

SIZE = 1024 * 1024
CHUNK = 256 * 1024
TARGET_MS = 50.0


def one_run(workdir: Path, uploads: int) -> dict[str, Any]:
    with cluster(workdir) as c:
        times_ms = asyncio.run(_drive(c.coordinator_address, uploads))
    files = [p for p in (workdir / "assets").rglob("*") if p.is_file()]
    return {
        "uploads": uploads,
        "size_bytes": SIZE,
        "chunk_bytes": CHUNK,
        "median_ms": round(statistics.median(times_ms), 2),
        "min_ms": round(min(times_ms), 2),
        "max_ms": round(max(times_ms), 2),
        "all_ms": [round(t, 2) for t in times_ms],
        "asset_files": len(files),
    }


class _Shooter:
    """A lean session that holds one job and uploads screenshots for it."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.assigned: asyncio.Future[wg.Assign] = asyncio.get_running_loop().create_future()
        self.acks: dict[str, asyncio.Future[tuple[wg.ScreenshotAck, float]]] = {}
        self.session = LeanSession(channel, "shooter", slots=1, on_message=self._on_message)

    def _on_message(self, s: LeanSession, msg: wg.CoordinatorMessage, at: float) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "assign" and not self.assigned.done():
            s.send(ack(msg.assign))
            self.assigned.set_result(msg.assign)
        elif kind == "screenshot_ack":
            fut = self.acks.get(msg.screenshot_ack.upload_id)
            if fut is not None and not fut.done():
                fut.set_result((msg.screenshot_ack, at))

    async def upload(self, assign: wg.Assign) -> float:
        """One fresh 1 MiB upload; milliseconds from its first chunk sent to its ack read."""
        data = os.urandom(SIZE)
        digest = hashlib.sha256(data).hexdigest()
        upload_id = uuid.uuid4().hex
        fut: asyncio.Future[tuple[wg.ScreenshotAck, float]]
        fut = self.acks[upload_id] = asyncio.get_running_loop().create_future()
        chunks = [
            wg.ScreenshotChunk(
                job_id=assign.job_id,
                lease_epoch=assign.lease_epoch,
                upload_id=upload_id,
                label="after_publish",
                content_type="image/png",
                sha256=digest,
                total_size=SIZE,
                offset=off,
                data=data[off : off + CHUNK],
                last=off + CHUNK >= SIZE,
            )
            for off in range(0, SIZE, CHUNK)
        ]
        started = time.time()
        for chunk in chunks:
            self.session.send(wg.WorkerMessage(screenshot=chunk))
        result, at = await asyncio.wait_for(fut, 10)
        if not result.ok:
            raise RuntimeError(f"screenshot refused: {result.error}")
        if result.asset_id != digest:
            raise RuntimeError("the stored asset id is not the upload's sha256")
        return (at - started) * 1000


async def _drive(address: str, uploads: int) -> list[float]:
    channel = grpc.aio.insecure_channel(
        address, options=[("grpc.max_send_message_length", 4 * 1024 * 1024)]
    )
    shooter = _Shooter(channel)
    await shooter.session.start()
    pubr = Publisher(address)
    (post_id,) = await pubr.approved_posts(1, ["sandbox:shots"], text="screenshot")
    await pubr.schedule([post_id], lambda _i: None)
    await pubr.close()
    assign = await asyncio.wait_for(shooter.assigned, 10)
    await asyncio.sleep(0.2)  # the ack is committed: the job is RUNNING
    times_ms: list[float] = []
    for _ in range(uploads):
        times_ms.append(await shooter.upload(assign))
        await asyncio.sleep(0.05)
    await shooter.session.close()
    await channel.close(None)
    return times_ms


def run(ctx: Context) -> list[Figure]:
    uploads = 5 if ctx.quick else 20
    fig = Figure(
        "5",
        "screenshot_1mib",
        "1 MiB screenshot, worker -> stored asset (4 x 256 KiB chunks, fsync)",
        "ms",
        "<=",
        TARGET_MS,
        decimals=1,
    )
    for r in range(ctx.runs):
        res = one_run(ctx.workdir(f"screenshot-{r}"), uploads)
        say(f"  item 5 run {r + 1}: median {res['median_ms']} ms, max {res['max_ms']} ms")
        fig.add(res["median_ms"], res)
    return [fig]
