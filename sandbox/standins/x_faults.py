"""What X answers when something goes wrong: the error bodies and headers of the real API, and
the faults a test can inject into the X stand-in. Pure: no I/O, no clock (callers pass `now`).

X v2 answers errors with RFC 7807 problem objects, served as `application/json`:
- typed problems for request errors, e.g. `{"title": "Invalid Request", "detail": "One or more
  parameters to your request was invalid.", "type": "https://api.x.com/2/problems/
  invalid-request", "errors": [{"message": ..., "parameters": {...}}]}`;
- generic `about:blank` problems for the rest: `{"title": "Forbidden", "detail": "You are not
  allowed to create a Tweet with duplicate content.", "type": "about:blank", "status": 403}`,
  401 Unauthorized, 429 Too Many Requests, 503 Service Unavailable.
Rate limits come as `x-rate-limit-{limit,remaining,reset}` (reset in Unix seconds) on every
answer, plus `x-user-limit-24hour-*` / `x-app-limit-24hour-*` on `POST /2/tweets`.
The OAuth 2.0 token endpoint answers errors the OAuth way: `{"error": ..., "error_description"}`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

PROBLEMS = "https://api.x.com/2/problems/"
INVALID_REQUEST_DETAIL = "One or more parameters to your request was invalid."
DUPLICATE_DETAIL = "You are not allowed to create a Tweet with duplicate content."
NOT_PERMITTED_DETAIL = "You are not permitted to perform this action."
DEFAULT_RESET_IN_S = 2.0
DEFAULT_HANG_S = 30.0
WILDCARD = "*"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def problem(status: int, detail: str | None = None) -> Reply:
    """X's generic problem (`type: about:blank`); detail defaults to the title, as X does."""
    title = _TITLES.get(status, "Error")
    body = {"title": title, "detail": detail or title, "type": "about:blank", "status": status}
    return Reply(status, body)


def invalid_request(message: str, parameters: Mapping[str, list[str]] | None = None) -> Reply:
    error: dict[str, Any] = {"message": message}
    if parameters:
        error["parameters"] = dict(parameters)
    body = {
        "errors": [error],
        "title": "Invalid Request",
        "detail": INVALID_REQUEST_DETAIL,
        "type": f"{PROBLEMS}invalid-request",
    }
    return Reply(400, body)


def oauth_error(status: int, error: str, description: str) -> Reply:
    return Reply(status, {"error": error, "error_description": description})


class Op(StrEnum):
    CREATE = "create"  # POST /2/tweets
    TIMELINE = "timeline"  # GET /2/users/{id}/tweets
    ME = "me"  # GET /2/users/me
    MEDIA = "media"  # the media upload endpoints
    TOKEN = "token"  # POST /2/oauth2/token
    ANY = "any"


class FaultKind(StrEnum):
    THROTTLE = "throttle"  # 429, x-rate-limit-remaining: 0 until x-rate-limit-reset
    USER_CAP = "user_cap"  # 429, x-user-limit-24hour-remaining: 0 until its reset
    APP_CAP = "app_cap"  # 429, x-app-limit-24hour-remaining: 0 until its reset
    EXPIRED_TOKEN = "expired_token"  # the access token expires now: 401 until refreshed
    REFRESH_REFUSED = "refresh_refused"  # token endpoint: 400 invalid_request
    INVALID = "invalid"  # 400 invalid-request problem
    NOT_PERMITTED = "not_permitted"  # 403 "You are not permitted to perform this action."
    DUPLICATE = "duplicate"  # 403 duplicate content, whether or not a twin exists
    UNAVAILABLE = "unavailable"  # 5xx (503 unless `status` says otherwise)
    ACCEPT_THEN_HANG = "accept_then_hang"  # the tweet is made, the answer never comes
    PROCESSING_FAILED = "processing_failed"  # media: finalize -> processing_info failed


class FaultError(ValueError):
    """An injection request that cannot be understood; says which field and why."""


@dataclass(frozen=True, kw_only=True)
class Fault:
    kind: FaultKind
    username: str = WILDCARD
    op: Op = Op.CREATE
    count: int = 1
    reset_in_s: float = DEFAULT_RESET_IN_S  # 429s: the reset header is now + this, rounded up
    status: int = 503  # UNAVAILABLE only
    hang_s: float = DEFAULT_HANG_S
    detail: str | None = None

    def matches(self, username: str, op: Op) -> bool:
        return self.username in (username, WILDCARD) and self.op in (op, Op.ANY)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "username": self.username,
            "op": self.op.value,
            "count": self.count,
            "reset_in_s": self.reset_in_s,
            "status": self.status,
            "hang_s": self.hang_s,
            "detail": self.detail,
        }


def parse_fault(data: object) -> Fault:
    if not isinstance(data, Mapping):
        raise FaultError("a fault must be a JSON object")
    unknown = sorted(set(data) - set(Fault.__dataclass_fields__))
    if unknown:
        raise FaultError(f"unknown field(s) {unknown}; known: {sorted(Fault.__dataclass_fields__)}")
    try:
        kind = FaultKind(str(data["kind"]))
        op = Op(str(data.get("op", Op.CREATE.value)))
    except KeyError:
        raise FaultError(f"'kind' is required: one of {[k.value for k in FaultKind]}") from None
    except ValueError as exc:
        raise FaultError(str(exc)) from None
    count, status = data.get("count", 1), data.get("status", 503)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise FaultError("'count' must be a positive integer")
    if isinstance(status, bool) or not isinstance(status, int) or not 500 <= status <= 599:
        raise FaultError("'status' must be a 5xx code")
    username, detail = data.get("username", WILDCARD), data.get("detail")
    if not isinstance(username, str) or not username:
        raise FaultError("'username' must be a non-empty string (or '*')")
    if detail is not None and not isinstance(detail, str):
        raise FaultError("'detail' must be a string")
    return Fault(
        kind=kind,
        username=username,
        op=op,
        count=count,
        reset_in_s=_seconds(data, "reset_in_s", DEFAULT_RESET_IN_S),
        status=status,
        hang_s=_seconds(data, "hang_s", DEFAULT_HANG_S),
        detail=detail,
    )


def _seconds(data: Mapping[str, object], key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultError(f"{key!r} must be a number of seconds")
    if value < 0:
        raise FaultError(f"{key!r} must not be negative")
    return float(value)


class FaultQueue:
    """Pending faults, oldest first; each matching request uses up one of the oldest match."""

    def __init__(self) -> None:
        self._pending: list[list[Any]] = []  # [fault, remaining]

    def add(self, fault: Fault) -> None:
        self._pending.append([fault, fault.count])

    def take(self, username: str, op: Op, *, finalize: bool = False) -> Fault | None:
        """The fault this request meets. ACCEPT_THEN_HANG waits for a create and
        PROCESSING_FAILED for a media FINALIZE: other requests pass them by."""
        for index, entry in enumerate(self._pending):
            fault: Fault = entry[0]
            if fault.kind is FaultKind.ACCEPT_THEN_HANG and op is not Op.CREATE:
                continue
            if fault.kind is FaultKind.PROCESSING_FAILED and not finalize:
                continue
            if fault.matches(username, op):
                entry[1] -= 1
                if entry[1] == 0:
                    del self._pending[index]
                return fault
        return None

    def pending(self) -> list[dict[str, Any]]:
        return [{**fault.to_json(), "remaining": left} for fault, left in self._pending]

    def clear(self) -> int:
        cleared = len(self._pending)
        self._pending.clear()
        return cleared


# ---- rate limits -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """One rate-limit window as X reports it."""

    limit: int
    remaining: int
    reset: int  # Unix seconds


def window_headers(prefix: str, window: Window) -> dict[str, str]:
    return {
        f"{prefix}-limit": str(window.limit),
        f"{prefix}-remaining": str(max(0, window.remaining)),
        f"{prefix}-reset": str(window.reset),
    }


def rate_limit_headers(
    rate: Window, *, user_day: Window | None = None, app_day: Window | None = None
) -> dict[str, str]:
    headers = window_headers("x-rate-limit", rate)
    if user_day is not None:
        headers |= window_headers("x-user-limit-24hour", user_day)
    if app_day is not None:
        headers |= window_headers("x-app-limit-24hour", app_day)
    return headers


def rate_limited(
    fault: Fault,
    *,
    now: float,
    rate: Window,
    user_day: Window | None,
    app_day: Window | None,
) -> Reply:
    """The 429 a THROTTLE / USER_CAP / APP_CAP fault answers, headers as X sends them: the
    exhausted window says remaining 0 and resets at now + reset_in_s (rounded up)."""
    reset = math.ceil(now + fault.reset_in_s)
    match fault.kind:
        case FaultKind.THROTTLE:
            rate = Window(rate.limit, 0, reset)
        case FaultKind.USER_CAP:
            user_day = Window(user_day.limit if user_day else 100, 0, reset)
        case FaultKind.APP_CAP:
            app_day = Window(app_day.limit if app_day else 1667, 0, reset)
    reply = problem(429, fault.detail)
    return Reply(429, reply.body, rate_limit_headers(rate, user_day=user_day, app_day=app_day))


def fault_reply(fault: Fault) -> Reply:
    """The answer of a fault that is not a 429 (those need the windows: `rate_limited`)."""
    match fault.kind:
        case FaultKind.EXPIRED_TOKEN:
            return problem(401, fault.detail)
        case FaultKind.REFRESH_REFUSED:
            return oauth_error(
                400, "invalid_request", fault.detail or "Value passed for the token was invalid."
            )
        case FaultKind.INVALID:
            return invalid_request(fault.detail or "Your request was rejected.")
        case FaultKind.NOT_PERMITTED:
            return problem(403, fault.detail or NOT_PERMITTED_DETAIL)
        case FaultKind.DUPLICATE:
            return problem(403, fault.detail or DUPLICATE_DETAIL)
        case _:
            return problem(fault.status, fault.detail)
