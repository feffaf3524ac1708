"""The console's actions, with the CLI's rules: each is one call (or, for a bulk retry, one per
job) to the coordinator with the person's token, so the coordinator decides by role and audits
who did it. Anything that cannot be taken back (publishing now, confirming, cancelling) is asked
about first on a page of its own: it works without JavaScript and with a keyboard."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from postroom.client import AsyncClient
from postroom.client.errors import PermissionDenied, PostroomError, Unauthenticated
from postroom.v1 import types_pb2 as t
from postroom_console.auth import csrf_ok
from postroom_console.pages import MAX_PAGE, RETRYABLE
from postroom_console.web import person, refusal_page, render, safe_next

Run = Callable[[AsyncClient, FormData], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Action:
    title: str  # the button and the question: "Cancel post"
    fields: tuple[str, ...]  # form fields the action reads (kept through the confirmation)
    irreversible: bool
    consequence: str  # what happens, said on the confirmation page ({field} placeholders)
    run: Run


def _field(form: FormData, name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def _scheduled_at(form: FormData) -> str:
    """A datetime-local value (read as UTC, as the page says) as RFC 3339; "" keeps the post's."""
    text = _field(form, "scheduled_at")
    if not text:
        return ""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return text  # the coordinator refuses it with a message that says what to fix
    return when.replace(tzinfo=when.tzinfo or UTC).isoformat()


async def _approve(client: AsyncClient, form: FormData) -> str:
    post_id = _field(form, "post_id")
    await client.approve_post(post_id, content_hash=_field(form, "content_hash"))
    return f"Approved post {post_id}."


async def _submit(client: AsyncClient, form: FormData) -> str:
    post_id = _field(form, "post_id")
    await client.submit_post(post_id)
    return f"Submitted post {post_id} for approval."


async def _schedule(client: AsyncClient, form: FormData) -> str:
    post_id = _field(form, "post_id")
    post = await client.schedule_post(post_id, scheduled_at=_scheduled_at(form))
    return f"Scheduled post {post_id}: {len(post.target_states)} job(s)."


async def _cancel_post(client: AsyncClient, form: FormData) -> str:
    post_id = _field(form, "post_id")
    await client.cancel_post(post_id, reason=_field(form, "reason"))
    return f"Cancelled post {post_id}."


async def _cancel_job(client: AsyncClient, form: FormData) -> str:
    job_id = _field(form, "job_id")
    await client.cancel_job(job_id, reason=_field(form, "reason"))
    return f"Cancelled job {job_id}."


async def _retry(client: AsyncClient, form: FormData) -> str:
    job_id = _field(form, "job_id")
    job = await client.retry_job(job_id, force=_field(form, "force") == "yes")
    return f"Retrying job {job_id} now ({_status(job.status)})."


async def _retry_account(client: AsyncClient, form: FormData) -> str:
    """Every FAILED or NEEDS_LOGIN job of one (platform, account): what one expired token broke."""
    platform, account = _field(form, "platform"), _field(form, "account")
    if not platform or not account:
        raise PostroomError("INVALID_ARGUMENT", "say which platform and account to retry")
    job_ids: list[str] = []
    for status in RETRYABLE:
        token = ""
        while True:
            page = await client.list_jobs(
                status=status,
                platform=platform,
                account=account,
                page_size=MAX_PAGE,
                page_token=token,
            )
            job_ids += [j.id for j in page.jobs]
            if not (token := page.next_page_token):
                break
    refused: list[str] = []
    for job_id in job_ids:
        try:
            await client.retry_job(job_id)
        except (PermissionDenied, Unauthenticated):
            raise  # the person may not retry at all: one refusal says it
        except PostroomError as exc:
            refused.append(f"{job_id}: {exc.message}")
    done = len(job_ids) - len(refused)
    message = f"Retrying {done} of {len(job_ids)} failed job(s) of {platform}:{account} now."
    return message + (" Refused: " + "; ".join(refused) if refused else "")


async def _confirm(client: AsyncClient, form: FormData) -> str:
    job_id = _field(form, "job_id")
    await client.confirm_job(job_id)
    return f"Confirmed job {job_id}: it goes ahead with its irreversible step."


async def _reopen(client: AsyncClient, form: FormData) -> str:
    platform, account = _field(form, "platform"), _field(form, "account")
    await client.reopen_rate_limit(platform, account)
    return f"Reopened the gate of {platform}:{account}."


async def _check_login(client: AsyncClient, form: FormData) -> str:
    device, platform, account = (_field(form, k) for k in ("device_id", "platform", "account"))
    answer = await client.check_login(device_id=device, platform=platform, account=account)
    state = t.LoginState.Name(answer.badge.state).removeprefix("LOGIN_STATE_")
    requeued = ", ".join(answer.requeued_job_ids) or "none"
    return f"Login of {platform}:{account} on {device}: {state}. Jobs requeued: {requeued}."


def _status(value: int) -> str:
    return t.JobStatus.Name(value).removeprefix("JOB_STATUS_")  # type: ignore[arg-type]


ACTIONS: dict[str, Action] = {
    "approve": Action("Approve post", ("post_id", "content_hash"), False, "", _approve),
    "submit": Action("Submit for approval", ("post_id",), False, "", _submit),
    "schedule": Action(
        "Schedule post",
        ("post_id", "scheduled_at"),
        True,
        "Post {post_id} will be published to each of its targets at its time (or now, when it "
        "has none). What has gone out cannot be taken back.",
        _schedule,
    ),
    "cancel-post": Action(
        "Cancel post",
        ("post_id", "reason"),
        True,
        "Every job of post {post_id} that has not finished is cancelled. This cannot be undone; "
        "what was already published stays published.",
        _cancel_post,
    ),
    "cancel-job": Action(
        "Cancel job",
        ("job_id", "reason"),
        True,
        "Job {job_id} is cancelled and a worker holding it is told to stop. This cannot be undone.",
        _cancel_job,
    ),
    "retry": Action(
        "Retry now",
        ("job_id", "force"),
        True,
        "Job {job_id} is tried again now (its backoff is skipped): it may publish.",
        _retry,
    ),
    "retry-account": Action(
        "Retry every failed job of this account",
        ("platform", "account"),
        True,
        "Every FAILED or NEEDS_LOGIN job of {platform}:{account} is tried again now: each may "
        "publish.",
        _retry_account,
    ),
    "confirm": Action(
        "Confirm and publish",
        ("job_id", "shot"),
        True,
        "Job {job_id} goes ahead with its irreversible step: the post as shown in its "
        "before-confirm screenshot is published. This cannot be undone.",
        _confirm,
    ),
    "reopen": Action("Reopen gate", ("platform", "account"), False, "", _reopen),
    "check-login": Action(
        "Check login", ("device_id", "platform", "account"), False, "", _check_login
    ),
}


async def act(request: Request) -> Response:
    session, client = person(request)
    action = ACTIONS.get(request.path_params["name"])
    if action is None:
        raise HTTPException(404, f"no action {request.path_params['name']!r}")
    form = await request.form()
    if not csrf_ok(session, _field(form, "csrf")):
        raise HTTPException(403, "this form is stale or not from this console: reload the page")
    values = {name: _field(form, name) for name in action.fields}
    back = safe_next(_field(form, "next"))
    if action.irreversible and _field(form, "confirmed") != "yes":
        return render(
            request,
            "confirm.html",
            session=session,
            action=action,
            name=request.path_params["name"],
            values=values,
            consequence=action.consequence.format(**values),
            back=back,
        )
    try:
        message = await action.run(client, form)
    except PostroomError as exc:
        return refusal_page(request, exc, what=action.title, back=back)
    session.flash.append(message)
    return RedirectResponse(back, status_code=303)
