"""Deciding what happens after a failed attempt: a pure function of the error and the job.

`decide(failure, job, policy, now, rand)` returns a value (RetryAt, Fail or NeedsLogin); it does
no I/O, so the whole decision table is unit-tested (tests/test_retry_unit.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from coordinator.domain import ErrorClass, Job

DEFAULT_INITIAL_INTERVAL_S = 5.0
DEFAULT_BACKOFF_FACTOR = 2.0
DEFAULT_MAX_INTERVAL_S = 300.0
DEFAULT_JITTER_FRACTION = 0.2
# Rate-limited attempts do not use up max_attempts; they have this cap of their own.
DEFAULT_MAX_RATE_LIMITED = 50
# A 429 without any usable retry signal closes the gate this long.
DEFAULT_RATE_LIMIT_S = 60.0
# A 429 whose instant had passed when its result was decided (held across a reconnect, a slow
# link, a busy coordinator: the limit has lifted) closes the gate this long. Not 0: a worker
# whose clock runs behind would otherwise send every retry straight back into the limit.
DEFAULT_LIFTED_RATE_LIMIT_S = 1.0
# The longest a platform's retry signal may close a gate: a monthly cap (X's post limits reset
# monthly) fits; an absurd one (2^62 ms, relayed by an honest worker) is cut to this, so the
# result is still taken and committed rather than refused and re-sent forever.
DEFAULT_MAX_RATE_LIMIT_S = 31 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_interval_s: float = DEFAULT_INITIAL_INTERVAL_S
    backoff_factor: float = DEFAULT_BACKOFF_FACTOR
    max_interval_s: float = DEFAULT_MAX_INTERVAL_S
    jitter_fraction: float = DEFAULT_JITTER_FRACTION
    max_rate_limited: int = DEFAULT_MAX_RATE_LIMITED
    default_rate_limit_s: float = DEFAULT_RATE_LIMIT_S
    lifted_rate_limit_s: float = DEFAULT_LIFTED_RATE_LIMIT_S
    max_rate_limit_s: float = DEFAULT_MAX_RATE_LIMIT_S

    def backoff_s(self, counted_attempts: int, rand: float) -> float:
        """Delay before the next transient retry; rand in [0, 1) spreads it by ±jitter."""
        base = self.initial_interval_s * self.backoff_factor ** max(0, counted_attempts - 1)
        delay = min(self.max_interval_s, base)
        return delay * (1.0 - self.jitter_fraction + 2.0 * self.jitter_fraction * rand)


@dataclass(frozen=True, slots=True)
class RetryPolicies:
    default: RetryPolicy = RetryPolicy()
    per_platform: Mapping[str, RetryPolicy] = field(default_factory=dict)

    def for_platform(self, platform: str) -> RetryPolicy:
        return self.per_platform.get(platform, self.default)


_POLICY_KEYS = {
    "initial": "initial_interval_s",
    "factor": "backoff_factor",
    "max": "max_interval_s",
    "jitter": "jitter_fraction",
    "rate_limited": "max_rate_limited",
}


def parse_policy(spec: str, base: RetryPolicy) -> tuple[str, RetryPolicy]:
    """`PLATFORM:initial=S,factor=F,max=S,jitter=J,rate_limited=N` (any subset) over `base`."""
    platform, sep, body = spec.partition(":")
    if not sep or not platform or not body:
        raise ValueError(f"retry policy {spec!r}: expected PLATFORM:initial=5,max=300,...")
    changes: dict[str, float | int] = {}
    for item in body.split(","):
        key, eq, value = item.partition("=")
        name = _POLICY_KEYS.get(key.strip())
        if not eq or name is None:
            keys = ", ".join(_POLICY_KEYS)
            raise ValueError(f"retry policy {spec!r}: {key!r} is not one of {keys}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"retry policy {spec!r}: {key}={value!r} is not a number") from None
        if number < 0 or (name == "jitter_fraction" and number > 1):
            raise ValueError(f"retry policy {spec!r}: {key}={value} is out of range")
        changes[name] = int(number) if name == "max_rate_limited" else number
    return platform, dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Failure:
    """What a worker reported (or what recovery concluded) about a failed attempt."""

    error_class: ErrorClass
    message: str
    retry_at: float | None = None  # RATE_LIMITED: when the limit lifts
    quota_cap: bool = False


@dataclass(frozen=True, slots=True)
class RetryAt:
    at: float
    reason: str  # "rate_limited" | "transient" | "lease_lost"


@dataclass(frozen=True, slots=True)
class Fail:
    reason: str


@dataclass(frozen=True, slots=True)
class NeedsLogin:
    reason: str


Decision = RetryAt | Fail | NeedsLogin


def decide(failure: Failure, job: Job, policy: RetryPolicy, now: float, rand: float) -> Decision:
    """The retry table of design.md. `job.attempt` already counts the attempt that failed."""
    match failure.error_class:
        case ErrorClass.RATE_LIMITED:
            if job.rate_limited_count + 1 > policy.max_rate_limited:
                return Fail(f"rate limited {job.rate_limited_count + 1} times; giving up")
            at = failure.retry_at
            if at is None or at != at:  # no instant, or NaN
                at = now + policy.default_rate_limit_s
            elif at <= now:  # it has lifted: not the no-signal default (a minute's stall)
                at = now + policy.lifted_rate_limit_s
            return RetryAt(min(at, now + policy.max_rate_limit_s), "rate_limited")
        case ErrorClass.AUTH_REQUIRED:
            return NeedsLogin(failure.message or "login required")
        case ErrorClass.INVALID_CONTENT | ErrorClass.UI_CHANGED | ErrorClass.DUPLICATE:
            return Fail(failure.message or failure.error_class.value.lower())
        case ErrorClass.TRANSIENT:
            if job.counted_attempts >= job.max_attempts:
                # Verify-only looks past the maximum are not publishing attempts: never "4 of 3".
                attempts = min(job.counted_attempts, job.max_attempts)
                return Fail(f"{attempts} attempts failed; last: {failure.message}")
            return RetryAt(now + policy.backoff_s(job.counted_attempts, rand), "transient")


def decide_lease_lost(job: Job, now: float) -> Decision:
    """A lease ended without a result (worker lost or stuck): retry at once while attempts last."""
    if job.counted_attempts >= job.max_attempts:
        return Fail(f"lease lost on attempt {job.attempt} of {job.max_attempts}")
    return RetryAt(now, "lease_lost")
