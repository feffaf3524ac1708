"""What the lease core asks its I/O shell to do: write a batch, then send messages.

The shell always commits `batch` before sending `messages`, so a worker never hears of a lease,
a commit permit or an accepted result that a crash could take back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.domain import Job, StepLogEntry
from coordinator.leasing.outbound import Outbound
from coordinator.store.base import WriteBatch


@dataclass(frozen=True, slots=True)
class AttemptStarted:
    job: Job
    session_id: str


@dataclass(frozen=True, slots=True)
class AttemptEnded:
    job: Job
    outcome: str  # "succeeded" | "failed" | "retry" | "needs_login" | "lease_lost" | "cancelled"
    duration_s: float
    error_class: str = ""
    retry_reason: str = ""
    retry_at: float = 0.0


@dataclass(frozen=True, slots=True)
class LeaseExpired:
    phase: str  # "claimed" | "running" | "committed"


@dataclass(frozen=True, slots=True)
class CommitDecided:
    granted: bool


@dataclass(frozen=True, slots=True)
class RateLimitHit:
    platform: str
    account: str
    job_id: str = ""
    until: float = 0.0


@dataclass(frozen=True, slots=True)
class Dispatched:
    latency_s: float


Signal = AttemptStarted | AttemptEnded | LeaseExpired | CommitDecided | RateLimitHit | Dispatched


@dataclass(slots=True)
class Effects:
    batch: WriteBatch = field(default_factory=WriteBatch)
    # (session id, what to tell it): turned into wire messages at the edge (convert.py).
    messages: list[tuple[str, Outbound]] = field(default_factory=list)
    # Jobs whose status or fields changed (snapshots), for watchers and metrics.
    changed_jobs: dict[str, Job] = field(default_factory=dict)
    # Step logs, for watchers: (job_id, run_id, attempt, entry).
    logs: list[tuple[str, str, int, StepLogEntry]] = field(default_factory=list)
    # Sessions the shell must end (heartbeat silence, superseded by a new stream).
    close_sessions: list[str] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
    # An operator command's answer, handed to its RPC after the commit (not merged by extend).
    reply: object = None

    def send(self, session_id: str, msg: Outbound) -> None:
        self.messages.append((session_id, msg))

    def extend(self, other: Effects) -> None:
        self.batch.extend(other.batch)
        self.messages += other.messages
        self.changed_jobs.update(other.changed_jobs)
        self.logs += other.logs
        self.close_sessions += other.close_sessions
        self.signals += other.signals
