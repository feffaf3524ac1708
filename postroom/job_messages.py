"""What the coordinator tells a worker about one of its jobs, as plain values both sides share:
the coordinator's core says them (coordinator/leasing/outbound.py, turned into wire messages by
coordinator/convert.py), and the worker's session reads the wire into them (worker/session.py)
for its runner. Data only: what each means for a job is decided by the side that holds it.
Times are in seconds; `epoch` is the lease epoch the message is about.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Confirm:
    """An operator confirmed the job: it may ask for its commit permit now."""

    job_id: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop the job (an operator cancelled it, or nobody confirmed it in time)."""

    job_id: str
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class Drop:
    """The lease is over (stale, stuck, taken back): forget the job at this epoch."""

    job_id: str
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class ResultAck:
    """The job's result is recorded (accepted) or refused, with why."""

    job_id: str
    epoch: int
    accepted: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ScreenshotAck:
    """A screenshot upload's row is committed (ok: the worker may delete its copy) or refused."""

    job_id: str
    upload_id: str
    ok: bool
    error: str = ""
    asset_id: str = ""
