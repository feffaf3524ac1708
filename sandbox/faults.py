"""The sandbox's fault model: what to inject, which requests it hits, what the reply looks like.

Pure: no I/O and no clock of its own (callers pass ``now``). The app does the side effects a
fault implies (mark an account logged out, sleep, record the post) and sends the `Reply`.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from enum import StrEnum
from typing import Any, TypeVar

from sandbox import SandboxError

WILDCARD = "*"
DEFAULT_PLATFORM = "sandbox"
DEFAULT_COUNT = 1
DEFAULT_RETRY_AFTER_SECONDS = 2.0
DEFAULT_SERVER_ERROR_STATUS = 500
DEFAULT_HANG_SECONDS = 30.0

_E = TypeVar("_E", bound=StrEnum)


class FaultSpecError(SandboxError):
    """A fault request that cannot be understood; the message says which field and why."""


class FaultKind(StrEnum):
    RATE_LIMIT = "rate_limit"
    AUTH = "auth"
    INVALID = "invalid"
    # 5xx with the sandbox's documented "not processed" body (`"created": false`).
    SERVER_ERROR = "server_error"
    # 5xx from a gateway in front of the platform: whether the post was made is unknown.
    UPSTREAM_ERROR = "upstream_error"
    HANG = "hang"
    DUPLICATE = "duplicate"
    ACCEPT_THEN_FAIL = "accept_then_fail"
    # The post is recorded, then the answer hangs (the client times out, or dies waiting).
    ACCEPT_THEN_HANG = "accept_then_hang"
    # Page faults (op "page", the composer sites in sandbox/composer): they change a page rather
    # than answer a request. The composer renders a renamed data-testid/aria-label; ...
    RENAMED_SELECTOR = "renamed_selector"
    # ... the page is served `hang_seconds` late; ...
    SLOW_PAGE = "slow_page"
    # ... the page redirects to a 2FA challenge (recognised by a browser worker, never solved).
    CHALLENGE = "challenge"


PAGE_KINDS = frozenset({FaultKind.RENAMED_SELECTOR, FaultKind.SLOW_PAGE, FaultKind.CHALLENGE})


class Op(StrEnum):
    """A platform API operation. Requests are always a concrete op; `ANY` only appears in faults."""

    CREATE = "create"
    LOOKUP = "lookup"
    ME = "me"
    PAGE = "page"  # a page load of a composer site (sandbox/composer)
    ANY = "any"


class RetryAfterFormat(StrEnum):
    SECONDS = "seconds"  # Retry-After: 3
    HTTP_DATE = "http_date"  # Retry-After: Tue, 14 Nov 2023 22:13:23 GMT
    RESET_UNIX = "reset_unix"  # X-RateLimit-Reset: 1700000003 (X, Bluesky style)


@dataclass(frozen=True, kw_only=True)
class FaultSpec:
    platform: str
    account: str
    kind: FaultKind
    count: int = DEFAULT_COUNT
    op: Op = Op.CREATE
    retry_after_seconds: float = DEFAULT_RETRY_AFTER_SECONDS
    retry_after_format: RetryAfterFormat = RetryAfterFormat.SECONDS
    status: int = DEFAULT_SERVER_ERROR_STATUS
    hang_seconds: float = DEFAULT_HANG_SECONDS
    message: str | None = None

    def matches(self, platform: str, account: str, op: Op) -> bool:
        return (
            self.platform in (platform, WILDCARD)
            and self.account in (account, WILDCARD)
            and self.op in (op, Op.ANY)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "account": self.account,
            "kind": self.kind.value,
            "count": self.count,
            "op": self.op.value,
            "retry_after_seconds": self.retry_after_seconds,
            "retry_after_format": self.retry_after_format.value,
            "status": self.status,
            "hang_seconds": self.hang_seconds,
            "message": self.message,
        }


_FIELDS = frozenset(FaultSpec.__dataclass_fields__)


def parse_fault_spec(data: object) -> FaultSpec:
    """Validate an admin request body; unknown keys are refused so a typo is not ignored."""
    if not isinstance(data, Mapping):
        raise FaultSpecError("a fault must be a JSON object")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise FaultSpecError(f"unknown fault field(s) {unknown}; known: {sorted(_FIELDS)}")
    if "kind" not in data:
        raise FaultSpecError(f"'kind' is required: one of {[k.value for k in FaultKind]}")
    # A gateway's failure is a 502 unless said otherwise; the platform's own a 500.
    default_status = 502 if data.get("kind") == FaultKind.UPSTREAM_ERROR else 500
    status = _int(data, "status", default_status)
    if not 500 <= status <= 599:
        raise FaultSpecError(f"'status' must be a 5xx code, got {status}")
    count = _int(data, "count", DEFAULT_COUNT)
    if count < 1:
        raise FaultSpecError(f"'count' must be at least 1, got {count}")
    message = data.get("message")
    if message is not None and not isinstance(message, str):
        raise FaultSpecError("'message' must be a string")
    kind = _enum(FaultKind, data, "kind", FaultKind.RATE_LIMIT)
    op = _enum(Op, data, "op", Op.PAGE if kind in PAGE_KINDS else Op.CREATE)
    if (kind in PAGE_KINDS) != (op is Op.PAGE):
        raise FaultSpecError(
            f"kind {kind.value!r} cannot take op {op.value!r}: the page kinds "
            f"{sorted(k.value for k in PAGE_KINDS)} go with op 'page' (the default for them), "
            "the other kinds with an API op"
        )
    return FaultSpec(
        platform=_name(data, "platform", DEFAULT_PLATFORM),
        account=_name(data, "account", WILDCARD),
        kind=kind,
        count=count,
        op=op,
        retry_after_seconds=_seconds(data, "retry_after_seconds", DEFAULT_RETRY_AFTER_SECONDS),
        retry_after_format=_enum(
            RetryAfterFormat, data, "retry_after_format", RetryAfterFormat.SECONDS
        ),
        status=status,
        hang_seconds=_seconds(data, "hang_seconds", DEFAULT_HANG_SECONDS),
        message=message,
    )


def _name(data: Mapping[str, object], key: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value:
        raise FaultSpecError(f"{key!r} must be a non-empty string (or {WILDCARD!r})")
    return value


def _int(data: Mapping[str, object], key: str, default: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FaultSpecError(f"{key!r} must be an integer")
    return value


def _seconds(data: Mapping[str, object], key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultSpecError(f"{key!r} must be a number of seconds")
    if value < 0:
        raise FaultSpecError(f"{key!r} must not be negative")
    return float(value)


def _enum(cls: type[_E], data: Mapping[str, object], key: str, default: _E) -> _E:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise FaultSpecError(f"{key!r} must be one of {[m.value for m in cls]}")
    try:
        return cls(value)
    except ValueError:
        raise FaultSpecError(f"{key!r} must be one of {[m.value for m in cls]}") from None


@dataclass(kw_only=True)
class PendingFault:
    id: str
    spec: FaultSpec
    remaining: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "remaining": self.remaining, **self.spec.to_json()}


class FaultQueue:
    """Pending faults in FIFO order; each matching request consumes one unit of the oldest match."""

    def __init__(self) -> None:
        self._pending: list[PendingFault] = []
        # Ids keep counting across clear() so a stale id never names a newer fault.
        self._next_id = 1

    def add(self, spec: FaultSpec) -> PendingFault:
        fault = PendingFault(id=f"fault-{self._next_id}", spec=spec, remaining=spec.count)
        self._next_id += 1
        self._pending.append(fault)
        return fault

    def take(
        self, platform: str, account: str, op: Op, kinds: Container[FaultKind] | None = None
    ) -> FaultSpec | None:
        """The oldest pending match (of one of `kinds`, when given), one unit consumed."""
        for index, fault in enumerate(self._pending):
            if fault.spec.matches(platform, account, op) and (
                kinds is None or fault.spec.kind in kinds
            ):
                fault.remaining -= 1
                if fault.remaining == 0:
                    del self._pending[index]
                return fault.spec
        return None

    def pending(self) -> list[PendingFault]:
        return list(self._pending)

    def clear(self) -> int:
        cleared = len(self._pending)
        self._pending.clear()
        return cleared


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def whole_seconds(seconds: float) -> int:
    """Round a wait up: a client told to come back early would just be refused again."""
    return math.ceil(seconds)


def fault_reply(spec: FaultSpec, *, now: float, existing_id: str | None = None) -> Reply:
    """What the platform answers when `spec` fires at Unix time `now`."""
    match spec.kind:
        case FaultKind.RATE_LIMIT:
            wait = whole_seconds(spec.retry_after_seconds)
            body = {
                "error": "rate_limited",
                "message": spec.message
                or f"Rate limit exceeded. Please try again in {wait} seconds.",
                "retry_after": wait,
            }
            return Reply(429, body, rate_limit_headers(spec, now=now))
        case FaultKind.AUTH:
            message = spec.message or "session expired; log in again"
            return Reply(401, {"error": "auth_required", "message": message}, {})
        case FaultKind.INVALID:
            message = spec.message or "content rejected by platform policy"
            return Reply(400, {"error": "invalid_content", "message": message}, {})
        case FaultKind.SERVER_ERROR:
            # The sandbox's documented "not processed" answer: nothing was created.
            message = spec.message or "internal server error"
            body = {"error": "server_error", "message": message, "created": False}
            return Reply(spec.status, body, {})
        case FaultKind.UPSTREAM_ERROR:
            message = spec.message or "bad gateway"
            return Reply(spec.status, {"error": "upstream_error", "message": message}, {})
        case FaultKind.HANG:
            message = spec.message or "upstream timed out"
            return Reply(504, {"error": "timeout", "message": message}, {})
        case FaultKind.DUPLICATE:
            body = {
                "error": "duplicate",
                "message": spec.message or "this post already exists",
                "existing_id": existing_id,
            }
            return Reply(409, body, {})
        case FaultKind.ACCEPT_THEN_FAIL | FaultKind.ACCEPT_THEN_HANG:
            message = spec.message or "internal server error"
            return Reply(500, {"error": "server_error", "message": message}, {})
        case FaultKind.RENAMED_SELECTOR | FaultKind.SLOW_PAGE | FaultKind.CHALLENGE:
            raise ValueError(f"{spec.kind.value} changes a page; it has no reply of its own")


def rate_limit_headers(spec: FaultSpec, *, now: float) -> dict[str, str]:
    wait = whole_seconds(spec.retry_after_seconds)
    match spec.retry_after_format:
        case RetryAfterFormat.SECONDS:
            return {"Retry-After": str(wait)}
        case RetryAfterFormat.HTTP_DATE:
            # HTTP dates have whole-second resolution: round the instant up, never down.
            return {
                "Retry-After": formatdate(math.ceil(now + spec.retry_after_seconds), usegmt=True)
            }
        case RetryAfterFormat.RESET_UNIX:
            reset = math.ceil(now + spec.retry_after_seconds)
            return {"X-RateLimit-Reset": str(reset), "X-RateLimit-Remaining": "0"}
