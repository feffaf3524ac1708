"""Real platform software run locally: the Bluesky reference PDS (with an in-memory PLC) and
mastodon-mock, as processes on 127.0.0.1. The tests publish to them, and `postroom demo
--platforms bluesky,mastodon` runs the demo against them. Each is started and stopped by PID.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
POLL_S = 0.05


class LocalServerError(RuntimeError):
    """A local server is not installed, would not start, or answered wrongly."""


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float) -> T:
    """Poll `probe` until it returns something truthy; LocalServerError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LocalServerError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(POLL_S)
