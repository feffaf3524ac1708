"""Work that scales with a request never stalls the others: while posts as big as allowed (50
targets, the longest texts, X's weighted count of 100,000 characters) are created, scheduled and
cancelled — and a 10,000-target post is refused — a worker's heartbeat round trip and a GetPost
keep answering promptly. Before the bounds, a 10,000-target post stalled every RPC for a minute.

The coordinator is its own process (as deployed); the probes and the load share this process's
event loop, so the bound (1 s) is generous on purpose: it catches a stall, not a slow machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import grpc
import pytest
from conftest import coordinator_process, publish
from scripted_worker import ScriptedWorker

from coordinator.validation import MAX_TARGETS_PER_POST
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb

PROMPT_S = 1.0
ROUNDS = 6


def _targets(platform: str, n: int, tag: str) -> list[pb.Target]:
    return [pb.Target(platform=platform, account=f"{tag}-{i}") for i in range(n)]


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_the_biggest_posts_do_not_stall_other_rpcs(tmp_path: Path) -> None:
    with coordinator_process(tmp_path) as proc:
        async with (
            grpc.aio.insecure_channel(proc.address) as channel,
            ScriptedWorker(proc.address, "probe", capabilities=[("mastodon", "probe")]) as w,
        ):
            stub = publishing_pb2_grpc.PublishingStub(channel)
            await w.hello()
            probe_post = await publish(stub, text="probe", targets=[("mastodon", "nobody")])
            worst = {"heartbeat": 0.0, "GetPost": 0.0}
            done = anyio.Event()

            async def probe() -> None:
                while not done.is_set():
                    t0 = time.perf_counter()
                    await w.sync()
                    worst["heartbeat"] = max(worst["heartbeat"], time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    await stub.GetPost(pub.GetPostRequest(post_id=probe_post.id))
                    worst["GetPost"] = max(worst["GetPost"], time.perf_counter() - t0)
                    await anyio.sleep(0.01)

            # Built before the clock starts: making 10,000 Target objects takes this process a
            # while, and the probes share its event loop.
            requests = [
                (
                    pub.CreatePostRequest(
                        text="too many", targets=_targets("sandbox", 10_000, f"r{n}")
                    ),
                    pub.CreatePostRequest(
                        text="é" * 100_000, targets=_targets("x", MAX_TARGETS_PER_POST, f"x{n}")
                    ),
                    pub.CreatePostRequest(
                        text="y" * 10_000,
                        targets=_targets("sandbox", MAX_TARGETS_PER_POST, f"s{n}"),
                    ),
                )
                for n in range(ROUNDS)
            ]

            async def load(n: int) -> None:
                too_many, too_long_for_x, biggest = requests[n]
                # Refused at the edge, in no time: far over the bound.
                t0 = time.perf_counter()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.CreatePost(too_many)
                assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert time.perf_counter() - t0 < PROMPT_S
                # The longest text judged for X on every target (X's count is the slow one).
                with pytest.raises(grpc.aio.AioRpcError) as too_long:
                    await stub.CreatePost(too_long_for_x)
                assert too_long.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                # As big as allowed: created, approved, scheduled (50 jobs), cancelled.
                post = await stub.CreatePost(biggest)
                await stub.SubmitPost(pub.SubmitPostRequest(post_id=post.id))
                await stub.ApprovePost(pub.ApprovePostRequest(post_id=post.id, actor="approver"))
                scheduled = await stub.SchedulePost(pub.SchedulePostRequest(post_id=post.id))
                assert len(scheduled.target_states) == MAX_TARGETS_PER_POST
                cancelled = await stub.CancelPost(pub.CancelPostRequest(post_id=post.id))
                assert cancelled.status == pb.POST_STATUS_CANCELLED

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                tg.start_soon(probe)
                async with anyio.create_task_group() as loads:
                    for n in range(ROUNDS):
                        loads.start_soon(load, n)
                done.set()
            took = time.perf_counter() - started
    print(
        f"\n{ROUNDS} rounds of the biggest posts in {took:.1f}s; slowest heartbeat round trip "
        f"{worst['heartbeat'] * 1000:.0f} ms, slowest GetPost {worst['GetPost'] * 1000:.0f} ms"
    )
    assert worst["heartbeat"] < PROMPT_S
    assert worst["GetPost"] < PROMPT_S
