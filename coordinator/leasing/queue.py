"""Jobs waiting for a worker, one min-heap of (not_before, seq) per target.

Entries are deleted lazily: a popped entry whose job is no longer QUEUED at that not_before is
skipped. Only the lease core calls this (it owns the one ReadyQueue).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Container, Iterable

from coordinator.domain import Job, JobStatus, Target

WILDCARD_ACCOUNT = "*"


class ReadyQueue:
    def __init__(self) -> None:
        self._heaps: dict[Target, list[tuple[float, int, str]]] = {}
        self._by_platform: dict[str, set[Target]] = {}
        self._seq = itertools.count()

    def push(self, job: Job) -> None:
        target = job.target
        heap = self._heaps.get(target)
        if heap is None:
            heap = self._heaps[target] = []
            self._by_platform.setdefault(target.platform, set()).add(target)
        heapq.heappush(heap, (job.not_before, next(self._seq), job.id))

    def targets_for(self, capabilities: Iterable[Target]) -> list[Target]:
        out: list[Target] = []
        for cap in capabilities:
            if cap.account == WILDCARD_ACCOUNT:
                out.extend(self._by_platform.get(cap.platform, ()))
            elif cap in self._heaps:
                out.append(cap)
        return out

    def _clean_top(
        self, target: Target, jobs: dict[str, Job], held: Callable[[Job], bool]
    ) -> tuple[float, int, str] | None:
        """Drop stale entries and held jobs (the core re-pushes those when released)."""
        heap = self._heaps.get(target)
        while heap:
            not_before, _, job_id = heap[0]
            job = jobs.get(job_id)
            if (
                job is not None
                and job.status is JobStatus.QUEUED
                and job.not_before == not_before
                and not held(job)
            ):
                return heap[0]
            heapq.heappop(heap)
        return None

    def pick(
        self,
        capabilities: Iterable[Target],
        jobs: dict[str, Job],
        now: float,
        open_at: Callable[[Target], float],
        held: Callable[[Job], bool],
        skip: Container[Target] = (),
        serves: Callable[[Target], bool] | None = None,
    ) -> Job | None:
        """The due job (not_before <= now, gate open, not held) waiting longest, or None.
        Targets in `skip` (the session's accounts at their per-account bound) are passed over,
        and so are those `serves` says no to (shards the core does not serve; None: all)."""
        best: tuple[float, int, Target] | None = None
        for target in self.targets_for(capabilities):
            if skip and target in skip:
                continue
            if serves is not None and not serves(target):
                continue
            top = self._clean_top(target, jobs, held)
            if top is None or top[0] > now or open_at(target) > now:
                continue
            if best is None or top[:2] < best[:2]:
                best = (top[0], top[1], target)
        if best is None:
            return None
        _, _, job_id = heapq.heappop(self._heaps[best[2]])
        return jobs[job_id]

    def next_due(
        self,
        jobs: dict[str, Job],
        open_at: Callable[[Target], float],
        held: Callable[[Job], bool],
        after: float = float("-inf"),
        serves: Callable[[Target], bool] | None = None,
    ) -> float | None:
        """Earliest instant after `after` a queued job becomes dispatchable (for the actor's
        timer); targets whose first job was already due by `after` wait for a free slot, and
        those `serves` says no to never become dispatchable here."""
        soonest: float | None = None
        for target in list(self._heaps):
            if serves is not None and not serves(target):
                continue
            top = self._clean_top(target, jobs, held)
            if top is None:
                continue
            at = max(top[0], open_at(target))
            if at <= after:
                continue
            if soonest is None or at < soonest:
                soonest = at
        return soonest

    def drop_targets(self, gone: Callable[[Target], bool]) -> None:
        """Forget every entry of the targets `gone` says yes to (their jobs left the core)."""
        for target in [t for t in self._heaps if gone(t)]:
            del self._heaps[target]
            same = self._by_platform.get(target.platform)
            if same is not None:
                same.discard(target)
                if not same:
                    del self._by_platform[target.platform]

    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())
