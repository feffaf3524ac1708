"""Meta's error answers and the stand-in's fault injection, in Meta's real shapes.

Every Graph failure is `{"error": {"message", "type", "code", "error_subcode", "is_transient",
"fbtrace_id"}}` with an HTTP status of its own (mostly 400; 403 for permissions; 500/503 for
codes 1/2), sometimes with usage headers (`X-Business-Use-Case-Usage`, `X-App-Usage`).
Sources: developers.facebook.com/docs/graph-api/guides/error-handling and .../overview/
rate-limiting; Instagram's reference/error-codes.

A fault (POST {prefix}/_standin/faults) names the operation and the Page / IG user it hits:

    {"op": "feed", "target": "1001", "code": 32, "buc_minutes": 7, "count": 1}
    {"op": "media_publish", "target": "*", "kind": "accept_then_hang"}

ops: feed, photos, media, media_publish (the creates), container_status, publishing_limit,
read (GET of an edge), node (GET of a Page / IG user), any. kinds: `error` (answer the error,
do nothing), `accept_then_error` (do it, then answer the error), `accept_then_hang` (do it, then
hold the answer until the client goes away, the server stops, or `hang_seconds`). The error is
Meta's for `code` (table below) unless `status`, `subcode`, `message`, `type`, `is_transient`
say otherwise; `headers` are sent as given, and `buc_minutes` / `app_usage` build the two usage
headers in Meta's format. A code 190 fault also expires the target's token, as a real expiry
does: it stays refused until the admin sets a token again.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

OPS = frozenset(
    {"feed", "photos", "media", "media_publish", "container_status", "publishing_limit", "read"}
    | {"node", "any"}
)
KINDS = frozenset({"error", "accept_then_error", "accept_then_hang"})
DEFAULT_HANG_S = 30.0

# code -> (HTTP status, is_transient, subcode, message); the type is always OAuthException.
_PAGE_BUC = "There have been too many calls to this Page account. Wait a bit and try again."
_PERMISSIONS = (
    "If posting to a page, requires both pages_read_engagement and pages_manage_posts permission"
)
_ABUSIVE = "The action attempted has been deemed abusive or is otherwise disallowed"
_IG_BUC = "There have been too many calls to this Instagram account. Wait a bit and try again."
KNOWN: dict[int, tuple[int, bool, int | None, str]] = {
    1: (500, True, None, "An unknown error has occurred."),
    2: (503, True, None, "An unexpected error has occurred. Please retry your request later."),
    4: (400, True, None, "(#4) Application request limit reached"),
    10: (403, False, None, "(#10) Application does not have permission for this action"),
    17: (400, True, None, "(#17) User request limit reached"),
    32: (400, True, None, "(#32) Page request limit reached"),
    100: (400, False, None, "(#100) Invalid parameter"),
    190: (400, False, 463, "Error validating access token: Session has expired."),
    200: (403, False, None, f"(#200) {_PERMISSIONS}"),
    368: (400, False, 1390008, _ABUSIVE),
    506: (400, False, None, "(#506) Duplicate status message"),
    613: (400, True, None, "(#613) Calls to this api have exceeded the rate limit."),
    80001: (400, True, None, f"(#80001) {_PAGE_BUC}"),
    80002: (400, True, None, f"(#80002) {_IG_BUC}"),
    9: (400, False, 2207042, "Application request limit reached"),
    9004: (400, False, 2207052, "Only photo or video can be accepted as media type."),
    9007: (400, False, 2207027, "Media ID is not available"),
}


class GraphFail(Exception):
    """An error answer: raise it anywhere in a handler, the app sends it."""

    def __init__(
        self, status: int, error: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(error.get("message", ""))
        self.status = status
        self.error = error
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.error}


class _Trace:
    n = 0

    @classmethod
    def next(cls) -> str:
        cls.n += 1
        return f"A{cls.n:010X}xStandIn"


# Pass as `subcode` for an error that has none even where the table gives one.
NO_SUBCODE = -1


def graph_fail(
    code: int,
    message: str | None = None,
    *,
    subcode: int | None = None,
    status: int | None = None,
    type_: str | None = None,
    is_transient: bool | None = None,
    headers: dict[str, str] | None = None,
) -> GraphFail:
    k_status, k_transient, k_subcode, k_message = KNOWN.get(
        code, (400, False, None, f"(#{code}) An error occurred")
    )
    error: dict[str, Any] = {
        "message": message or k_message,
        "type": type_ or "OAuthException",
        "code": code,
    }
    sub = subcode if subcode is not None else k_subcode
    if sub is not None and sub != NO_SUBCODE:
        error["error_subcode"] = sub
    error["is_transient"] = k_transient if is_transient is None else is_transient
    error["fbtrace_id"] = _Trace.next()
    return GraphFail(status or k_status, error, headers)


def unknown_param(name: str) -> GraphFail:
    return graph_fail(100, f"(#100) Param {name} is not a valid parameter for this endpoint")


def no_such_object(node_id: str, method: str = "GET") -> GraphFail:
    return graph_fail(
        100,
        f"Unsupported {method.lower()} request. Object with ID '{node_id}' does not exist, "
        "cannot be loaded due to missing permissions, or does not support this operation.",
        subcode=33,
        type_="GraphMethodException",
    )


def buc_header(target: str, kind: str, minutes: float) -> str:
    entry = {
        "type": kind,
        "call_count": 100,
        "total_cputime": 20,
        "total_time": 30,
        "estimated_time_to_regain_access": math.ceil(minutes),
    }
    return json.dumps({target: [entry]})


def app_usage_header(percent: int) -> str:
    return json.dumps({"call_count": percent, "total_cputime": 10, "total_time": 12})


class FaultError(ValueError):
    """A fault request that cannot be understood."""


@dataclass
class MetaFault:
    op: str
    target: str = "*"
    kind: str = "error"
    code: int = 2
    status: int | None = None
    subcode: int | None = None
    message: str | None = None
    type: str | None = None
    is_transient: bool | None = None
    headers: dict[str, str] = field(default_factory=dict)
    buc_minutes: float | None = None
    app_usage: int | None = None
    count: int = 1
    hang_seconds: float = DEFAULT_HANG_S
    id: str = ""

    def matches(self, op: str, target: str) -> bool:
        return self.op in (op, "any") and self.target in (target, "*")

    def failure(self, *, buc_kind: str) -> GraphFail:
        headers = dict(self.headers)
        if self.buc_minutes is not None:
            headers["X-Business-Use-Case-Usage"] = buc_header(
                self.target, buc_kind, self.buc_minutes
            )
        if self.app_usage is not None:
            headers["X-App-Usage"] = app_usage_header(self.app_usage)
        return graph_fail(
            self.code,
            self.message,
            subcode=self.subcode,
            status=self.status,
            type_=self.type,
            is_transient=self.is_transient,
            headers=headers,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}


_FIELDS = frozenset(MetaFault.__dataclass_fields__) - {"id"}


def parse_fault(data: object) -> MetaFault:
    if not isinstance(data, dict):
        raise FaultError("a fault is a JSON object")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise FaultError(f"unknown fault field(s) {unknown}; known: {sorted(_FIELDS)}")
    if data.get("op") not in OPS:
        raise FaultError(f"'op' must be one of {sorted(OPS)}")
    if data.get("kind", "error") not in KINDS:
        raise FaultError(f"'kind' must be one of {sorted(KINDS)}")
    headers = data.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise FaultError("'headers' must map names to strings")
    try:
        fault = MetaFault(**data)
    except TypeError as exc:
        raise FaultError(str(exc)) from None
    for name in ("code", "count"):
        if isinstance(getattr(fault, name), bool) or not isinstance(getattr(fault, name), int):
            raise FaultError(f"{name!r} must be an integer")
    if fault.count < 1:
        raise FaultError("'count' must be at least 1")
    return fault


class FaultBook:
    """Pending faults (FIFO per match) and a log of those that fired, with their instant."""

    def __init__(self) -> None:
        self.pending: list[MetaFault] = []
        self.fired: list[dict[str, Any]] = []
        self._next = 1

    def add(self, fault: MetaFault) -> MetaFault:
        fault.id = f"meta-fault-{self._next}"
        self._next += 1
        self.pending.append(fault)
        return fault

    def take(self, op: str, target: str, now: float) -> MetaFault | None:
        for index, fault in enumerate(self.pending):
            if fault.matches(op, target):
                fault.count -= 1
                if fault.count == 0:
                    del self.pending[index]
                self.fired.append(
                    {
                        "id": fault.id,
                        "op": op,
                        "target": target,
                        "kind": fault.kind,
                        "code": fault.code,
                        "at": now,
                    }
                )
                return fault
        return None

    def clear(self) -> int:
        cleared = len(self.pending)
        self.pending.clear()
        return cleared
