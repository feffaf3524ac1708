"""The web console's pure parts: the calendar's days, sessions and their cookies, where a form may
send a person next, the audit export's lines, and `postroom console`'s refusals."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from postroom.v1 import types_pb2 as t
from postroom_cli.commands.console import main as console_main
from postroom_console import calendar
from postroom_console.auth import Session, Sessions, csrf_ok
from postroom_console.render import audit_json_line
from postroom_console.web import safe_next


def _post(post_id: str, *, at: datetime | None = None, created: datetime) -> t.Post:
    post = t.Post(id=post_id, text=post_id)
    post.created_at.FromDatetime(created)
    if at is not None:
        post.scheduled_at.FromDatetime(at)
    return post


def test_a_week_runs_monday_to_sunday_with_each_post_on_its_day() -> None:
    wed = datetime(2026, 11, 25, 18, 0, tzinfo=UTC)
    posts = [
        _post("later", at=wed.replace(hour=20), created=wed),
        _post("evening", at=wed, created=wed),
        _post("asap", created=datetime(2026, 11, 23, 9, tzinfo=UTC)),  # on the day written
        _post("next-week", at=datetime(2026, 12, 1, tzinfo=UTC), created=wed),
    ]
    cal = calendar.build("week", date(2026, 11, 27), posts, today=date(2026, 11, 26))
    [week] = cal.weeks
    assert [d.day for d in week] == [date(2026, 11, 23 + n) for n in range(7)]
    assert [p.id for p in week[2].posts] == ["evening", "later"]  # in time order
    assert [p.id for p in week[0].posts] == ["asap"]
    assert [d.today for d in week].index(True) == 3
    assert (cal.previous, cal.next) == (date(2026, 11, 16), date(2026, 11, 30))


def test_a_month_is_whole_weeks_with_other_months_days_dimmed() -> None:
    cal = calendar.build("month", date(2026, 2, 14), [], today=date(2026, 2, 1))
    days = [d for week in cal.weeks for d in week]
    assert all(len(week) == 7 for week in cal.weeks)
    assert days[0].day == date(2026, 1, 26) and not days[0].in_range
    assert days[-1].day == date(2026, 3, 1) and not days[-1].in_range
    assert sum(d.in_range for d in days) == 28
    assert cal.title == "February 2026"
    assert (cal.previous, cal.next) == (date(2026, 1, 1), date(2026, 3, 1))
    assert calendar.parse_day("not a date", today=date(2026, 2, 1)) == date(2026, 2, 1)


def test_sessions_live_behind_a_signed_cookie_and_end_when_idle() -> None:
    now = [0.0]
    sessions = Sessions(idle_s=60, clock=lambda: now[0])
    cookie = sessions.create(Session(token="prt_x", actor="user:alice", role=2))
    found = sessions.get(cookie)
    assert found is not None and found.actor == "user:alice"
    session_id, _, mac = cookie.partition(".")
    assert sessions.get(f"{session_id}.{'0' * len(mac)}") is None  # a forged signature
    assert sessions.get(session_id) is None and sessions.get(None) is None
    now[0] = 59
    assert sessions.get(cookie) is found  # use keeps it alive
    now[0] = 200
    assert sessions.get(cookie) is None
    again = sessions.create(Session(token="prt_x", actor="user:alice", role=2))
    sessions.drop(again)
    assert sessions.get(again) is None
    assert csrf_ok(found, found.csrf) and not csrf_ok(found, "")


@pytest.mark.parametrize(
    ("asked", "goes"),
    [
        ("/jobs/j-1?x=1", "/jobs/j-1?x=1"),
        ("//evil.example/x", "/posts"),
        ("https://evil.example/", "/posts"),
        ("/\\evil.example", "/posts"),
        ("", "/posts"),
    ],
)
def test_after_a_form_a_person_stays_on_this_console(asked: str, goes: str) -> None:
    assert safe_next(asked) == goes


def test_an_audit_line_carries_its_details_as_an_object() -> None:
    at = Timestamp(seconds=1_764_000_000)
    details = '{"until": 1.5, "reason": "429 retry-after"}'
    event = t.AuditEvent(seq=7, at=at, action="GATE_CLOSED", subject_id="x:a", details_json=details)
    assert '"details": {"reason": "429 retry-after", "until": 1.5}' in audit_json_line(event)
    odd = t.AuditEvent(seq=8, action="X", details_json="not json")
    assert '"details": "not json"' in audit_json_line(odd)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--listen", "0.0.0.0:0"], "listens on loopback only"),
        (["--listen", "nonsense"], "expected HOST:PORT"),
        (["--token", "prt_secret"], "--token is not taken"),
    ],
)
def test_console_command_refuses_what_it_must(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        console_main(["--coordinator", "127.0.0.1:1", *argv])
    assert exited.value.code == 2
    assert says in capsys.readouterr().err
