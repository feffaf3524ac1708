"""Screenshots stream to disk: a coordinator process receiving four 16 MiB screenshots at once,
one per worker session, grows its resident memory by a few MiB, not by the 64 MiB (or, with a
copy for hashing, 128 MiB) it would take to hold them.

The peak is the kernel's (VmHWM in /proc/PID/status), reset (`5` to /proc/PID/clear_refs) just
before the uploads, so it covers exactly them. The stated bound: the peak during the uploads is
at most MEMORY_BOUND_MIB above the resident size before them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import grpc
import pytest
from conftest import coordinator_process, job_ids, publish
from scripted_worker import ScriptedWorker

from coordinator.leasing.state import DEFAULT_MAX_ASSET_BYTES, DEFAULT_MAX_CHUNK_BYTES
from postroom.v1 import publishing_pb2_grpc

SESSIONS = 4
SCREENSHOT_BYTES = DEFAULT_MAX_ASSET_BYTES  # 16 MiB, the largest accepted
# Per session the coordinator holds gRPC's 1 MiB receive window, one message being read (at most
# 1 MiB) and one chunk being written (256 KiB): ~2.5 MiB; 16 MiB for four leaves allocator slack.
MEMORY_BOUND_MIB = 16


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def _upload_round(address: str, tag: str, size: int) -> list[str]:
    """SESSIONS workers, each holding a job of its own, upload one screenshot each, at once."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = publishing_pb2_grpc.PublishingStub(channel)
        workers = [
            ScriptedWorker(address, f"{tag}-{n}", capabilities=[("sandbox", f"{tag}-{n}")])
            for n in range(SESSIONS)
        ]
        for w in workers:
            await w.__aenter__()
        try:
            assigns = []
            for n, w in enumerate(workers):
                await w.hello()
                post = await publish(stub, text=f"{tag} {n}", targets=[("sandbox", f"{tag}-{n}")])
                assign = (await w.next("assign", job_id=job_ids(post)[0])).assign
                await w.ack(assign)
                assigns.append(assign)
            images = [b"\x89PNG\r\n\x1a\n" + os.urandom(size - 8) for _ in workers]
            acks = await asyncio.gather(
                *(
                    w.screenshot(a, data, chunk=DEFAULT_MAX_CHUNK_BYTES)
                    for w, a, data in zip(workers, assigns, images, strict=True)
                )
            )
            for ack, data in zip(acks, images, strict=True):
                assert ack.ok, ack.error
                assert ack.asset_id == hashlib.sha256(data).hexdigest()
            return [ack.asset_id for ack in acks]
        finally:
            for w in workers:
                await w.kill()


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_four_16_mib_screenshots_at_once_keep_the_coordinator_small(tmp_path: Path) -> None:
    with coordinator_process(tmp_path) as proc:
        # Warm up every code path of an upload (and the thread pool) with small screenshots.
        await _upload_round(proc.address, "warm", 1024 * 1024)
        before_kib = _status_kib(proc.pid, "VmRSS")
        if not _reset_peak(proc.pid):
            pytest.skip("cannot reset the peak RSS (/proc/PID/clear_refs) on this kernel")
        assets = await _upload_round(proc.address, "big", SCREENSHOT_BYTES)
        peak_kib = _status_kib(proc.pid, "VmHWM")
        grew_mib = (peak_kib - before_kib) / 1024
        print(
            f"\ncoordinator RSS before {before_kib / 1024:.1f} MiB, peak during {SESSIONS} x "
            f"{SCREENSHOT_BYTES // 2**20} MiB uploads {peak_kib / 1024:.1f} MiB "
            f"(+{grew_mib:.1f} MiB; bound +{MEMORY_BOUND_MIB} MiB)"
        )
        assert grew_mib <= MEMORY_BOUND_MIB
        for asset_id in assets:  # and the screenshots are all there, whole
            stored = tmp_path / "assets" / asset_id[:2] / asset_id
            assert stored.stat().st_size == SCREENSHOT_BYTES
        assert not list((tmp_path / "assets" / ".incoming").iterdir())
