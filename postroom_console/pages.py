"""The console's pages (reading only): posts (list and calendar), a post, jobs, a job, rate-limit
gates, devices and the audit log. Each is one or two calls to the coordinator, rendered on the
server; the pages work without JavaScript and update live with it (static/console.js)."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from postroom.v1 import types_pb2 as t
from postroom_cli.render import enum_names
from postroom_console import calendar
from postroom_console.web import person, render

DEFAULT_PAGE = 100
MAX_PAGE = 1000  # the coordinator's own limit
CALENDAR_POSTS = 1000
AUDIT_PAGE = 200
# Jobs an operator may want to retry in bulk: failed for good, or waiting for a login.
RETRYABLE = (t.JOB_STATUS_FAILED, t.JOB_STATUS_NEEDS_LOGIN)


def _size(request: Request, default: int = DEFAULT_PAGE) -> int:
    try:
        return max(1, min(int(request.query_params.get("page_size", default)), MAX_PAGE))
    except ValueError:
        return default


def _enum_value(descriptor: object, prefix: str, label: str) -> int:
    """A ?status= label ("FAILED") as the enum's number; 0 (all) for none or an unknown one."""
    values = descriptor.values_by_name  # type: ignore[attr-defined]
    entry = values.get(f"{prefix}{label.strip().upper()}")
    return int(entry.number) if entry is not None else 0


def _last_seq(events: list[t.AuditEvent]) -> int:
    return max((e.seq for e in events), default=0)


def _matches(post: t.Post, platform: str, account: str, text: str) -> bool:
    if text and text.lower() not in post.text.lower():
        return False
    return not (platform or account) or any(
        (not platform or tg.platform == platform) and (not account or tg.account == account)
        for tg in post.targets
    )


async def posts_page(request: Request) -> Response:
    session, client = person(request)
    q = request.query_params
    status = _enum_value(t.PostStatus.DESCRIPTOR, "POST_STATUS_", q.get("status", ""))
    page = await client.list_posts(
        status=status, page_size=_size(request), page_token=q.get("page_token", "")
    )
    platform, account, text = q.get("platform", ""), q.get("account", ""), q.get("q", "")
    # Within the page: by target and by words of the text (the coordinator filters by status).
    posts = [p for p in page.posts if _matches(p, platform, account, text)]
    return render(
        request,
        "posts.html",
        session=session,
        posts=posts,
        statuses=enum_names(t.PostStatus.DESCRIPTOR),
        filters={
            "status": q.get("status", ""),
            "platform": platform,
            "account": account,
            "q": text,
        },
        next_page_token=page.next_page_token,
        live_after=page.as_of_seq,  # every change after this read refreshes the page
    )


async def calendar_page(request: Request) -> Response:
    session, client = person(request)
    today = datetime.now(UTC).date()
    view = request.query_params.get("view", "week")
    view = view if view in calendar.VIEWS else "week"
    anchor = calendar.parse_day(request.query_params.get("date", ""), today=today)
    page = await client.list_posts(page_size=CALENDAR_POSTS)
    cal = calendar.build(view, anchor, page.posts, today=today)
    return render(
        request,
        "calendar.html",
        session=session,
        cal=cal,
        truncated=bool(page.next_page_token),
        live_after=page.as_of_seq,
    )


async def post_page(request: Request) -> Response:
    session, client = person(request)
    post_id = request.path_params["post_id"]
    post = await client.get_post(post_id)
    history = await client.list_audit_events(subject_id=post_id, page_size=AUDIT_PAGE)
    job_ids = [ts.job_id for ts in post.target_states]
    return render(
        request,
        "post.html",
        session=session,
        post=post,
        history=list(history.events),
        live_subjects=[post.id, *job_ids],
        live_after=_last_seq(list(history.events)),
    )


async def jobs_page(request: Request) -> Response:
    session, client = person(request)
    q = request.query_params
    filters = {k: q.get(k, "").strip() for k in ("status", "platform", "account", "device", "post")}
    page = await client.list_jobs(
        status=_enum_value(t.JobStatus.DESCRIPTOR, "JOB_STATUS_", filters["status"]),
        platform=filters["platform"],
        account=filters["account"],
        device_id=filters["device"],
        post_id=filters["post"],
        page_size=_size(request),
        page_token=q.get("page_token", ""),
    )
    jobs = list(page.jobs)
    return render(
        request,
        "jobs.html",
        session=session,
        jobs=jobs,
        filters=filters,
        statuses=enum_names(t.JobStatus.DESCRIPTOR),
        retryable=[j for j in jobs if j.status in RETRYABLE],
        next_page_token=page.next_page_token,
        live_after=page.as_of_seq,  # every change after this read refreshes the page
    )


async def job_page(request: Request) -> Response:
    session, client = person(request)
    job_id = request.path_params["job_id"]
    job = await client.get_job(job_id)
    history = await client.list_audit_events(subject_id=job_id, page_size=AUDIT_PAGE)
    target = f"{job.platform}:{job.account}"
    gate_events = await client.list_audit_events(
        subject_id=target, action="GATE_CLOSED", page_size=AUDIT_PAGE
    )
    gates = await client.list_rate_limits()
    gate = next(
        (
            g
            for g in gates.gates
            if (g.target.platform, g.target.account) == (job.platform, job.account)
        ),
        None,
    )
    shots = [s for run in job.runs for s in run.screenshots]
    before_confirm = next((s for s in reversed(shots) if s.label == "before_confirm"), None)
    finished = job.status in (t.JOB_STATUS_SUCCEEDED, t.JOB_STATUS_FAILED, t.JOB_STATUS_CANCELLED)
    return render(
        request,
        "job.html",
        session=session,
        job=job,
        runs=list(reversed(job.runs)),  # newest attempt first
        history=list(history.events),
        gate=gate,
        gate_events=list(gate_events.events)[-5:],
        before_confirm=before_confirm,
        awaiting=job.status == t.JOB_STATUS_AWAITING_CONFIRM,
        retryable=job.status in (*RETRYABLE, t.JOB_STATUS_QUEUED),
        finished=finished,
        live_subjects=[job.id, job.post_id],
        live_job="" if finished else job.id,
        live_after=_last_seq(list(history.events)),
    )


async def ratelimits_page(request: Request) -> Response:
    session, client = person(request)
    found = await client.list_rate_limits()
    return render(request, "ratelimits.html", session=session, gates=found.gates, now=found.now)


async def devices_page(request: Request) -> Response:
    session, client = person(request)
    found = await client.list_devices()
    return render(request, "devices.html", session=session, devices=found.devices)


async def audit_page(request: Request) -> Response:
    session, client = person(request)
    q = request.query_params
    filters = {k: q.get(k, "").strip() for k in ("subject", "action", "since")}
    try:
        after = max(0, int(q.get("after", "0") or 0))
    except ValueError:
        after = 0
    page = await client.list_audit_events(
        subject_id=filters["subject"],
        action=filters["action"],
        since=filters["since"],
        after_seq=after,
        page_size=AUDIT_PAGE,
    )
    return render(
        request,
        "audit.html",
        session=session,
        events=list(page.events),
        filters=filters,
        next_after=page.next_after_seq,
    )
