"""Query parameters of the X stand-in's read endpoints, checked the way X checks them: an
unknown parameter or a value out of range is a 400 invalid-request problem naming it.

X's OpenAPI description calls the Post fields parameter `post.fields`; X's documentation (and
every client) says `tweet.fields`. The stand-in accepts both, with the same values.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sandbox.standins.x_faults import Reply, invalid_request
from sandbox.standins.x_state import Tweet

POST_FIELDS = frozenset(
    {
        "article",
        "article_title",
        "attachments",
        "author_id",
        "card_uri",
        "community_id",
        "context_annotations",
        "conversation_id",
        "created_at",
        "display_text_range",
        "edit_controls",
        "edit_history_tweet_ids",
        "entities",
        "geo",
        "id",
        "in_reply_to_user_id",
        "lang",
        "matched_media_notes",
        "media_metadata",
        "non_public_metrics",
        "note_post",
        "note_tweet",
        "note_request_suggestions",
        "organic_metrics",
        "paid_partnership",
        "possibly_sensitive",
        "promoted_metrics",
        "public_metrics",
        "referenced_tweets",
        "reply_settings",
        "scopes",
        "source",
        "suggested_source_links",
        "suggested_source_links_with_counts",
        "text",
        "withheld",
    }
)
FIELDS_PARAMS = ("post.fields", "tweet.fields")
# Accepted, not interpreted: the stand-in never expands related objects.
_PASSIVE = frozenset({"expansions", "user.fields", "media.fields", "poll.fields", "place.fields"})
_TIMELINE = frozenset(
    {
        "max_results",
        "pagination_token",
        "start_time",
        "end_time",
        "since_id",
        "until_id",
        "exclude",
        *FIELDS_PARAMS,
        *_PASSIVE,
    }
)
_ME = frozenset({"user.fields", "expansions", *FIELDS_PARAMS})
_EARLIEST = datetime.fromisoformat("2010-11-06T00:00:00+00:00").timestamp()
DEFAULT_MAX_RESULTS = 10


def bad_query(name: str, value: str, why: str = "is not valid") -> Reply:
    return invalid_request(f"The `{name}` query parameter value [{value}] {why}", {name: [value]})


def _unknown(params: Iterable[tuple[str, str]], allowed: frozenset[str]) -> Reply | None:
    unknown = sorted({name for name, _ in params} - allowed)
    if unknown:
        names = ",".join(unknown)
        return invalid_request(
            f"The query parameters [{names}] is not one of [{','.join(sorted(allowed))}]"
        )
    return None


def fields_of(values: Iterable[str]) -> frozenset[str]:
    return frozenset(f for value in values for f in value.split(",") if f)


def _check_fields(params: list[tuple[str, str]]) -> Reply | None:
    for name, value in params:
        if name in FIELDS_PARAMS:
            wrong = [f for f in value.split(",") if f not in POST_FIELDS]
            if wrong or not value:
                return bad_query(name, value, "is not one of the Post fields")
    return None


def check_me_query(items: list[tuple[str, str]]) -> Reply | None:
    return _unknown(items, _ME) or _check_fields(items)


@dataclass(frozen=True)
class TimelineQuery:
    max_results: int = DEFAULT_MAX_RESULTS
    offset: int = 0
    start: float | None = None
    end: float | None = None
    since_id: int | None = None
    until_id: int | None = None
    fields: tuple[str, ...] = ()

    def admits(self, tweet: Tweet) -> bool:
        snowflake = int(tweet.id)
        return (
            (self.start is None or tweet.created_at >= self.start)
            and (self.end is None or tweet.created_at < self.end)
            and (self.since_id is None or snowflake > self.since_id)
            and (self.until_id is None or snowflake < self.until_id)
        )

    @staticmethod
    def token_for(offset: int) -> str:
        return base64.b32hexencode(f"o{offset}".encode()).decode().rstrip("=").lower()

    @staticmethod
    def offset_of(token: str) -> int | None:
        padded = token.upper() + "=" * (-len(token) % 8)
        try:
            raw = base64.b32hexdecode(padded).decode()
        except ValueError:
            return None
        return int(raw[1:]) if raw.startswith("o") and raw[1:].isdigit() else None


def _time(name: str, value: str) -> float | Reply:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return bad_query(name, value, "is not a valid RFC 3339 date-time")
    if when.tzinfo is None:
        return bad_query(name, value, "must carry a time zone")
    if when.timestamp() < _EARLIEST:
        return bad_query(name, value, "must be on or after 2010-11-06T00:00:00Z")
    return when.timestamp()


def parse_timeline_query(items: list[tuple[str, str]]) -> TimelineQuery | Reply:
    wrong = _unknown(items, _TIMELINE) or _check_fields(items)
    if wrong is not None:
        return wrong
    values = dict(items)
    query: dict[str, object] = {"fields": tuple(v for n, v in items if n in FIELDS_PARAMS)}
    if "max_results" in values:
        raw = values["max_results"]
        if not raw.isdigit() or not 5 <= int(raw) <= 100:
            return bad_query("max_results", raw, "is not between 5 and 100")
        query["max_results"] = int(raw)
    if "pagination_token" in values:
        offset = TimelineQuery.offset_of(values["pagination_token"])
        if offset is None:
            return bad_query("pagination_token", values["pagination_token"])
        query["offset"] = offset
    for name, key in (("start_time", "start"), ("end_time", "end")):
        if name in values:
            when = _time(name, values[name])
            if isinstance(when, Reply):
                return when
            query[key] = when
    for name in ("since_id", "until_id"):
        if name in values:
            raw = values[name]
            if not raw.isdigit() or len(raw) > 19:
                return bad_query(name, raw)
            query[name] = int(raw)
    for value in (v for n, v in items if n == "exclude"):
        if not value or any(e not in ("replies", "retweets") for e in value.split(",")):
            return bad_query("exclude", value, "is not one of [replies,retweets]")
    parsed = TimelineQuery(**query)  # type: ignore[arg-type]
    if parsed.start is not None and parsed.end is not None and parsed.start >= parsed.end:
        return invalid_request("`start_time` must be earlier than `end_time`.")
    if (
        parsed.since_id is not None
        and parsed.until_id is not None
        and parsed.since_id >= parsed.until_id
    ):
        return invalid_request("`since_id` must be less than `until_id`.")
    return parsed
