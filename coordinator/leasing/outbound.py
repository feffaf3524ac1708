"""What the core tells a worker, as domain values. coordinator/convert.py turns each into its
CoordinatorMessage at the edge (the actor, after the commit), so nothing in the core builds wire
messages, and the Assign gets its attempt's traceparent there rather than patched afterwards.
Times are in seconds (the wire's milliseconds are the edge's business). Drop, Confirm, Cancel,
ResultAck and ScreenshotAck are postroom/job_messages.py's, which the worker reads them into."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.domain import Job

# The values about one job that the worker reads too: shared, not copied.
from postroom.job_messages import Cancel as Cancel
from postroom.job_messages import Confirm as Confirm
from postroom.job_messages import Drop as Drop
from postroom.job_messages import ResultAck as ResultAck
from postroom.job_messages import ScreenshotAck as ScreenshotAck


@dataclass(frozen=True, slots=True)
class HeldJob:
    job_id: str
    epoch: int
    committed: bool


@dataclass(frozen=True, slots=True)
class Welcome:
    session_id: str
    heartbeat_interval_s: float
    lease_ttl_s: float
    resumed: tuple[HeldJob, ...]
    max_chunk_bytes: int
    max_asset_bytes: int


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    seq: int
    lease_deadline: float


@dataclass(frozen=True, slots=True)
class Assign:
    """A lease: `job` is the snapshot written with it (read-only)."""

    job: Job
    lease_deadline: float
    verify_only: bool


@dataclass(frozen=True, slots=True)
class CommitGrant:
    job_id: str
    epoch: int
    lease_deadline: float


@dataclass(frozen=True, slots=True)
class CommitDeny:
    job_id: str
    epoch: int
    reason: str


Outbound = (
    Welcome
    | HeartbeatAck
    | Assign
    | Drop
    | CommitGrant
    | CommitDeny
    | Confirm
    | Cancel
    | ResultAck
    | ScreenshotAck
)
