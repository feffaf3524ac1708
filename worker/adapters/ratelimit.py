"""Rate-limit signals of every shape, normalised to one "closed until" instant. Pure: no I/O, no
clock of its own (callers pass `now`, Unix seconds).

Shapes understood (header names case-insensitive):
- `Retry-After`: delay seconds, or an HTTP date.
- `X-RateLimit-Reset` / `X-Rate-Limit-Reset` / `RateLimit-Reset`: Unix seconds (X, Bluesky),
  Unix milliseconds, an ISO 8601 time (Mastodon), or a small number = delay seconds (IETF draft).
- X's 24-hour caps: `x-user-limit-24hour-remaining: 0` / `x-app-limit-24hour-remaining: 0` with
  the matching `-reset` header (Unix seconds). Always a quota cap.
- Meta's `X-Business-Use-Case-Usage`: JSON `{id: [{..., "estimated_time_to_regain_access": min}]}`.
- A JSON body's `retry_after` (seconds; the sandbox and several APIs send it).
- LinkedIn's daily quota (the adapter passes `daily_quota=True`): closed until next midnight UTC.

When several signals are present the latest instant wins: coming back early only earns another
429. A wait of `QUOTA_CAP_THRESHOLD_S` or more counts as a quota cap rather than a short throttle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from worker.errors import RateLimited

# Nothing usable in the answer: the platform said "slow down" without saying how long.
DEFAULT_FALLBACK_S = 60.0
# Never come back sooner than this, even when a reset instant has already passed (clock skew).
MIN_WAIT_S = 1.0
# Waits this long or longer are quotas (hourly/daily caps), not throttles.
QUOTA_CAP_THRESHOLD_S = 15 * 60.0
# Numeric reset values above these are absolute instants, below them delays in seconds.
_UNIX_MS_FLOOR = 1e12
_UNIX_S_FLOOR = 1e9

_RESET_HEADERS = ("x-ratelimit-reset", "x-rate-limit-reset", "ratelimit-reset")
_X_DAILY_PREFIXES = ("x-user-limit-24hour", "x-app-limit-24hour")


@dataclass(frozen=True, slots=True)
class RateLimit:
    closed_until: float  # Unix seconds
    quota_cap: bool
    source: str  # the signal that decided closed_until, for logs

    def wait_s(self, now: float) -> float:
        return max(0.0, self.closed_until - now)


def parse_retry_after(value: str, now: float) -> float | None:
    """`Retry-After: 120` or `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT` -> instant."""
    value = value.strip()
    seconds = _number(value)
    if seconds is not None:
        return now + max(0.0, seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return _timestamp(when)


def parse_reset(value: str, now: float) -> float | None:
    """A reset header: Unix seconds or ms, ISO 8601, or (small numbers) delay seconds."""
    value = value.strip()
    number = _number(value)
    if number is not None:
        if number >= _UNIX_MS_FLOOR:
            return number / 1000.0
        if number >= _UNIX_S_FLOOR:
            return number
        return now + max(0.0, number)
    return parse_iso(value)


def parse_iso(value: str) -> float | None:
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return _timestamp(when)


def parse_business_use_case_usage(value: str, now: float) -> float | None:
    """Meta's header: the longest `estimated_time_to_regain_access` (minutes) of any entry."""
    try:
        data = json.loads(value)
    except ValueError:
        return None
    minutes: list[float] = []
    entries = data.values() if isinstance(data, dict) else []
    for group in entries:
        for entry in group if isinstance(group, list) else [group]:
            if isinstance(entry, dict):
                raw = entry.get("estimated_time_to_regain_access")
                if isinstance(raw, int | float) and not isinstance(raw, bool) and raw > 0:
                    minutes.append(float(raw))
    return now + max(minutes) * 60.0 if minutes else None


def next_midnight_utc(now: float) -> float:
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=1)).timestamp()


def normalise(
    headers: Mapping[str, str],
    *,
    now: float,
    body: object = None,
    daily_quota: bool = False,
) -> RateLimit:
    """One `RateLimit` from everything a rate-limited answer carried."""
    h = {k.lower(): v for k, v in headers.items()}
    found: list[tuple[float, bool, str]] = []  # (instant, explicit quota, source)

    if "retry-after" in h and (at := parse_retry_after(h["retry-after"], now)) is not None:
        found.append((at, False, "retry-after"))
    for name in _RESET_HEADERS:
        if name in h and (at := parse_reset(h[name], now)) is not None:
            found.append((at, False, name))
    for prefix in _X_DAILY_PREFIXES:
        remaining = _number(h.get(f"{prefix}-remaining", ""))
        reset = h.get(f"{prefix}-reset")
        if remaining == 0 and reset is not None and (at := parse_reset(reset, now)) is not None:
            found.append((at, True, f"{prefix} quota"))
    buc = h.get("x-business-use-case-usage")
    if buc is not None and (at := parse_business_use_case_usage(buc, now)) is not None:
        found.append((at, False, "x-business-use-case-usage"))
    if isinstance(body, Mapping):
        seconds = body.get("retry_after")
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            found.append((now + max(0.0, float(seconds)), False, "body retry_after"))
    if daily_quota:
        found.append((next_midnight_utc(now), True, "daily quota"))

    if not found:
        return RateLimit(closed_until=now + DEFAULT_FALLBACK_S, quota_cap=False, source="default")
    at, explicit_quota, source = max(found, key=lambda item: item[0])
    at = max(at, now + MIN_WAIT_S)
    quota = explicit_quota or any(q for _, q, _ in found) or at - now >= QUOTA_CAP_THRESHOLD_S
    return RateLimit(closed_until=at, quota_cap=quota, source=source)


def _number(value: str) -> float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _timestamp(when: datetime) -> float:
    if when.tzinfo is None:  # platforms mean UTC when they leave the zone out
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def rate_limited(
    message: str, limit: RateLimit, *, now: float, http_status: int | None = 429
) -> RateLimited:
    """The error for a rate-limited answer: `message` plus what kind of limit, until when
    (UTC and as a wait) and which signal said so."""
    kind = "quota cap" if limit.quota_cap else "throttled"
    until = datetime.fromtimestamp(limit.closed_until, UTC).isoformat(timespec="seconds")
    return RateLimited(
        f"{message} ({kind} until {until}, in {limit.wait_s(now):.0f}s, from {limit.source})",
        retry_at=limit.closed_until,
        quota_cap=limit.quota_cap,
        http_status=http_status,
    )
