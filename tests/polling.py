"""Waiting in tests: poll a probe with a deadline, never sleep for a guessed duration."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_POLL_S = 0.05


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    poll_s: float = DEFAULT_POLL_S,
) -> T:
    """Poll `probe` until it returns something truthy and return that; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(poll_s)


async def eventually(
    what: str,
    probe: Callable[[], Awaitable[T | None]],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    poll_s: float = DEFAULT_POLL_S,
) -> T:
    """wait_until's twin inside an event loop, for state that moves elsewhere (another process,
    another coordinator through the database): no event to await, so poll with a deadline."""
    deadline = anyio.current_time() + timeout_s
    while not (value := await probe()):
        if anyio.current_time() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        await anyio.sleep(poll_s)
    return value


async def eventually_true(
    what: str,
    probe: Callable[[], T | None],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    poll_s: float = DEFAULT_POLL_S,
) -> T:
    """`eventually` for a probe that needs no await."""

    async def awaited() -> T | None:
        return probe()

    return await eventually(what, awaited, timeout_s, poll_s=poll_s)
