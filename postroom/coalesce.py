"""Coalesced writes: a stream's one writer takes, with each item it waits for, whatever else is
already queued behind it, so one gRPC write (and one syscall) carries many small messages.

A lone item is never delayed: the writer waits only for the first one and takes the rest
without waiting. What piles up while a write is in flight goes out together in the next write.
Used by the worker's writer (worker/shell.py) and the coordinator's (coordinator/gateway.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

T = TypeVar("T")

# Half the coordinator's 1 MiB receive limit (README "Limits"): the batch's own framing (a few
# bytes a message) cannot push it over, two 256 KiB screenshot chunks still share a write, and a
# bigger batch would save nothing measurable. A single message bigger than this goes alone.
DEFAULT_MAX_BATCH_BYTES = 512 * 1024
DEFAULT_MAX_BATCH_MESSAGES = 256


class Coalescer(Generic[T]):
    def __init__(
        self,
        source: MemoryObjectReceiveStream[T],
        size: Callable[[T], int],
        *,
        max_messages: int = DEFAULT_MAX_BATCH_MESSAGES,
        max_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> None:
        self._source = source
        self._size = size
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._carry: list[T] = []  # taken but over the last batch's size: first of the next

    async def next_batch(self) -> list[T]:
        """The next item (waiting for it) and those queued behind it, in order, within the
        bounds; raises anyio.EndOfStream once the source is closed and empty."""
        batch = [self._carry.pop() if self._carry else await self._source.receive()]
        total = self._size(batch[0])
        while len(batch) < self._max_messages:
            try:
                item = self._source.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            total += self._size(item)
            if total > self._max_bytes:
                self._carry.append(item)
                break
            batch.append(item)
        return batch
