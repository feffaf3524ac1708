"""What every page and action shares: the console's state, the signed-in person's client, page
rendering, and the translation of the coordinator's refusals into pages a person can read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from postroom.client import AsyncClient
from postroom.client.errors import PostroomError
from postroom_console.auth import COOKIE, Session, Sessions

# The coordinator's refusal -> the HTTP status of the page that shows it.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 502,
    "DEADLINE_EXCEEDED": 504,
}


@dataclass(slots=True)
class ConsoleState:
    client: AsyncClient  # the shared channel; each person calls through client.as_user(token)
    sessions: Sessions
    templates: jinja2.Environment
    coordinator: str


class LoginRequired(Exception):
    """Raised by `person()` when nobody is signed in: the handler redirects to /login."""


def state(request: Request) -> ConsoleState:
    found: ConsoleState = request.app.state.console
    return found


def person(request: Request) -> tuple[Session, AsyncClient]:
    """The signed-in person and a client that calls with their token."""
    st = state(request)
    session = st.sessions.get(request.cookies.get(COOKIE))
    if session is None:
        raise LoginRequired
    return session, st.client.as_user(session.token)


def render(
    request: Request,
    template: str,
    *,
    status_code: int = 200,
    session: Session | None = None,
    **context: Any,
) -> HTMLResponse:
    st = state(request)
    # Pages that follow subjects live say which; others follow every change from now on.
    context.setdefault("live_subjects", [])
    context.setdefault("live_after", 0)
    context.setdefault("live_job", "")  # a job page while it runs: its step logs too
    # An htmx refresh swaps only the live region: the messages wait for the next whole page.
    flash: list[str] = []
    if session is not None and "hx-request" not in request.headers:
        flash, session.flash[:] = list(session.flash), []
    html = st.templates.get_template(template).render(
        request=request,
        session=session,
        flash=flash,
        coordinator=st.coordinator,
        single_user=st.sessions.single_user is not None,
        **context,
    )
    return HTMLResponse(html, status_code=status_code)


def refusal_page(
    request: Request, exc: PostroomError, *, what: str, back: str = "/posts"
) -> HTMLResponse:
    """The coordinator said no (or could not be reached): say what, why, and what to do."""
    session = state(request).sessions.get(request.cookies.get(COOKIE))
    return render(
        request,
        "refused.html",
        status_code=HTTP_STATUS.get(exc.code, 500),
        session=session,
        what=what,
        code=exc.code,
        message=exc.message,
        back=back,
    )


# What a page is called when the coordinator refuses it, by the first part of its path.
PAGE_NAMES = {
    "posts": "Posts",
    "calendar": "The calendar",
    "jobs": "Jobs",
    "ratelimits": "Rate limits",
    "devices": "Devices",
    "audit": "The audit log",
    "audit.jsonl": "Exporting the audit log",
    "assets": "The screenshot",
}


async def coordinator_error(request: Request, exc: Exception) -> Response:
    """A page the coordinator refused or could not serve (actions name themselves instead)."""
    assert isinstance(exc, PostroomError)
    parts = request.url.path.strip("/").split("/")
    what = PAGE_NAMES.get(parts[0], "This page")
    if len(parts) > 1 and parts[0] in ("posts", "jobs"):
        what = f"{what[:-1]} {parts[1]}"  # "Post p-…", "Job j-…"
    return refusal_page(request, exc, what=what)


async def login_redirect(request: Request, exc: Exception) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    session = state(request).sessions.get(request.cookies.get(COOKIE))
    return render(
        request,
        "refused.html",
        status_code=exc.status_code,
        session=session,
        what="This page",
        code=str(exc.status_code),
        message=str(exc.detail),
        back="/posts",
    )


def safe_next(value: str) -> str:
    """Where to go after a login or an action: a path on this console, never another site."""
    if value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/posts"


def _quote(value: str) -> str:
    return quote(value, safe="/")
