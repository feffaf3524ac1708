"""Injected time: every component of the coordinator and the worker that waits or expires takes
a `Clock`.

Wall time (Unix seconds): it is persisted and shown to users, and lease deadlines cross the wire
as Unix instants. Tests use `FakeClock` to run lease expiry and backoff in virtual time.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once now() >= deadline (at once if it already is)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.time()
        if delay > 0:
            await anyio.sleep(delay)


class FakeClock:
    """Virtual time: `advance()` moves it and wakes the sleepers whose deadline passed."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._changed = anyio.Event()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    def set(self, now: float) -> None:
        self._now = max(self._now, now)
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def sleep_until(self, deadline: float) -> None:
        while self._now < deadline:
            await self._changed.wait()


async def sleep_for(clock: Clock, seconds: float) -> None:
    await clock.sleep_until(clock.now() + seconds)
