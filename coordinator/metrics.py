"""The coordinator's Prometheus metrics (names fixed by design.md, "Observability names").

Everything hangs off an injected `CollectorRegistry`; nothing touches the global one. The
coordinator calls the small typed helpers on `CoordinatorMetrics`, never the raw metric objects, so
label values stay consistent: status, outcome, reason and phase values are lower-cased
(`JobStatus.CLAIMED` -> `"claimed"`); platform, account and kind are used as given.

`postroom_jobs_total` (a counter) and `postroom_jobs` (a gauge) share the stem `postroom_jobs`. The
registry refuses two collectors claiming one name and the OpenMetrics exposition cannot express it,
so the gauge is a small custom collector and `serve_metrics` always answers in the classic text
format (0.0.4), where the two names differ.

Account names come from clients (posts' targets, workers' capabilities), so the per-account
series are bounded: the first `max_account_series` (platform, account) pairs get their own; any
later account is counted under account="_other" (and a warning says so once). Platforms are the
known ones only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger("postroom.coordinator.metrics")

LeasePhase = Literal["claimed", "running", "committed"]
# Accounts with series of their own; the rest share OTHER_ACCOUNTS (module docstring).
DEFAULT_MAX_ACCOUNT_SERIES = 1_000
OTHER_ACCOUNTS = "_other"

# Label values the coordinator is expected to use; series for them exist from start-up at 0 so
# that `increase()` in alerts sees the first event (a counter born at 1 shows no increase).
LEASE_PHASES: tuple[LeasePhase, ...] = ("claimed", "running", "committed")
PERMIT_RESULTS: tuple[str, ...] = ("granted", "denied")
DEVICE_KINDS: tuple[str, ...] = ("api", "browser")
JOB_OUTCOMES: tuple[str, ...] = ("succeeded", "failed", "needs_login", "cancelled")
# coordinator/retry.py's reasons. Born at 0, the first retry of a reason shows in `rate()`.
RETRY_REASONS: tuple[str, ...] = ("rate_limited", "transient", "lease_lost")

# Job durations run from a fast API call to a slow browser session (the lease bound is ~30 min).
JOB_DURATION_BUCKETS_S: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800,
)  # fmt: skip
# Dispatch (job ready -> Assign sent) is in-process work: sub-millisecond to a second.
DISPATCH_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
)  # fmt: skip


class _JobCountsCollector:
    """`postroom_jobs{status,platform}`: the latest per-status snapshot, vanished keys at 0."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def set(self, counts: Mapping[tuple[str, str], int]) -> None:
        fresh = {(status.lower(), platform): n for (status, platform), n in counts.items()}
        with self._lock:
            # A status that empties must read 0, not vanish: a gap would hide the drop on graphs.
            merged = dict.fromkeys(self._counts, 0)
            merged.update(fresh)
            self._counts = merged

    def value(self, status: str, platform: str) -> int | None:
        with self._lock:
            return self._counts.get((status.lower(), platform))

    def describe(self) -> Iterable[Metric]:
        # Declaring no names keeps the registry from seeing a clash with the counter's stem.
        return []

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "postroom_jobs", "Current jobs per status and platform.", labels=["status", "platform"]
        )
        with self._lock:
            for (status, platform), n in sorted(self._counts.items()):
                family.add_metric([status, platform], n)
        yield family


class CoordinatorMetrics:
    """Every coordinator metric, registered on `registry`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        platforms: Iterable[str] = (),
        max_account_series: int = DEFAULT_MAX_ACCOUNT_SERIES,
    ) -> None:
        self.registry = registry
        self.max_account_series = max_account_series
        self._overflow_said = False
        # Accounts beyond the bound whose gate is closed / that wait on a login, per platform.
        self._other_closed: dict[str, set[str]] = {}
        self._other_waiting: dict[str, set[str]] = {}
        self._accounts_seen: set[tuple[str, str]] = set()
        # Labelled children of the per-job series, by (metric, platform, outcome).
        self._counters: dict[tuple[str, str, str], Counter] = {}
        self._histograms: dict[tuple[str, str], Histogram] = {}
        self._register_job_metrics(registry)
        self._register_lease_metrics(registry)
        self._register_account_metrics(registry)
        self._job_counts = _JobCountsCollector()
        registry.register(self._job_counts)
        self._born_at_zero(platforms)

    def _register_job_metrics(self, r: CollectorRegistry) -> None:
        """Jobs and their attempts: outcomes, retries, durations, dispatch latency."""
        self.jobs = Counter(
            "postroom_jobs", "Jobs finished, by final outcome.", ["platform", "outcome"], registry=r
        )
        self.job_attempts = Counter(
            "postroom_job_attempts", "Job attempts started.", ["platform"], registry=r
        )
        self.retries_scheduled = Counter(
            "postroom_retries_scheduled",
            "Retries scheduled, by reason.",
            ["platform", "reason"],
            registry=r,
        )
        self.job_duration = Histogram(
            "postroom_job_duration_seconds",
            "Time from claim to the attempt's outcome.",
            ["platform", "outcome"],
            buckets=JOB_DURATION_BUCKETS_S,
            registry=r,
        )
        self.dispatch_latency_hist = Histogram(
            "postroom_dispatch_latency_seconds",
            "Time from a job being dispatchable to its Assign being sent.",
            buckets=DISPATCH_LATENCY_BUCKETS_S,
            registry=r,
        )

    def _register_lease_metrics(self, r: CollectorRegistry) -> None:
        """Leases, commit permits and the workers holding them."""
        self.lease_expirations = Counter(
            "postroom_lease_expirations", "Leases that expired, by phase.", ["phase"], registry=r
        )
        self.commit_permits = Counter(
            "postroom_commit_permits", "Commit permits answered.", ["result"], registry=r
        )
        self.devices_online = Gauge(
            "postroom_devices_online", "Connected workers, by kind.", ["kind"], registry=r
        )

    def _register_account_metrics(self, r: CollectorRegistry) -> None:
        """Per (platform, account), bounded by `max_account_series` (module docstring)."""
        self.rate_limit_hits = Counter(
            "postroom_rate_limit_hits",
            "Rate-limit signals received from a platform.",
            ["platform", "account"],
            registry=r,
        )
        self.rate_limit_gate_closed = Gauge(
            "postroom_rate_limit_gate_closed",
            "1 while the rate-limit gate of (platform, account) is closed.",
            ["platform", "account"],
            registry=r,
        )
        self.needs_login_accounts = Gauge(
            "postroom_needs_login_accounts",
            "1 while jobs of (platform, account) wait on a login.",
            ["platform", "account"],
            registry=r,
        )

    def _born_at_zero(self, platforms: Iterable[str]) -> None:
        """The expected label values' series, at 0 from start-up (see LEASE_PHASES)."""
        for phase in LEASE_PHASES:
            self.lease_expirations.labels(phase=phase)
        for result in PERMIT_RESULTS:
            self.commit_permits.labels(result=result)
        for kind in DEVICE_KINDS:
            self.devices_online.labels(kind=kind).set(0)
        for platform in platforms:
            self.job_attempts.labels(platform=platform)
            for outcome in JOB_OUTCOMES:
                self.jobs.labels(platform=platform, outcome=outcome)
            for reason in RETRY_REASONS:
                self.retries_scheduled.labels(platform=platform, reason=reason)

    def account_known(self, platform: str, account: str) -> None:
        """Create the per-account series at 0 as soon as the account is known (a worker serves
        it, a job targets it), so the first rate-limit hit is an increase, not a birth at 1."""
        if account not in ("", "*"):
            self._account(platform, account)

    def _account(self, platform: str, account: str) -> str:
        """The account label for (platform, account): its own while the bound allows."""
        if (platform, account) in self._accounts_seen:
            return account
        if len(self._accounts_seen) >= self.max_account_series:
            if not self._overflow_said:
                self._overflow_said = True
                log.warning(
                    "more than %d accounts: metrics of further accounts are counted under "
                    'account="%s"',
                    self.max_account_series,
                    OTHER_ACCOUNTS,
                )
            return OTHER_ACCOUNTS
        self._accounts_seen.add((platform, account))
        self.rate_limit_hits.labels(platform=platform, account=account)
        self.rate_limit_gate_closed.labels(platform=platform, account=account)
        self.needs_login_accounts.labels(platform=platform, account=account)
        return account

    def job_attempt_started(self, platform: str) -> None:
        child = self._counters.get(("attempts", platform, ""))
        if child is None:
            child = self._counters["attempts", platform, ""] = self.job_attempts.labels(
                platform=platform
            )
        child.inc()

    def job_finished(self, platform: str, outcome: str, duration_s: float) -> None:
        # Every job passes here: labels() (which checks and locks) once per series, not per job.
        done = self._counters.get(("jobs", platform, outcome))
        took = self._histograms.get((platform, outcome))
        if done is None or took is None:
            lower = outcome.lower()
            done = self._counters["jobs", platform, outcome] = self.jobs.labels(
                platform=platform, outcome=lower
            )
            took = self._histograms[platform, outcome] = self.job_duration.labels(
                platform=platform, outcome=lower
            )
        done.inc()
        took.observe(duration_s)

    def retry_scheduled(self, platform: str, reason: str) -> None:
        self.retries_scheduled.labels(platform=platform, reason=reason.lower()).inc()

    def rate_limit_hit(self, platform: str, account: str) -> None:
        account = self._account(platform, account)
        self.rate_limit_hits.labels(platform=platform, account=account).inc()

    def set_gate(self, platform: str, account: str, closed: bool) -> None:
        self._set_flag(self.rate_limit_gate_closed, self._other_closed, platform, account, closed)

    def _set_flag(
        self, gauge: Gauge, others: dict[str, set[str]], platform: str, account: str, on: bool
    ) -> None:
        """A 0/1 gauge per account; the shared "_other" series reads 1 while any of its
        accounts is on (only those are remembered)."""
        label = self._account(platform, account)
        if label != OTHER_ACCOUNTS:
            gauge.labels(platform=platform, account=label).set(int(on))
            return
        members = others.setdefault(platform, set())
        if on:
            members.add(account)
        else:
            members.discard(account)
        gauge.labels(platform=platform, account=OTHER_ACCOUNTS).set(int(bool(members)))

    def set_job_counts(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Replace the snapshot; keys are (status, platform). Keys seen before but absent now
        are set to 0."""
        self._job_counts.set(counts)

    def job_count(self, status: str, platform: str) -> int | None:
        """The exported value of `postroom_jobs{status,platform}` (None if never set)."""
        return self._job_counts.value(status, platform)

    def lease_expired(self, phase: LeasePhase) -> None:
        self.lease_expirations.labels(phase=phase).inc()

    def commit_permit(self, granted: bool) -> None:
        self.commit_permits.labels(result="granted" if granted else "denied").inc()

    def set_devices_online(self, kind: str, n: int) -> None:
        self.devices_online.labels(kind=kind).set(n)

    def dispatch_latency(self, seconds: float) -> None:
        self.dispatch_latency_hist.observe(seconds)

    def set_needs_login(self, platform: str, account: str, waiting: bool) -> None:
        gauge, others = self.needs_login_accounts, self._other_waiting
        self._set_flag(gauge, others, platform, account, waiting)
