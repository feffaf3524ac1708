"""Waiting in tests: poll a probe with a deadline, never sleep for a guessed duration."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

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
