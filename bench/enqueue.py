"""Item 10: enqueue rate, one client, sequential calls (the peer harness's enqueue measure).

A job here is a post with one target that is approved and due now, as the peer harness counts
it. Against a real coordinator process on SQLite (product defaults), over one grpc.aio channel,
each call awaited before the next:

- 10a four calls a post (CreatePost, SubmitPost, ApprovePost, SchedulePost): the flow before
  CreatePost could approve and schedule;
- 10b one call a post (CreatePost with approve and schedule): one commit;
- 10c CreatePosts, 100 posts a call: one commit per 100;
- 10d one call a post as 10b, through the product's synchronous `postroom.Client`
  (`create_post(approve=True, schedule=True)`): what a sequential Python script calls; grpc's
  sync stack costs the client about half the CPU per call of grpc.aio's.

The target (issue 13): at least the best peer's enqueue rate of the peer run (Celery: 2,682
jobs/s on 2026-11-29), for the one-call figures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc

from bench.common import Context, Figure, Op, cluster, count_jobs, say
from postroom.client.sync import Client
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb

BEST_PEER_ENQUEUE_PER_S = 2682.0  # ../shared/bench-peers/RESULTS.md, Celery pf1, 2026-11-29
BATCH = 100
TARGET = pb.Target(platform="sandbox", account="bench")

if TYPE_CHECKING:  # the async stub type exists only in the .pyi
    Stub = publishing_pb2_grpc.PublishingAsyncStub


def _request(i: int, *, ready: bool) -> pub.CreatePostRequest:
    return pub.CreatePostRequest(
        text=f"enqueue {i}", targets=[TARGET], actor="bench", approve=ready, schedule=ready
    )


async def _four_calls(stub: Stub, i: int) -> int:
    post = await stub.CreatePost(_request(i, ready=False))
    await stub.SubmitPost(pub.SubmitPostRequest(post_id=post.id, actor="bench"))
    await stub.ApprovePost(
        pub.ApprovePostRequest(post_id=post.id, actor="bench", content_hash=post.content_hash)
    )
    await stub.SchedulePost(pub.SchedulePostRequest(post_id=post.id, actor="bench"))
    return 1


async def _one_call(stub: Stub, i: int) -> int:
    await stub.CreatePost(_request(i, ready=True))
    return 1


async def _batch(stub: Stub, i: int) -> int:
    made = await stub.CreatePosts(
        pub.CreatePostsRequest(posts=[_request(i + k, ready=True) for k in range(BATCH)])
    )
    return len(made.posts)


WAYS: dict[str, tuple[str, Callable[[Stub, int], Awaitable[int]]]] = {
    "10a": ("4 calls a post (create, submit, approve, schedule)", _four_calls),
    "10b": ("1 call a post (CreatePost approve+schedule)", _one_call),
    "10c": (f"CreatePosts, {BATCH} posts a call", _batch),
}
SYNC_WAY = ("10d", "1 call a post, postroom.Client (sync)")
SYNC_TARGET = "sandbox:bench"


def measure_sync(address: str, n: int) -> float:
    """10d: posts made ready per second through the synchronous product client."""
    with Client(address, token="", actor="bench") as client:

        def one(i: int) -> None:
            client.create_post(
                text=f"enqueue {i}", targets=[SYNC_TARGET], approve=True, schedule=True
            )

        for i in range(20):  # warm-up, as measure()
            one(-1 - i)
        t0 = time.perf_counter()
        for i in range(n):
            one(i)
        return n / (time.perf_counter() - t0)


async def measure(address: str, way: str, n: int) -> float:
    """Posts made ready per second, sequentially (after a short warm-up)."""
    _, fn = WAYS[way]
    async with grpc.aio.insecure_channel(address) as channel:
        stub: Stub = publishing_pb2_grpc.PublishingStub(channel)
        for i in range(20):  # warm-up: connection, first statements, caches
            await _one_call(stub, -1 - i)
        made, t0 = 0, time.perf_counter()
        while made < n:
            made += await fn(stub, made)
        return made / (time.perf_counter() - t0)


def run(ctx: Context) -> list[Figure]:
    n = 300 if ctx.quick else 2000
    figures = []
    ways = {way: name for way, (name, _) in WAYS.items()} | {SYNC_WAY[0]: SYNC_WAY[1]}
    for way, name in ways.items():
        target = BEST_PEER_ENQUEUE_PER_S if way in ("10b", "10d") else None
        label = f"enqueue, 1 client, sequential: {name}"
        note = "best peer of the peer run (Celery)" if target else ""
        op: Op = ">=" if target else ""
        figures.append(Figure(way, f"enqueue_{way}", label, "jobs/s", op, target, note, 0))
    for r in range(ctx.runs):
        with cluster(ctx.workdir(f"enqueue-{r}")) as c:
            for fig in figures:
                if fig.item == SYNC_WAY[0]:
                    rate = measure_sync(c.coordinator_address, n)
                else:
                    rate = asyncio.run(measure(c.coordinator_address, fig.item, n))
                say(f"  item {fig.item} run {r + 1}: {rate:,.0f} jobs/s")
                fig.add(rate, {"posts": n})
            queued = count_jobs(c.db_url, "QUEUED")
            assert queued >= 4 * n, f"{queued} jobs queued, expected at least {4 * n}"
    return figures
