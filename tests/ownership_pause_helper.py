"""Child of test_store_ownership's SIGSTOP test: a coordinator's store that holds every shard.

    python tests/ownership_pause_helper.py URL SHARDS TTL_S

Claims all SHARDS for TTL_S seconds of the server's clock and prints "held" (flushed). Then, for
each line on stdin, tries one fenced batch (an audit event) under those leases and prints
"written" or "lost: <message>". The parent stops it (SIGSTOP) in between.
"""

from __future__ import annotations

import sys
import time

import anyio

from coordinator.domain import AuditEvent
from coordinator.store import PostgresStore, WriteBatch
from coordinator.store.ownership import ShardOwnership
from coordinator.store.shards import Fence, OwnershipLost

OWNER = "paused-coordinator"


async def main(url: str, shards: int, ttl_s: float) -> None:
    store = PostgresStore(url)
    await store.open()
    try:
        ownership = ShardOwnership(store, shard_count=shards)
        await ownership.open()
        leases = await ownership.claim(OWNER, want=shards, ttl_s=ttl_s)
        assert len(leases) == shards, leases
        fence = Fence.of(OWNER, shards, leases)
        print("held", flush=True)
        while await anyio.to_thread.run_sync(sys.stdin.readline):
            try:
                await store.apply_fenced(
                    WriteBatch(audits=[AuditEvent("WOKE", "x", OWNER, time.time())]), fence
                )
                print("written", flush=True)
            except OwnershipLost as exc:
                print(f"lost: {exc}", flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
