"""The posts calendar: a week or a month of days, each with the posts scheduled on it (UTC)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from postroom.v1 import types_pb2 as t

VIEWS = ("week", "month")


@dataclass(slots=True)
class Day:
    day: date
    in_range: bool  # a month view's leading and trailing days of other months are dimmed
    today: bool
    posts: list[t.Post] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Calendar:
    view: str
    anchor: date
    title: str
    weeks: list[list[Day]]
    previous: date
    next: date


def has_time(post: t.Post) -> bool:
    return bool(post.scheduled_at.seconds or post.scheduled_at.nanos)


def post_day(post: t.Post) -> date:
    """The UTC day a post goes out on: its scheduled time, or for "as soon as it is scheduled"
    the day it was written."""
    when = post.scheduled_at if has_time(post) else post.created_at
    return when.ToDatetime(tzinfo=UTC).date()


def _monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def build(view: str, anchor: date, posts: Iterable[t.Post], *, today: date) -> Calendar:
    by_day: dict[date, list[t.Post]] = defaultdict(list)
    for post in posts:
        by_day[post_day(post)].append(post)
    for listed in by_day.values():
        listed.sort(key=lambda p: (p.scheduled_at.seconds or p.created_at.seconds, p.id))
    if view == "week":
        start = _monday(anchor)
        end = start + timedelta(days=7)
        title = f"Week of {start.isoformat()}"
        previous, following = start - timedelta(days=7), end
    else:
        first = anchor.replace(day=1)
        end = (first + timedelta(days=32)).replace(day=1)
        start = _monday(first)
        title = first.strftime("%B %Y")
        previous, following = (first - timedelta(days=1)).replace(day=1), end
    weeks: list[list[Day]] = []
    day = start
    while day < end or day.weekday() != 0:
        if day.weekday() == 0:
            weeks.append([])
        in_range = view == "week" or day.month == anchor.month
        weeks[-1].append(Day(day, in_range, day == today, by_day.get(day, [])))
        day += timedelta(days=1)
    return Calendar(view, anchor, title, weeks, previous, following)


def parse_day(text: str, *, today: date) -> date:
    """A ?date= value (YYYY-MM-DD); today when absent or not a date."""
    try:
        return datetime.strptime(text, "%Y-%m-%d").date() if text else today
    except ValueError:
        return today
