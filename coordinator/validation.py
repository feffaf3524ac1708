"""Every field an operator sends, checked at the edge before anything is written.

`publishing.py` calls these on each request; a wrong value raises `InvalidArgument` with a
message that says what to fix, before the request reaches the actor, so a refused request leaves
nothing half-written behind. The limits here are the ones README.md's "Limits" table shows.

Times are bounded to a window every part of the system can represent (Python datetimes, protobuf
Timestamps, SQLite, JSON): an RFC 3339 time whose UTC date leaves that window is refused here
rather than breaking `ListPosts` for everyone later. Page tokens are opaque: an offset bound to
the query it pages through, with a MAC, so a token that was not issued by this server (forged,
corrupted, or for another query) is refused, not fed to the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from coordinator.domain import (
    KNOWN_PLATFORMS,
    MAX_ANY_TEXT_CHARS,
    JobStatus,
    PostStatus,
    Target,
)
from coordinator.errors import InvalidArgument
from postroom.v1 import types_pb2 as pb

# ---- limits (README "Limits") ---------------------------------------------------------------

MAX_TEXT_CHARS = MAX_ANY_TEXT_CHARS
# Scheduling, cancelling and the status of a post scale with its targets; the actor handles one
# post's targets in one step, so their number is what bounds that step (a few milliseconds).
MAX_TARGETS_PER_POST = 50
MAX_MEDIA_PER_POST = 20  # LinkedIn's multi-image post, the largest any platform takes
MAX_MEDIA_REF_CHARS = 2048  # a URL or a file name
MAX_ID_CHARS = 128  # post, job, device, request and upload ids
MAX_ACCOUNT_CHARS = 256  # handles, e-mail addresses, LinkedIn URNs, page ids
MAX_PLATFORM_CHARS = 32
MAX_ACTOR_CHARS = 128
MAX_REASON_CHARS = 1000
MAX_FILTER_CHARS = 256  # ListJobs / ListAuditEvents filters
MAX_PAGE_TOKEN_CHARS = 200

# Every time postroom stores or shows lies in [1970-01-01, 2100-01-01) UTC.
EARLIEST_TIME_S = 0.0
LATEST_TIME_S = 4_102_444_800.0
_WINDOW_TEXT = "between 1970-01-01T00:00:00Z and 2100-01-01T00:00:00Z"


def time_in_window(value: float) -> bool:
    return EARLIEST_TIME_S <= value < LATEST_TIME_S


def parse_time(value: str, field_name: str) -> float:
    """An RFC 3339 time with a zone, inside the window; Unix seconds."""
    text = value.strip()
    if len(text) > 64:
        raise InvalidArgument(
            f"{field_name} is {len(text)} characters long; write an RFC 3339 time such as "
            "2026-11-24T18:00:00Z"
        )
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(
            f"{field_name} {value!r} is not an RFC 3339 time; write e.g. 2026-11-24T18:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise InvalidArgument(
            f"{field_name} {value!r} has no time zone; add Z (UTC) or an offset like +01:00"
        )
    try:
        seconds = parsed.timestamp()
        # A date at the edge of year 1 or 9999 may leave datetime's range once moved to UTC.
        parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        seconds = float("nan")
    if not time_in_window(seconds):
        raise InvalidArgument(
            f"{field_name} {value!r} is out of range: write a time {_WINDOW_TEXT}"
        )
    return seconds


def _printable(value: str) -> bool:
    return value.isprintable()


def check_text(text: str) -> str:
    if not text.strip():
        raise InvalidArgument("text is empty: a post needs some text")
    if len(text) > MAX_TEXT_CHARS:
        # Per-platform limits are content_rules' job; this bounds what any post may be.
        raise InvalidArgument(
            f"text is {len(text)} characters; no post may be longer than {MAX_TEXT_CHARS}"
        )
    return text


def check_target(platform_in: str, account_in: str) -> Target:
    platform, account = platform_in.strip().lower(), account_in.strip()
    if platform not in KNOWN_PLATFORMS:
        shown = platform_in if len(platform_in) <= MAX_PLATFORM_CHARS else platform_in[:32] + "…"
        raise InvalidArgument(
            f"unknown platform {shown!r}; use one of {', '.join(sorted(KNOWN_PLATFORMS))}"
        )
    if not account or account == "*":
        raise InvalidArgument(f"target on {platform} has no account; write {platform}:ACCOUNT")
    if len(account) > MAX_ACCOUNT_CHARS:
        raise InvalidArgument(
            f"account on {platform} is {len(account)} characters; at most {MAX_ACCOUNT_CHARS}"
        )
    if not _printable(account) or any(c.isspace() for c in account):
        raise InvalidArgument(
            f"account {account[:40]!r} on {platform} has spaces or control characters; write "
            "the account's handle or id"
        )
    return Target(platform, account)


def check_targets(targets: Sequence[pb.Target]) -> list[Target]:
    if not targets:
        raise InvalidArgument("no targets: add at least one (platform, account), e.g. sandbox:acme")
    if len(targets) > MAX_TARGETS_PER_POST:
        raise InvalidArgument(
            f"{len(targets)} targets; a post has at most {MAX_TARGETS_PER_POST}: split it into "
            "several posts"
        )
    out: list[Target] = []
    seen: set[Target] = set()
    for t in targets:
        target = check_target(t.platform, t.account)
        if target in seen:
            raise InvalidArgument(f"target {target} appears twice; list each target once")
        seen.add(target)
        out.append(target)
    return out


def check_media(media: Sequence[str]) -> list[str]:
    if len(media) > MAX_MEDIA_PER_POST:
        raise InvalidArgument(
            f"{len(media)} media; a post has at most {MAX_MEDIA_PER_POST} (and each platform "
            "fewer: see the content rules)"
        )
    for n, ref in enumerate(media, 1):
        if not ref.strip():
            raise InvalidArgument(f"media #{n} is empty: give a URL or a file name")
        if len(ref) > MAX_MEDIA_REF_CHARS:
            raise InvalidArgument(
                f"media #{n} is {len(ref)} characters; a URL or file name has at most "
                f"{MAX_MEDIA_REF_CHARS}"
            )
        if not _printable(ref):
            raise InvalidArgument(f"media #{n} contains control characters")
    return list(media)


def require_id(value: str, name: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(f"{name} is required")
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument(
            f"{name} is {len(value)} characters; ids are at most {MAX_ID_CHARS} (copy it from "
            "`postroom post list` or `postroom job list`)"
        )
    if not _printable(value):
        raise InvalidArgument(f"{name} contains control characters; ids are printable")
    return value


def actor_name(value: str) -> str:
    value = value.strip()
    if len(value) > MAX_ACTOR_CHARS:
        raise InvalidArgument(f"actor is {len(value)} characters; at most {MAX_ACTOR_CHARS}")
    if not _printable(value):
        raise InvalidArgument("actor contains control characters; give a name")
    return f"user:{value or 'operator'}"


def check_reason(value: str) -> str:
    if len(value) > MAX_REASON_CHARS:
        raise InvalidArgument(f"reason is {len(value)} characters; at most {MAX_REASON_CHARS}")
    return value


def check_filter(value: str, name: str, limit: int = MAX_FILTER_CHARS) -> str:
    value = value.strip()
    if len(value) > limit:
        raise InvalidArgument(f"{name} is {len(value)} characters; at most {limit}")
    return value


def check_content_hash(value: str) -> str:
    value = value.strip().lower()
    if value and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
        raise InvalidArgument(
            "content_hash must be the post's content_hash as GetPost shows it (64 hex digits)"
        )
    return value


def _enum_names(enum: type[PostStatus] | type[JobStatus], prefix: str) -> str:
    return ", ".join(f"{prefix}{s.value}" for s in enum)


def post_status_filter(value: int) -> PostStatus | None:
    """A ListPosts status: unset is "all"; a number this server does not know is refused."""
    if value == pb.POST_STATUS_UNSPECIFIED:
        return None
    try:
        name = pb.PostStatus.Name(value)  # type: ignore[arg-type]
    except ValueError:
        raise InvalidArgument(
            f"status {value} is not a post status; use one of "
            + _enum_names(PostStatus, "POST_STATUS_")
        ) from None
    return PostStatus(name.removeprefix("POST_STATUS_"))


def job_status_filter(value: int) -> JobStatus | None:
    if value == pb.JOB_STATUS_UNSPECIFIED:
        return None
    try:
        name = pb.JobStatus.Name(value)  # type: ignore[arg-type]
    except ValueError:
        raise InvalidArgument(
            f"status {value} is not a job status; use one of "
            + _enum_names(JobStatus, "JOB_STATUS_")
        ) from None
    return JobStatus(name.removeprefix("JOB_STATUS_"))


# ---- paging ---------------------------------------------------------------------------------


def page_size(value: int, default: int, maximum: int) -> int:
    if value < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(value or default, maximum)
