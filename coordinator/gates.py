"""Rate-limit gates: one per (platform, account), shared by every worker.

A gate is closed until an instant (a 429's normalised retry time, or an operator's reopen), and
also while a configured quota (N posts per rolling window) is used up. Quota usage counts commit
permits granted in the window plus leases in flight that may still commit, so the quota closes the
gate *before* the platform's limit is hit. Pure bookkeeping; the lease actor owns the one GateBook.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from coordinator.domain import GateRecord, Target


@dataclass(frozen=True, slots=True)
class Quota:
    limit: int
    window_s: float


@dataclass(slots=True)
class Gate:
    target: Target
    closed_until: float = 0.0
    reason: str = ""
    hits: int = 0
    commits: deque[float] = field(default_factory=deque)  # commit-permit times, in the window
    in_flight: set[str] = field(default_factory=set)  # job ids leased, not yet committed/ended


@dataclass(frozen=True, slots=True)
class GateView:
    target: Target
    closed: bool
    closed_until: float
    reason: str
    hits: int
    quota_limit: int
    quota_window_s: float
    quota_used: int


def parse_quota(spec: str) -> tuple[str, Quota]:
    """`PLATFORM[:ACCOUNT]=N/SECONDS`, e.g. `sandbox=2/3600` or `x:acme=50/86400`."""
    key, _, rest = spec.partition("=")
    limit, _, window = rest.partition("/")
    try:
        quota = Quota(int(limit), float(window))
    except ValueError:
        raise ValueError(f"quota {spec!r}: expected PLATFORM[:ACCOUNT]=N/SECONDS") from None
    if not key or quota.limit < 1 or quota.window_s <= 0:
        raise ValueError(f"quota {spec!r}: expected PLATFORM[:ACCOUNT]=N/SECONDS with N >= 1")
    return key, quota


class GateBook:
    def __init__(self, quotas: Mapping[str, Quota] | None = None) -> None:
        # Keys: "platform" (every account of it) or "platform:account" (wins).
        self._quotas = dict(quotas or {})
        self._gates: dict[Target, Gate] = {}

    def gate(self, target: Target) -> Gate:
        gate = self._gates.get(target)
        if gate is None:
            gate = self._gates[target] = Gate(target)
        return gate

    def quota(self, target: Target) -> Quota | None:
        return self._quotas.get(str(target)) or self._quotas.get(target.platform)

    def load(self, records: Iterable[GateRecord]) -> None:
        for rec in records:
            gate = self.gate(rec.target)
            gate.closed_until, gate.reason, gate.hits = rec.closed_until, rec.reason, rec.hits

    def seed_commits(self, target: Target, times: Iterable[float]) -> None:
        self.gate(target).commits.extend(sorted(times))

    def _quota_used(self, gate: Gate, quota: Quota, now: float) -> int:
        while gate.commits and gate.commits[0] <= now - quota.window_s:
            gate.commits.popleft()
        return len(gate.commits) + len(gate.in_flight)

    def open_at(self, target: Target, now: float) -> float:
        """The earliest instant a new lease for target may be handed out (<= now: open)."""
        gate = self._gates.get(target)
        if gate is None:
            return now
        at = gate.closed_until
        quota = self.quota(target)
        if quota is not None and self._quota_used(gate, quota, now) >= quota.limit:
            # Reopens when the oldest counted commit leaves the window; leases in flight reopen
            # it when they end (the actor re-dispatches then).
            at = max(at, gate.commits[0] + quota.window_s if gate.commits else float("inf"))
        return at

    def closed_until(self, target: Target) -> float:
        """Until when a rate-limit answer closed the gate (0: it did not). Quotas aside."""
        gate = self._gates.get(target)
        return gate.closed_until if gate is not None else 0.0

    def is_open(self, target: Target, now: float) -> bool:
        return self.open_at(target, now) <= now

    def close(self, target: Target, until: float, reason: str) -> GateRecord:
        """A rate-limit answer: closed until `until` (never shortened by a later, earlier one)."""
        gate = self.gate(target)
        gate.hits += 1
        if until > gate.closed_until:
            gate.closed_until, gate.reason = until, reason
        return GateRecord(target, gate.closed_until, gate.reason, gate.hits)

    def reopen(self, target: Target) -> GateRecord:
        gate = self.gate(target)
        gate.closed_until, gate.reason = 0.0, ""
        gate.commits.clear()
        return GateRecord(target, 0.0, "", gate.hits)

    def lease_started(self, target: Target, job_id: str) -> None:
        if self.quota(target) is not None:
            self.gate(target).in_flight.add(job_id)

    def lease_committed(self, target: Target, job_id: str, now: float) -> None:
        if self.quota(target) is not None:
            gate = self.gate(target)
            gate.in_flight.discard(job_id)
            gate.commits.append(now)

    def lease_ended(self, target: Target, job_id: str) -> None:
        gate = self._gates.get(target)
        if gate is not None:
            gate.in_flight.discard(job_id)

    def forget(self, gone: Callable[[Target], bool]) -> None:
        """Drop the gates of the targets `gone` says yes to (their shard went to another
        coordinator, which loads them from the store)."""
        for target in [t for t in self._gates if gone(t)]:
            del self._gates[target]

    def views(self, now: float, extra: Iterable[Target] = ()) -> list[GateView]:
        """The gates as operators and gauges see them at `now`, plus `extra` targets (shown open
        if they have no gate yet). Reads only: nothing here changes a gate."""
        out: list[GateView] = []
        for target in sorted(set(self._gates) | set(extra)):
            gate = self._gates.get(target) or Gate(target)
            quota = self.quota(target)
            counted = [t for t in gate.commits if t > now - quota.window_s] if quota else []
            used = len(counted) + len(gate.in_flight) if quota else 0
            open_at = gate.closed_until
            if quota is not None and used >= quota.limit:
                open_at = max(open_at, counted[0] + quota.window_s if counted else float("inf"))
            closed = open_at > now
            reason = gate.reason if gate.closed_until > now else ""
            if closed and not reason and quota is not None:
                reason = f"quota {quota.limit}/{quota.window_s:g}s used up"
            out.append(
                GateView(
                    target=target,
                    closed=closed,
                    closed_until=open_at if closed else 0.0,
                    reason=reason,
                    hits=gate.hits,
                    quota_limit=quota.limit if quota else 0,
                    quota_window_s=quota.window_s if quota else 0.0,
                    quota_used=used,
                )
            )
        return out
