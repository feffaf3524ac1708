"""The console's templates and the filters they use: times, enum labels, status classes.

Labels and times are the CLI's (postroom_cli.render), so a page and `postroom job show` say the
same thing in the same words.
"""

from __future__ import annotations

import functools
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from google.protobuf.timestamp_pb2 import Timestamp
from markupsafe import Markup, escape

from postroom.v1 import access_pb2 as ac
from postroom.v1 import types_pb2 as t
from postroom_cli.render import (
    enum_label,
    fmt_size,
    fmt_target,
    fmt_time,
    is_set,
    message_dict,
)
from postroom_cli.render import job_status as _job_status
from postroom_cli.render import post_status as _post_status

TEMPLATES = Path(__file__).parent / "templates"

# Status -> CSS class: what needs a person (red), what waits (amber), what is done (green).
_ATTENTION = {"FAILED", "NEEDS_LOGIN", "AWAITING_CONFIRM", "OFFLINE", "CLOSED"}
_WAITING = {"QUEUED", "CLAIMED", "RUNNING", "PUBLISHING", "SCHEDULED", "PENDING_APPROVAL"}
_DONE = {"SUCCEEDED", "PUBLISHED", "ONLINE", "LOGGED_IN", "OPEN", "APPROVED"}


def status_class(label: str) -> str:
    if label in _ATTENTION:
        return "st-bad"
    if label in _WAITING:
        return "st-wait"
    return "st-ok" if label in _DONE else "st-none"


# Labels are cached: a page of 1,000 jobs asks for a handful of them thousands of times.
job_status = functools.lru_cache(maxsize=64)(_job_status)
post_status = functools.lru_cache(maxsize=64)(_post_status)


@functools.lru_cache(maxsize=64)
def error_class(value: int) -> str:
    return enum_label(t.ErrorClass.DESCRIPTOR, value) if value else ""


def login_state(value: int) -> str:
    return enum_label(t.LoginState.DESCRIPTOR, value)


def device_state(value: int) -> str:
    return enum_label(t.DeviceState.DESCRIPTOR, value)


def worker_kind(value: int) -> str:
    return enum_label(t.WorkerKind.DESCRIPTOR, value)


def log_level(value: int) -> str:
    return enum_label(t.LogLevel.DESCRIPTOR, value)


def role(value: int) -> str:
    return enum_label(ac.Role.DESCRIPTOR, value).lower()


def _stamp(seconds_utc: int) -> tuple[str, str]:
    parts = time.gmtime(seconds_utc)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", parts), time.strftime("%Y-%m-%d %H:%M:%SZ", parts)


def time_html(ts: Timestamp) -> Markup:
    """<time datetime=ISO>shown</time>, or a muted dash when unset. A filter, not a macro: a
    page of 1,000 jobs calls it thousands of times (gmtime, not protobuf's ToDatetime)."""
    if not (ts.seconds or ts.nanos):
        return Markup('<span class="muted">-</span>')
    machine, shown = _stamp(ts.seconds)
    return Markup(f'<time datetime="{machine}">{shown}</time>')


def badge(label: str) -> Markup:
    """A status in words, coloured by what it asks of a person (never by colour alone)."""
    return Markup(f'<span class="badge {status_class(label)}">{escape(label)}</span>')


def account_link(platform: str, account: str) -> Markup:
    """PLATFORM:ACCOUNT as a link to that account's jobs (where its failures can be retried)."""
    query = urlencode({"platform": platform, "account": account})
    return Markup(f'<a href="/jobs?{escape(query)}">{escape(platform)}:{escape(account)}</a>')


def target_link(target: t.Target) -> Markup:
    return account_link(target.platform, target.account)


def subject_link(subject: str) -> Markup:
    """An audit subject as a link to its page: a post, a job, or an account's jobs."""
    if subject.startswith(("p-", "j-")):
        page = "posts" if subject.startswith("p-") else "jobs"
        return Markup(f'<a href="/{page}/{escape(quote(subject))}">{escape(subject)}</a>')
    platform, sep, account = subject.partition(":")
    return account_link(platform, account) if sep else escape(subject)


def iso(ts: Timestamp) -> str:
    """Machine-readable time for <time datetime=...>."""
    return ts.ToJsonString() if is_set(ts) else ""


def seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def when(ts: Timestamp) -> str:
    return fmt_time(ts) if is_set(ts) else ""


def pretty_json(text: str) -> str:
    """An audit event's details, indented; what is not JSON shown as it is."""
    try:
        return json.dumps(json.loads(text), indent=1, sort_keys=True, ensure_ascii=False)
    except ValueError:
        return text


def audit_json_line(event: t.AuditEvent) -> str:
    """One event as a JSON line (the audit export), details parsed back into an object."""
    row = message_dict(event)
    raw = row.pop("details_json", "") or "{}"
    try:
        row["details"] = json.loads(raw)
    except ValueError:
        row["details"] = raw
    return json.dumps(row, ensure_ascii=False, sort_keys=True)


def utc(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


FILTERS: dict[str, Any] = {
    "job_status": job_status,
    "post_status": post_status,
    "error_class": error_class,
    "login_state": login_state,
    "device_state": device_state,
    "worker_kind": worker_kind,
    "role": role,
    "log_level": log_level,
    "status_class": status_class,
    "time": time_html,
    "badge": badge,
    "target_link": target_link,
    "account_link": account_link,
    "subject_link": subject_link,
    "when": when,
    "iso": iso,
    "seconds": seconds,
    "size": fmt_size,
    "target": fmt_target,
    "pretty_json": pretty_json,
    "utc": utc,
}


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,  # a typo in a template fails its test, not silently
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env
