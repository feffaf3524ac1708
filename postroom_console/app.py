"""The console's Starlette application: routes, sign-in, and its lifecycle (one channel to the
coordinator, opened at start-up and closed at shutdown)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from postroom.client import AsyncClient
from postroom.client.errors import PostroomError
from postroom.tls import ClientTls
from postroom_console import actions, live, pages
from postroom_console.auth import COOKIE, DEFAULT_SESSION_IDLE_S, Session, Sessions
from postroom_console.render import environment
from postroom_console.web import (
    ConsoleState,
    LoginRequired,
    coordinator_error,
    http_error,
    login_redirect,
    render,
    safe_next,
    state,
)

STATIC = Path(__file__).parent / "static"
CONSOLE_ACTOR = "console"  # what an open coordinator (no tokens) records as the actor


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    coordinator: str
    # A single-user console: this token for every request, no sign-in. None: people sign in.
    token: str | None = None
    tls: ClientTls | None = None
    session_idle_s: float = DEFAULT_SESSION_IDLE_S
    timeout_s: float = 10.0
    # Called once the console can serve (its socket may be listening before then).
    on_ready: Callable[[], None] | None = None


async def _who(client: AsyncClient, token: str) -> Session:
    me = await client.as_user(token).who_am_i()
    actor = me.actor if me.authenticated else CONSOLE_ACTOR
    return Session(token=token, actor=actor, role=me.role)


async def login_form(request: Request) -> Response:
    if state(request).sessions.single_user is not None:
        return RedirectResponse("/posts", status_code=303)
    return render(
        request,
        "login.html",
        next=safe_next(request.query_params.get("next", "")),
        error="",
    )


async def login(request: Request) -> Response:
    st = state(request)
    form = await request.form()
    token = str(form.get("token", "")).strip()
    target = safe_next(str(form.get("next", "")))
    try:
        session = await _who(st.client, token)
    except PostroomError as exc:
        return render(
            request,
            "login.html",
            status_code=401,
            next=target,
            error=f"{exc.code}: {exc.message}",
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE, st.sessions.create(session), httponly=True, samesite="strict", path="/"
    )
    return response


async def logout(request: Request) -> Response:
    state(request).sessions.drop(request.cookies.get(COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


async def home(request: Request) -> Response:
    return RedirectResponse("/posts", status_code=303)


ROUTES = [
    Route("/", home),
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/posts", pages.posts_page),
    Route("/calendar", pages.calendar_page),
    Route("/posts/{post_id}", pages.post_page),
    Route("/jobs", pages.jobs_page),
    Route("/jobs/{job_id}", pages.job_page),
    Route("/ratelimits", pages.ratelimits_page),
    Route("/devices", pages.devices_page),
    Route("/audit", pages.audit_page),
    Route("/audit.jsonl", live.audit_export),
    Route("/assets/{asset_id}", live.asset),
    Route("/events", live.events),
    Route("/act/{name}", actions.act, methods=["POST"]),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]


def create_app(config: ConsoleConfig) -> Starlette:
    """The console for one coordinator. With `config.token` it is single-user: the token is
    checked at start-up (WhoAmI) and used for every request."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = AsyncClient(
            config.coordinator, token="", tls=config.tls, timeout_s=config.timeout_s
        )
        client.actor = CONSOLE_ACTOR
        try:
            single = await _who(client, config.token) if config.token is not None else None
            app.state.console = ConsoleState(
                client=client,
                sessions=Sessions(idle_s=config.session_idle_s, single_user=single),
                templates=environment(),
                coordinator=config.coordinator,
            )
            if config.on_ready is not None:
                config.on_ready()
            yield
        finally:
            await client.close()

    return Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={
            LoginRequired: login_redirect,
            HTTPException: http_error,
            PostroomError: coordinator_error,
        },
    )
