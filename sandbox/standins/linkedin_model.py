"""The LinkedIn stand-in's state, fault model and error answers. Pure: no I/O, no clock of its
own; the app (sandbox/standins/linkedin.py) owns one `LinkedInState` and does the side effects.

Error bodies are LinkedIn's (https://learn.microsoft.com/en-us/linkedin/shared/api-guide/concepts/
error-handling): `{"status", "serviceErrorCode", "code", "message"}`; a duplicate post is the 422
LinkedIn sends, whose message names the existing post ("Content is a duplicate of urn:li:share:…",
code DUPLICATE_POST); OAuth errors are `{"error", "error_description"}`.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

WILDCARD = "*"
# Versions LinkedIn still serves are YYYYMM from this one on (it sunsets each after about a
# year). A fixed floor rather than "a year before today", so the tests never expire.
OLDEST_ACTIVE_VERSION = "202506"
PROTOCOL_VERSION = "2.0.0"
MAX_COMMENTARY_CHARS = 3000
# LinkedIn refuses the same commentary from the same author again for a while (a day or two,
# by reports); the window here is one day.
DUPLICATE_WINDOW_S = 24 * 3600
ACCESS_TOKEN_TTL_S = 60 * 24 * 3600
REFRESH_TOKEN_TTL_S = 365 * 24 * 3600
# GETs of a freshly uploaded image that still answer PROCESSING before it is AVAILABLE.
IMAGE_PROCESSING_POLLS = 1
DEFAULT_HANG_S = 30.0
RESERVED = frozenset("\\|{}@[]()<>#*_~")
_HASHTAG_TEMPLATE = re.compile(r"\{hashtag\|\\#\|([^{}|]*)\}")
_MENTION = re.compile(r"@\[((?:\\.|[^\]\\])*)\]\((urn:li:[^()]*)\)")
_HASHTAG = re.compile(r"#\w+")
VERSION_RE = re.compile(r"^\d{6}(\.\d{2})?$")

Clock = Callable[[], float]


class FaultError(ValueError):
    """An admin fault request that cannot be understood."""


class Op(StrEnum):
    CREATE = "create"  # POST /rest/posts
    READ = "read"  # GET /rest/posts (finder, by URN)
    IMAGES = "images"  # initializeUpload, the upload PUT, GET /rest/images/{urn}
    TOKEN = "token"  # POST /oauth/v2/accessToken
    ANY = "any"


class Kind(StrEnum):
    RATE_LIMIT = "rate_limit"  # a bare 429 (a Retry-After only when retry_after_seconds is set)
    AUTH = "auth"  # 401 EXPIRED_ACCESS_TOKEN; the presented token stays expired
    FORBIDDEN = "forbidden"  # 403 ACCESS_DENIED
    INVALID = "invalid"  # 400 or 422 (status)
    SERVER_ERROR = "server_error"  # 500 / 502 / 503 / 504 (status)
    ACCEPT_THEN_HANG = "accept_then_hang"  # the post is made, the answer never comes


@dataclass(frozen=True, kw_only=True)
class Fault:
    kind: Kind
    op: Op = Op.CREATE
    member: str = WILDCARD
    count: int = 1
    status: int | None = None
    retry_after_seconds: float | None = None
    hang_seconds: float = DEFAULT_HANG_S
    message: str | None = None

    def matches(self, member: str, op: Op) -> bool:
        return self.member in (member, WILDCARD) and self.op in (op, Op.ANY)


_STATUSES = {Kind.INVALID: (400, 422), Kind.SERVER_ERROR: (500, 502, 503, 504)}


def parse_fault(data: object) -> Fault:
    if not isinstance(data, Mapping):
        raise FaultError("a fault is a JSON object")
    known = set(Fault.__dataclass_fields__)
    if unknown := sorted(set(data) - known):
        raise FaultError(f"unknown field(s) {unknown}; known: {sorted(known)}")
    try:
        kind = Kind(data["kind"])
        op = Op(data.get("op", Op.CREATE))
    except (KeyError, ValueError):
        raise FaultError(f"kind is one of {[k.value for k in Kind]}, op of {list(Op)}") from None
    count, status = data.get("count", 1), data.get("status")
    if not isinstance(count, int) or count < 1:
        raise FaultError("count must be a positive integer")
    if status is not None and status not in _STATUSES.get(kind, ()):
        raise FaultError(f"status for {kind}: one of {list(_STATUSES.get(kind, ()))}")
    if kind is Kind.ACCEPT_THEN_HANG and op is not Op.CREATE:
        raise FaultError("accept_then_hang applies to op create")
    retry_after, hang = data.get("retry_after_seconds"), data.get("hang_seconds", DEFAULT_HANG_S)
    for name, value in (("retry_after_seconds", retry_after), ("hang_seconds", hang)):
        if value is not None and (not isinstance(value, int | float) or value < 0):
            raise FaultError(f"{name} must be a number of seconds")
    member, message = data.get("member", WILDCARD), data.get("message")
    if not isinstance(member, str) or not (message is None or isinstance(message, str)):
        raise FaultError("member and message are strings")
    return Fault(
        kind=kind,
        op=op,
        member=member,
        count=count,
        status=status,
        retry_after_seconds=None if retry_after is None else float(retry_after),
        hang_seconds=float(hang),
        message=message,
    )


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, code: str, message: str, service_code: int | None = None) -> Reply:
    body: dict[str, Any] = {"status": status, "code": code, "message": message}
    if service_code is not None:
        body["serviceErrorCode"] = service_code
    return Reply(status, body)


def invalid_token() -> Reply:
    return error(401, "INVALID_ACCESS_TOKEN", "Invalid access token", 65600)


def expired_token() -> Reply:
    return error(401, "EXPIRED_ACCESS_TOKEN", "The token used in the request has expired", 65602)


def access_denied(what: str) -> Reply:
    return error(403, "ACCESS_DENIED", f"Not enough permissions to access: {what}", 100)


def unprocessable(path: str, reason: str) -> Reply:
    return error(422, "UNPROCESSABLE_ENTITY", f"ERROR :: {path} :: {reason}\n")


def duplicate(urn: str) -> Reply:
    body = {
        "errorDetailType": "com.linkedin.common.error.BadRequest",
        "message": "com.linkedin.content.common.exception.BadRequestResponseException: "
        f"Content is a duplicate of {urn}",
        "errorDetails": {
            "inputErrors": [
                {"description": "Duplicate post is detected", "input": {}, "code": "DUPLICATE_POST"}
            ]
        },
        "status": 422,
    }
    return Reply(422, body)


def oauth_error(status: int, code: str, description: str) -> Reply:
    return Reply(status, {"error": code, "error_description": description})


def fault_reply(fault: Fault, op: Op) -> Reply:
    """What LinkedIn answers when `fault` fires (accept_then_hang: the answer after the hang)."""
    match fault.kind:
        case Kind.RATE_LIMIT:
            reply = error(
                429,
                "TOO_MANY_REQUESTS",
                fault.message
                or "Resource level throttle APPLICATION DAY limit for calls to this resource "
                "is reached.",
                101,
            )
            if fault.retry_after_seconds is not None:
                reply.headers["Retry-After"] = str(math.ceil(fault.retry_after_seconds))
            return reply
        case Kind.AUTH:
            return expired_token()
        case Kind.FORBIDDEN:
            return access_denied(fault.message or "partnerApiPostsExternal.CREATE")
        case Kind.INVALID if op is Op.TOKEN:
            return oauth_error(
                400,
                "invalid_request",
                fault.message
                or "The provided authorization grant or refresh token is invalid, expired or "
                "revoked",
            )
        case Kind.INVALID:
            status = fault.status or 400
            message = fault.message or "Invalid request"
            code = "UNPROCESSABLE_ENTITY" if status == 422 else "INVALID_ARGUMENT"
            return error(status, code, message)
        case Kind.SERVER_ERROR:
            status = fault.status or 500
            texts = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
            return Reply(
                status,
                {
                    "message": fault.message or texts.get(status, "Gateway Timeout"),
                    "status": status,
                },
            )
        case Kind.ACCEPT_THEN_HANG:
            return Reply(504, {"message": "Gateway Timeout", "status": 504})


def render(commentary: str) -> tuple[str, bool]:
    """little -> (the text a reader sees, whether LinkedIn cut it). LinkedIn does not refuse an
    unescaped reserved character outside an element: it ends the post there."""
    out: list[str] = []
    i = 0
    while i < len(commentary):
        ch = commentary[i]
        if ch == "\\" and i + 1 < len(commentary):
            out.append(commentary[i + 1])
            i += 2
        elif ch == "{" and (m := _HASHTAG_TEMPLATE.match(commentary, i)):
            out.append(f"#{m.group(1)}")
            i = m.end()
        elif ch == "@" and (m := _MENTION.match(commentary, i)):
            out.append(render(m.group(1))[0])
            i = m.end()
        elif ch == "#" and (m := _HASHTAG.match(commentary, i)):
            out.append(m.group(0))
            i = m.end()
        elif ch in RESERVED:
            return "".join(out), True
        else:
            out.append(ch)
            i += 1
    return "".join(out), False


@dataclass(kw_only=True)
class Member:
    urn: str
    organizations: tuple[str, ...] = ()

    def may_act_as(self, author: str) -> bool:
        return author == self.urn or author in self.organizations


@dataclass(kw_only=True)
class Image:
    urn: str
    owner: str
    member: str
    status: str = "WAITING_UPLOAD"
    size: int = 0
    polls_left: int = IMAGE_PROCESSING_POLLS


@dataclass(kw_only=True)
class Post:
    urn: str
    author: str
    member: str
    body: dict[str, Any]
    text: str
    truncated: bool
    created_ms: int

    def public_json(self) -> dict[str, Any]:
        return {
            **self.body,
            "id": self.urn,
            "createdAt": self.created_ms,
            "publishedAt": self.created_ms,
            "lastModifiedAt": self.created_ms,
            "lifecycleStateInfo": {"isEditedByAuthor": False},
        }

    def admin_json(self) -> dict[str, Any]:
        return {**self.public_json(), "text": self.text, "truncated": self.truncated}


class LinkedInState:
    """Everything the stand-in remembers; only the app's handlers change it, each without an
    await between reading and writing (atomic on the event loop)."""

    def __init__(self, *, clock: Clock) -> None:
        self.clock = clock
        self.members: dict[str, Member] = {}
        self.access_tokens: dict[str, str] = {}  # token -> member urn
        self.expired: set[str] = set()
        self.refresh_tokens: dict[str, tuple[str, str]] = {}  # token -> (member, client_id)
        self.clients: dict[str, str] = {}  # client_id -> client_secret
        self.issued: dict[str, list[str]] = {}  # member -> access tokens issued by a refresh
        self.posts: list[Post] = []
        self.images: dict[str, Image] = {}
        self.faults: list[tuple[Fault, list[int]]] = []  # (fault, [remaining])
        self.requests: Counter[str] = Counter()
        self.member_requests: dict[str, Counter[str]] = {}
        self.hanging = 0
        # Share ids look like LinkedIn's (19 digits) and never repeat.
        self._ids = itertools.count(7_400_000_000_000_000_001)

    def next_id(self) -> int:
        return next(self._ids)

    def count(self, member: str, op: Op) -> None:
        self.requests[op.value] += 1
        self.member_requests.setdefault(member, Counter())[op.value] += 1

    def take_fault(self, member: str, op: Op) -> Fault | None:
        for index, (fault, remaining) in enumerate(self.faults):
            if fault.matches(member, op):
                remaining[0] -= 1
                if remaining[0] == 0:
                    del self.faults[index]
                return fault
        return None

    def member_for(self, token: str) -> Member | Reply:
        urn = self.access_tokens.get(token)
        if urn is None:
            return invalid_token()
        if token in self.expired:
            return expired_token()
        return self.members[urn]

    def recent_duplicate(self, author: str, commentary: str) -> Post | None:
        since_ms = (self.clock() - DUPLICATE_WINDOW_S) * 1000
        for post in reversed(self.posts):
            if post.created_ms < since_ms:
                break
            if post.author == author and post.body.get("commentary") == commentary:
                return post
        return None
