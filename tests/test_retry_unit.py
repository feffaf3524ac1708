"""The retry decision table of design.md ("Failures, retries, rate limits"), exhaustively.

`decide(failure, job, policy, now, rand)` is pure: every error class x counted attempts below, at
and above max_attempts x rate-limited count below and at its cap, with the exact time it answers.
"""

from __future__ import annotations

import itertools

import pytest

from coordinator.domain import ErrorClass, Job, JobStatus
from coordinator.retry import (
    DEFAULT_BACKOFF_FACTOR,
    DEFAULT_INITIAL_INTERVAL_S,
    DEFAULT_JITTER_FRACTION,
    DEFAULT_LIFTED_RATE_LIMIT_S,
    DEFAULT_MAX_INTERVAL_S,
    DEFAULT_RATE_LIMIT_S,
    Decision,
    Fail,
    Failure,
    NeedsLogin,
    RetryAt,
    RetryPolicies,
    RetryPolicy,
    decide,
    decide_lease_lost,
)

NOW = 1_800_000_000.0
MAX_ATTEMPTS = 3
RL_CAP = 4
POLICY = RetryPolicy(max_rate_limited=RL_CAP)  # the default intervals, a small rate-limit cap
ALMOST_ONE = 1.0 - 1e-12


def job(*, counted: int, rate_limited: int = 0, max_attempts: int = MAX_ATTEMPTS) -> Job:
    """A job whose attempt that just failed is counted: attempt = counted + rate-limited ones."""
    return Job(
        id="j-1",
        post_id="p-1",
        platform="sandbox",
        account="acme",
        status=JobStatus.RUNNING,
        idempotency_key="p-1:sandbox/acme:2027-01-15T08:00:00Z",
        platform_key="pr-x",
        content_hash="h",
        text="hi",
        media=(),
        scheduled_at=NOW,
        created_at=NOW,
        updated_at=NOW,
        not_before=NOW,
        max_attempts=max_attempts,
        attempt=counted + rate_limited,
        rate_limited_count=rate_limited,
    )


def expected_backoff(counted: int, rand: float) -> float:
    """5 s, 10 s, 20 s, ... capped at 300 s, spread by +-20 %."""
    base = min(300.0, 5.0 * 2.0 ** (counted - 1))
    return base * (0.8 + 0.4 * rand)


# ---- the whole table ---------------------------------------------------------------------------

COUNTED = {"below": MAX_ATTEMPTS - 1, "at": MAX_ATTEMPTS, "above": MAX_ATTEMPTS + 1}
RATE_LIMITED = {"rl-below": RL_CAP - 1, "rl-at-cap": RL_CAP}
CASES = list(itertools.product(ErrorClass, COUNTED, RATE_LIMITED))


def expected(error_class: ErrorClass, counted: int, rate_limited: int) -> Decision:
    retry_at = NOW + 42.0
    match error_class:
        case ErrorClass.RATE_LIMITED:
            # Its own cap; the transient attempts do not matter.
            if rate_limited >= RL_CAP:
                return Fail(f"rate limited {rate_limited + 1} times; giving up")
            return RetryAt(retry_at, "rate_limited")
        case ErrorClass.AUTH_REQUIRED:
            return NeedsLogin("it broke")
        case ErrorClass.TRANSIENT:
            if counted >= MAX_ATTEMPTS:
                # A verify-only look past the maximum is not counted as a publishing attempt.
                return Fail(f"{MAX_ATTEMPTS} attempts failed; last: it broke")
            return RetryAt(NOW + expected_backoff(counted, 0.5), "transient")
        case _:  # INVALID_CONTENT, UI_CHANGED, DUPLICATE: terminal
            return Fail("it broke")


@pytest.mark.parametrize(
    ("error_class", "attempts", "rl"), CASES, ids=[f"{e}-{a}-{r}" for e, a, r in CASES]
)
def test_decision_table(error_class: ErrorClass, attempts: str, rl: str) -> None:
    counted, rate_limited = COUNTED[attempts], RATE_LIMITED[rl]
    failure = Failure(error_class, "it broke", retry_at=NOW + 42.0)
    got = decide(failure, job(counted=counted, rate_limited=rate_limited), POLICY, NOW, 0.5)
    assert got == expected(error_class, counted, rate_limited)


# ---- RATE_LIMITED ------------------------------------------------------------------------------


def test_rate_limited_waits_until_the_platforms_instant() -> None:
    got = decide(
        Failure(ErrorClass.RATE_LIMITED, "429", NOW + 900.0), job(counted=1), POLICY, NOW, 0
    )
    assert got == RetryAt(NOW + 900.0, "rate_limited")


@pytest.mark.parametrize("retry_at", [None, float("nan")], ids=["missing", "nan"])
def test_rate_limited_without_a_usable_instant_waits_the_default(retry_at: float | None) -> None:
    got = decide(Failure(ErrorClass.RATE_LIMITED, "429", retry_at), job(counted=1), POLICY, NOW, 0)
    assert got == RetryAt(NOW + DEFAULT_RATE_LIMIT_S, "rate_limited")
    assert DEFAULT_RATE_LIMIT_S == 60.0


@pytest.mark.parametrize("retry_at", [NOW, NOW - 2.0], ids=["now", "past"])
def test_rate_limited_whose_instant_has_passed_retries_a_second_later(retry_at: float) -> None:
    """A 429 (Retry-After: 1) whose result reached the coordinator late, e.g. held across a
    reconnect: the limit has lifted, so the account waits a second, not the 60 s default."""
    got = decide(Failure(ErrorClass.RATE_LIMITED, "429", retry_at), job(counted=1), POLICY, NOW, 0)
    assert got == RetryAt(NOW + DEFAULT_LIFTED_RATE_LIMIT_S, "rate_limited")
    assert DEFAULT_LIFTED_RATE_LIMIT_S == 1.0


def test_rate_limited_uses_the_platform_policys_default() -> None:
    policies = RetryPolicies(per_platform={"x": RetryPolicy(default_rate_limit_s=900.0)})
    failure = Failure(ErrorClass.RATE_LIMITED, "429")
    assert decide(failure, job(counted=1), policies.for_platform("x"), NOW, 0) == RetryAt(
        NOW + 900.0, "rate_limited"
    )
    assert decide(failure, job(counted=1), policies.for_platform("sandbox"), NOW, 0) == RetryAt(
        NOW + 60.0, "rate_limited"
    )


def test_rate_limited_attempts_do_not_use_up_the_transient_ones() -> None:
    # Three attempts so far, two of them rate limited: one counted, so a 5xx is retried.
    got = decide(
        Failure(ErrorClass.TRANSIENT, "502"), job(counted=1, rate_limited=2), POLICY, NOW, 0.5
    )
    assert got == RetryAt(NOW + 5.0, "transient")
    # ... and even a job past max_attempts in raw attempts is retried after a 429.
    got = decide(
        Failure(ErrorClass.RATE_LIMITED, "429", NOW + 30), job(counted=5), POLICY, NOW, 0.5
    )
    assert got == RetryAt(NOW + 30, "rate_limited")


def test_rate_limited_gives_up_at_its_own_cap() -> None:
    failure = Failure(ErrorClass.RATE_LIMITED, "429", NOW + 30)
    assert isinstance(
        decide(failure, job(counted=1, rate_limited=RL_CAP - 1), POLICY, NOW, 0), RetryAt
    )
    gave_up = decide(failure, job(counted=1, rate_limited=RL_CAP), POLICY, NOW, 0)
    assert gave_up == Fail(f"rate limited {RL_CAP + 1} times; giving up")


# ---- TRANSIENT ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counted", "base_s"),
    [(1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (5, 80.0), (6, 160.0), (7, 300.0), (12, 300.0)],
)
def test_transient_backoff_doubles_and_caps(counted: int, base_s: float) -> None:
    many = job(counted=counted, max_attempts=100)
    failure = Failure(ErrorClass.TRANSIENT, "503")
    assert decide(failure, many, POLICY, NOW, 0.5) == RetryAt(NOW + base_s, "transient")
    # Jitter bounds: rand=0 gives -20 %, rand -> 1 approaches +20 % and stays below it.
    low = decide(failure, many, POLICY, NOW, 0.0)
    high = decide(failure, many, POLICY, NOW, ALMOST_ONE)
    assert isinstance(low, RetryAt)
    assert isinstance(high, RetryAt)
    assert low.at == pytest.approx(NOW + base_s * 0.8)
    assert high.at == pytest.approx(NOW + base_s * 1.2)
    assert low.at < NOW + base_s < high.at <= NOW + base_s * 1.2
    # The delay itself (away from the epoch's float granularity) stays strictly below +20 %.
    assert POLICY.backoff_s(counted, ALMOST_ONE) < base_s * 1.2
    assert POLICY.backoff_s(counted, 0.0) == pytest.approx(base_s * 0.8)


def test_backoff_defaults_are_the_documented_ones() -> None:
    assert (
        DEFAULT_INITIAL_INTERVAL_S,
        DEFAULT_BACKOFF_FACTOR,
        DEFAULT_MAX_INTERVAL_S,
        DEFAULT_JITTER_FRACTION,
    ) == (5.0, 2.0, 300.0, 0.2)
    policy = RetryPolicy(initial_interval_s=1.0, backoff_factor=3.0, max_interval_s=10.0)
    assert [policy.backoff_s(n, 0.5) for n in (1, 2, 3, 4)] == [1.0, 3.0, 9.0, 10.0]


def test_transient_on_the_last_attempt_fails_with_the_last_error() -> None:
    got = decide(Failure(ErrorClass.TRANSIENT, "504 gateway"), job(counted=3), POLICY, NOW, 0.5)
    assert got == Fail("3 attempts failed; last: 504 gateway")


def test_transient_honours_a_jobs_own_max_attempts() -> None:
    failure = Failure(ErrorClass.TRANSIENT, "503")
    assert isinstance(decide(failure, job(counted=4, max_attempts=5), POLICY, NOW, 0.5), RetryAt)
    assert isinstance(decide(failure, job(counted=1, max_attempts=1), POLICY, NOW, 0.5), Fail)


# ---- the rest ----------------------------------------------------------------------------------


def test_auth_required_needs_a_login_and_never_retries_by_itself() -> None:
    for counted in (1, 3, 9):
        got = decide(Failure(ErrorClass.AUTH_REQUIRED, "401"), job(counted=counted), POLICY, NOW, 0)
        assert got == NeedsLogin("401")
    assert decide(Failure(ErrorClass.AUTH_REQUIRED, ""), job(counted=1), POLICY, NOW, 0) == (
        NeedsLogin("login required")
    )


@pytest.mark.parametrize(
    "error_class", [ErrorClass.INVALID_CONTENT, ErrorClass.UI_CHANGED, ErrorClass.DUPLICATE]
)
def test_terminal_classes_fail_on_the_first_attempt(error_class: ErrorClass) -> None:
    assert decide(Failure(error_class, "no"), job(counted=1), POLICY, NOW, 0) == Fail("no")
    # Without a message the class names the failure.
    assert decide(Failure(error_class, ""), job(counted=1), POLICY, NOW, 0) == Fail(
        error_class.value.lower()
    )


# ---- a lease lost without a result -------------------------------------------------------------


def test_lease_lost_retries_at_once_while_attempts_last() -> None:
    assert decide_lease_lost(job(counted=1), NOW) == RetryAt(NOW, "lease_lost")
    assert decide_lease_lost(job(counted=2), NOW) == RetryAt(NOW, "lease_lost")
    # Rate-limited attempts do not count here either.
    assert decide_lease_lost(job(counted=2, rate_limited=7), NOW) == RetryAt(NOW, "lease_lost")


@pytest.mark.parametrize("counted", [3, 4])
def test_lease_lost_on_the_last_attempt_fails(counted: int) -> None:
    got = decide_lease_lost(job(counted=counted), NOW)
    assert got == Fail(f"lease lost on attempt {counted} of 3")
