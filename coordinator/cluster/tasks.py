"""PostTaskConsumer: a coordinator takes up the post tasks of the shards it owns (placement
"spread"; coordinator/posttasks.py says what they are).

A home coordinator's batch that inserts tasks notifies each task's shard at commit (PostgreSQL
NOTIFY). The consumer wakes on a notification, or every `scan_s` anyway (a notification sent
while this coordinator was not listening, or before it owned the shard, is not lost: the tasks
are rows), reads the pending tasks of its shards oldest first and hands them to the actor, which
applies them in one fenced batch that also deletes them. One batch at a time: the next read
starts after the last batch committed, so a task is never applied twice by one coordinator, and
the fence keeps a coordinator that lost a shard from applying that shard's tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio

from coordinator.actor import Coordinator
from coordinator.errors import CoordinatorError, StoreError
from coordinator.operator_commands import ApplyPostTasks
from coordinator.store.postgres import PostgresStore

log = logging.getLogger("postroom.coordinator")
DEFAULT_SCAN_S = 1.0
BATCH_LIMIT = 200


@dataclass(slots=True)
class PostTaskConsumer:
    store: PostgresStore
    coordinator: Coordinator
    # The shards this coordinator serves now (ClusterServing.serves: not being handed off).
    shards: Callable[[], Sequence[int]] = list
    scan_s: float = DEFAULT_SCAN_S
    applied: int = 0  # tasks applied so far (tests, logs)

    async def run(self) -> None:
        """Until cancelled. A listening connection the server dropped is opened again (what
        was notified meanwhile is found by the scan)."""
        while True:
            try:
                async with self.store.listen_post_tasks() as notified:
                    while True:
                        await self.drain()
                        with anyio.move_on_after(self.scan_s):
                            await notified.receive()
            except (StoreError, anyio.EndOfStream) as exc:
                log.warning("listening for post tasks stopped (will listen again): %s", exc)
                await self.drain()
                await anyio.sleep(self.scan_s)  # pacing the retries, not waiting for a result

    async def drain(self) -> int:
        """Apply every pending task of the owned shards; how many."""
        done = 0
        while shards := list(self.shards()):
            try:
                tasks = await self.store.pending_post_tasks(shards, limit=BATCH_LIMIT)
            except StoreError as exc:
                log.warning("reading post tasks failed (will retry): %s", exc)
                return done
            if not tasks:
                return done
            try:
                await self.coordinator.command(ApplyPostTasks(tuple(tasks)))
            except CoordinatorError as exc:  # shutting down, or moved: the rows stay
                log.warning("post tasks not applied yet: %s", exc)
                return done
            done += len(tasks)
            self.applied += len(tasks)
            if len(tasks) < BATCH_LIMIT:
                return done
        return done
