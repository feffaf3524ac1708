"""The lease core's values: its configuration, a worker session, a lease."""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.domain import Run, Target, WorkerKind

SYSTEM = "system"
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
DEFAULT_LEASE_TTL_S = 15.0
DEFAULT_EXPIRY_MARGIN_S = 1.0
DEFAULT_COMMIT_MIN_LEFT_S = 2.0
DEFAULT_CLAIM_TIMEOUT_S = 300.0
DEFAULT_RUN_TIMEOUT_S = 600.0
DEFAULT_CONFIRM_TIMEOUT_S = 900.0
DEFAULT_MAX_CHUNK_BYTES = 256 * 1024
DEFAULT_MAX_ASSET_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    # Reassign only this long after a deadline, so a worker that stops itself at its deadline
    # is surely stopped.
    expiry_margin_s: float = DEFAULT_EXPIRY_MARGIN_S
    commit_min_left_s: float = DEFAULT_COMMIT_MIN_LEFT_S
    # Stuck recovery (the field's defaults): claimed but never started; running far too long.
    claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S
    run_timeout_s: float = DEFAULT_RUN_TIMEOUT_S
    # A job waiting in AWAITING_CONFIRM longer than this is released (FAILED, nothing posted).
    confirm_timeout_s: float = DEFAULT_CONFIRM_TIMEOUT_S
    # Leases of a coordinator that restarted are kept this long for their workers to reconnect.
    restart_grace_s: float = DEFAULT_LEASE_TTL_S
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES
    max_asset_bytes: int = DEFAULT_MAX_ASSET_BYTES


@dataclass(slots=True)
class Session:
    id: str
    device_id: str
    kind: WorkerKind
    capabilities: tuple[Target, ...]
    slots: int
    last_heartbeat: float
    jobs: set[str] = field(default_factory=set)
    draining: bool = False
    # Jobs of one (platform, account) it runs at once (Hello.per_account_slots); 0: no bound
    # beyond slots. A browser worker has one page per account profile, so it sends 1.
    per_account: int = 0
    # Committed jobs taken off this session (stuck, dropped) whose lease lives on: the worker may
    # still be publishing them, so they count against per_account. job id -> lease epoch.
    lingering: dict[str, int] = field(default_factory=dict)

    @property
    def free_slots(self) -> int:
        return 0 if self.draining else max(0, self.slots - len(self.jobs))

    def serves(self, target: Target) -> bool:
        return any(
            c.platform == target.platform and c.account in (target.account, "*")
            for c in self.capabilities
        )


@dataclass(slots=True)
class Lease:
    job_id: str
    epoch: int
    session_id: str | None  # None: orphaned (stream lost after commit, or coordinator restart)
    deadline: float
    run: Run
    confirmed: bool = False
    # When this session got (or resumed) the lease; a heartbeat that omits the job is believed
    # only once the Assign has surely arrived.
    granted_at: float = 0.0
    verify_only: bool = False  # this attempt may look for the post, never publish it
    # It asked for a commit permit (granted or not), so a verify_first attempt had looked.
    asked_commit: bool = False
    # When the job entered AWAITING_CONFIRM under this lease (None: not waiting for a person).
    awaiting_since: float | None = None
    # When the permitted irreversible act surely ends (the worker's own bound, counted from when
    # its request arrived here); None: at the lease deadline. Memory only: after a restart the
    # deadline stands.
    commit_ends_at: float | None = None

    def acts_until(self) -> float:
        """When its worker surely does nothing more for it unless renewed: it stops itself
        before the deadline, and a permitted act ends by its bound when that comes first."""
        if self.commit_ends_at is None:
            return self.deadline
        return min(self.deadline, self.commit_ends_at)
