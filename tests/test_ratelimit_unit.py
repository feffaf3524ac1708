"""Every rate-limit signal shape normalises to the right "closed until" instant (injected now)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import formatdate

import pytest

from worker.adapters import ratelimit
from worker.adapters.ratelimit import normalise

NOW = datetime(2026, 11, 3, 14, 30, 0, tzinfo=UTC).timestamp()


def test_retry_after_seconds_is_a_short_throttle() -> None:
    limit = normalise({"Retry-After": "30"}, now=NOW)
    assert limit.closed_until == NOW + 30
    assert not limit.quota_cap
    assert limit.source == "retry-after"


def test_retry_after_http_date() -> None:
    limit = normalise({"retry-after": formatdate(NOW + 90, usegmt=True)}, now=NOW)
    assert limit.closed_until == NOW + 90
    assert not limit.quota_cap


def test_x_ratelimit_reset_unix_seconds() -> None:
    limit = normalise({"X-RateLimit-Reset": str(int(NOW) + 120)}, now=NOW)
    assert limit.closed_until == NOW + 120
    assert limit.source == "x-ratelimit-reset"


def test_x_style_reset_header_and_bluesky_ratelimit_reset() -> None:
    assert normalise({"x-rate-limit-reset": str(int(NOW) + 5)}, now=NOW).closed_until == NOW + 5
    assert normalise({"RateLimit-Reset": str(int(NOW) + 7)}, now=NOW).closed_until == NOW + 7


def test_reset_unix_milliseconds() -> None:
    limit = normalise({"X-RateLimit-Reset": str(int((NOW + 42) * 1000))}, now=NOW)
    assert limit.closed_until == pytest.approx(NOW + 42)


def test_reset_small_number_is_delay_seconds() -> None:
    # IETF RateLimit-Reset draft: seconds until the window resets.
    assert normalise({"RateLimit-Reset": "12"}, now=NOW).closed_until == NOW + 12


def test_mastodon_iso_reset() -> None:
    limit = normalise({"X-RateLimit-Reset": "2026-11-03T14:35:00.000Z"}, now=NOW)
    assert limit.closed_until == NOW + 300
    assert not limit.quota_cap


def test_mastodon_iso_reset_far_away_is_a_quota_cap() -> None:
    limit = normalise({"X-RateLimit-Reset": "2026-11-03T17:30:00Z"}, now=NOW)
    assert limit.closed_until == NOW + 3 * 3600
    assert limit.quota_cap


def test_meta_business_use_case_usage_minutes() -> None:
    usage = {
        "1234": [
            {"type": "pages", "call_count": 100, "estimated_time_to_regain_access": 0},
            {"type": "instagram", "call_count": 100, "estimated_time_to_regain_access": 12},
        ]
    }
    limit = normalise({"X-Business-Use-Case-Usage": json.dumps(usage)}, now=NOW)
    assert limit.closed_until == NOW + 12 * 60
    assert not limit.quota_cap
    long_wait = {"1": [{"estimated_time_to_regain_access": 60}]}
    assert normalise({"x-business-use-case-usage": json.dumps(long_wait)}, now=NOW).quota_cap


def test_linkedin_daily_quota_closes_until_next_midnight_utc() -> None:
    limit = normalise({}, now=NOW, daily_quota=True)
    assert limit.closed_until == datetime(2026, 11, 4, tzinfo=UTC).timestamp()
    assert limit.quota_cap
    assert limit.source == "daily quota"


def test_next_midnight_at_exact_midnight_is_the_following_day() -> None:
    midnight = datetime(2026, 11, 4, tzinfo=UTC).timestamp()
    assert ratelimit.next_midnight_utc(midnight) == midnight + 86400


def test_x_24_hour_user_cap_is_a_quota_even_when_close() -> None:
    headers = {
        "x-rate-limit-reset": str(int(NOW) + 60),
        "x-user-limit-24hour-remaining": "0",
        "x-user-limit-24hour-reset": str(int(NOW) + 600),
    }
    limit = normalise(headers, now=NOW)
    assert limit.closed_until == NOW + 600
    assert limit.quota_cap
    assert limit.source == "x-user-limit-24hour quota"


def test_x_24_hour_headers_with_remaining_budget_are_ignored() -> None:
    headers = {"x-user-limit-24hour-remaining": "3", "x-user-limit-24hour-reset": str(NOW + 9999)}
    limit = normalise({**headers, "retry-after": "10"}, now=NOW)
    assert limit.closed_until == NOW + 10
    assert not limit.quota_cap


def test_json_body_retry_after() -> None:
    body = {"error": "rate_limited", "message": "slow down", "retry_after": 4}
    limit = normalise({}, now=NOW, body=body)
    assert limit.closed_until == NOW + 4
    assert limit.source == "body retry_after"


def test_latest_signal_wins() -> None:
    headers = {"Retry-After": "5", "X-RateLimit-Reset": str(int(NOW) + 50)}
    limit = normalise(headers, now=NOW, body={"retry_after": 5})
    assert limit.closed_until == NOW + 50
    assert limit.source == "x-ratelimit-reset"


def test_no_signal_falls_back_to_a_default_throttle() -> None:
    limit = normalise({"Content-Type": "application/json"}, now=NOW, body={"error": "x"})
    assert limit.closed_until == NOW + ratelimit.DEFAULT_FALLBACK_S
    assert not limit.quota_cap
    assert limit.source == "default"


def test_reset_in_the_past_still_waits_a_little() -> None:
    limit = normalise({"X-RateLimit-Reset": str(int(NOW) - 30)}, now=NOW)
    assert limit.closed_until == NOW + ratelimit.MIN_WAIT_S


def test_garbage_values_are_ignored() -> None:
    headers = {
        "Retry-After": "soon",
        "X-RateLimit-Reset": "tomorrow-ish",
        "X-Business-Use-Case-Usage": "{not json",
    }
    assert normalise(headers, now=NOW, body={"retry_after": True}).source == "default"


def test_threshold_separates_throttle_from_quota() -> None:
    just_under = ratelimit.QUOTA_CAP_THRESHOLD_S - 1
    assert not normalise({"Retry-After": str(int(just_under))}, now=NOW).quota_cap
    at = ratelimit.QUOTA_CAP_THRESHOLD_S
    assert normalise({"Retry-After": str(int(at))}, now=NOW).quota_cap
