"""The worker's Prometheus metrics (names fixed by design.md, "Observability names").

Everything hangs off an injected `CollectorRegistry`; nothing touches the global one. The worker
calls the typed helpers on `WorkerMetrics`, never the raw metric objects. They are served over
HTTP by postroom/metrics_http.py, which the coordinator uses too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# A step is anything from one HTTP call to a browser page load or an upload of a large video.
STEP_DURATION_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip

RequestFailure = Literal["timeout", "error"]
# Answers a platform commonly gives; their series exist at 0 from start-up for every platform
# served, so the first 429 (or 401, or timeout) shows in `rate()` instead of being born at 1.
COMMON_REQUEST_STATUSES: tuple[str, ...] = (
    "200", "201", "202", "400", "401", "403", "404", "409", "422", "429",
    "500", "502", "503", "504", "timeout", "error",
)  # fmt: skip


class WorkerMetrics:
    """Every worker metric, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry, *, platforms: Iterable[str] = ()) -> None:
        self.registry = registry
        r = registry
        self.step_duration = Histogram(
            "postroom_worker_step_duration_seconds",
            "Duration of one step of a job run.",
            ["platform", "step"],
            buckets=STEP_DURATION_BUCKETS_S,
            registry=r,
        )
        self.platform_requests = Counter(
            "postroom_worker_platform_requests",
            "Requests to a platform, by HTTP status code (or timeout / error).",
            ["platform", "status"],
            registry=r,
        )
        self.jobs_in_flight = Gauge(
            "postroom_worker_jobs_in_flight", "Jobs this worker is running now.", registry=r
        )
        self.connected = Gauge(
            "postroom_worker_connected",
            "1 while the stream to the coordinator is up.",
            registry=r,
        )
        for platform in platforms:
            for status in COMMON_REQUEST_STATUSES:
                self.platform_requests.labels(platform=platform, status=status)
        # labels() checks and locks on every call; a job observes ~5 steps: children kept.
        self._steps: dict[tuple[str, str], Histogram] = {}

    def observe_step(self, platform: str, step: str, seconds: float) -> None:
        child = self._steps.get((platform, step))
        if child is None:
            child = self._steps[platform, step] = self.step_duration.labels(
                platform=platform, step=step
            )
        child.observe(seconds)

    @contextmanager
    def time_step(self, platform: str, step: str) -> Iterator[None]:
        """Observe the duration of the `with` body, whether it succeeds or raises."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe_step(platform, step, time.perf_counter() - start)

    def platform_request(self, platform: str, status: int | RequestFailure) -> None:
        """Count one platform request: `status` is the HTTP status code, or why none came back."""
        self.platform_requests.labels(platform=platform, status=str(status)).inc()

    def set_jobs_in_flight(self, n: int) -> None:
        self.jobs_in_flight.set(n)

    def set_connected(self, up: bool) -> None:
        self.connected.set(int(up))
