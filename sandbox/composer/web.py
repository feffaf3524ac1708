"""What the composer sites share: templates, sessions and the login wall, page faults, the submit,
and the pages themselves (`ComposerSite`).

A site (x_site.py, instagram_site.py) supplies its `Shape` (paths, cookie, limits, form fields,
messages) and what only it says: its answer to a submit, its error, its profile items, its
permalink page. The rules (who is logged in, which fault fires, what is recorded) live here once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from string import Template
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sandbox.app import Draft, Post, SandboxState, hang
from sandbox.faults import FaultKind, Op, Reply, fault_reply

TEMPLATES = Path(__file__).parent / "templates"
USERNAME = re.compile(r"[A-Za-z0-9_.]{1,30}")
# Kept for the site's own pages (grid, permalink); larger uploads are recorded, not shown.
MAX_SHOWN_MEDIA_BYTES = 5 * 1024 * 1024
SESSION_MAX_AGE_S = 30 * 24 * 3600

_SUBMIT_KINDS = frozenset(FaultKind) - {
    FaultKind.RENAMED_SELECTOR,
    FaultKind.SLOW_PAGE,
    FaultKind.CHALLENGE,
}
_ACCEPTING = (FaultKind.ACCEPT_THEN_FAIL, FaultKind.ACCEPT_THEN_HANG)


class Raw(str):
    """Markup a template takes as is; every other value is escaped."""


def render(name: str, status: int = 200, **values: str) -> HTMLResponse:
    return render_values(name, values, status)


def render_values(name: str, values: Mapping[str, str], status: int = 200) -> HTMLResponse:
    text = Template((TEMPLATES / name).read_text(encoding="utf-8"))
    safe = {
        key: value if isinstance(value, Raw) else escape(value) for key, value in values.items()
    }
    return HTMLResponse(text.substitute(safe), status_code=status)


@dataclass(frozen=True)
class Renamable:
    """The composer's template value that the renamed_selector fault swaps."""

    name: str  # the template's variable
    value: str
    renamed: str


@dataclass(frozen=True, kw_only=True)
class Shape:
    """Where a site keeps things, what it allows, what its forms and messages are called."""

    platform: str
    title: str
    templates: str  # the prefix of its pages' templates: {templates}_login.html ...
    cookie: str  # the session cookie's name (X: auth_token, Instagram: sessionid)
    login_path: str
    next_param: str  # the login page's "where to after" query parameter
    username_field: str
    username_prefix: str = ""  # what a typed username may start with (X's "@")
    login_error: str
    home_path: str
    challenge_path: str
    challenge_title: str
    challenge_heading: str
    challenge_error: str
    compose_path: str
    renamable: Renamable
    submit_path: str
    text_field: str
    media_field: str
    permalink: str  # a path template with {account} and {id}
    profile_path: str  # a route path with {account}
    max_chars: int
    needs_media: bool


@dataclass(frozen=True)
class _Session:
    account: str
    epoch: int


@dataclass(kw_only=True)
class Submitted:
    """What a submit came to: the recorded post, or the error to answer with."""

    post: Post | None = None
    error: Reply | None = None


@dataclass(frozen=True)
class Visit:
    """A page load past the login wall: whose session, and whether the UI is renamed."""

    account: str
    renamed: bool


@dataclass
class Site:
    state: SandboxState
    shape: Shape
    _sessions: dict[str, _Session] = field(default_factory=dict)
    _media: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    # Sessions -------------------------------------------------------------------------------

    def account_of(self, request: Request) -> str | None:
        """The account whose valid session cookie came with `request`, if any."""
        session = self._sessions.get(request.cookies.get(self.shape.cookie, ""))
        if session is None:
            return None
        platform = self.shape.platform
        if not self.state.is_logged_in(platform, session.account):
            return None
        if session.epoch != self.state.session_epoch(platform, session.account):
            return None
        return session.account

    def log_in(self, request: Request, account: str, to: str) -> Response:
        self.state.set_logged_in(self.shape.platform, account, True)
        token = secrets.token_urlsafe(24)
        epoch = self.state.session_epoch(self.shape.platform, account)
        self._sessions[token] = _Session(account, epoch)
        response = RedirectResponse(root(request) + to, status_code=303)
        # Path-scoped, so the two sites on one host keep their sessions apart.
        response.set_cookie(
            self.shape.cookie,
            token,
            max_age=SESSION_MAX_AGE_S,
            path=root(request) + "/",
            httponly=True,
            samesite="lax",
        )
        return response

    def login_redirect(self, request: Request) -> Response:
        here = request.url.path.removeprefix(root(request)) or "/"
        query = urlencode({self.shape.next_param: here})
        return RedirectResponse(f"{root(request)}{self.shape.login_path}?{query}", 302)

    def safe_next(self, value: str) -> str:
        # Only a path on this site: never an open redirect.
        return value if value.startswith("/") and not value.startswith("//") else ""

    # Pages ----------------------------------------------------------------------------------

    async def open_page(self, request: Request, *, composer: bool = False) -> Visit | Response:
        """A page load past the login wall, or the response that replaces the page (the login
        wall, a challenge). Applies the page faults (renamed_selector on composers only)."""
        account = self.account_of(request)
        if account is None:
            return self.login_redirect(request)
        platform = self.shape.platform
        self.state.requests[Op.PAGE.value] += 1
        if self.state.take_fault(platform, account, Op.PAGE, {FaultKind.CHALLENGE}) is not None:
            return RedirectResponse(root(request) + self.shape.challenge_path, 302)
        slow = self.state.take_fault(platform, account, Op.PAGE, {FaultKind.SLOW_PAGE})
        if slow is not None:
            await hang(self.state, request, slow.hang_seconds)
        renamed = composer and (
            self.state.take_fault(platform, account, Op.PAGE, {FaultKind.RENAMED_SELECTOR})
            is not None
        )
        return Visit(account, renamed)

    def posts_of(self, account: str) -> list[Post]:
        """The account's posts, newest first (as a profile lists them)."""
        found = self.state.find(self.shape.platform, account, client_key=None, fingerprint=None)
        return list(reversed(found))

    def post_by_id(self, post_id: str) -> Post | None:
        for post in self.state.posts:
            if post.platform == self.shape.platform and post.id == post_id:
                return post
        return None

    def media_response(self, post_id: str) -> Response:
        shown = self._media.get(post_id)
        if shown is None:
            return Response(status_code=404)
        content_type, data = shown
        return Response(data, media_type=content_type)

    def has_media(self, post_id: str) -> bool:
        return post_id in self._media

    # The submit -----------------------------------------------------------------------------

    async def submit(self, request: Request) -> Submitted:
        """Take a composer's multipart POST: check the session, fire a fault, check the content,
        record the post."""
        self.state.requests[Op.CREATE.value] += 1
        account = self.account_of(request)
        if account is None:
            return Submitted(error=_reply(401, "auth_required", "You are not logged in."))
        async with request.form() as form:
            text = form.get(self.shape.text_field, "")
            # multipart/form-data sends a textarea's line breaks as CRLF; the site keeps LF.
            text = text.replace("\r\n", "\n") if isinstance(text, str) else ""
            uploads = [
                await _describe(item)
                for item in form.getlist(self.shape.media_field)
                if isinstance(item, UploadFile)
            ]
        fault = self.state.take_fault(self.shape.platform, account, Op.CREATE, _SUBMIT_KINDS)
        if fault is not None and fault.kind not in _ACCEPTING:
            if fault.kind is FaultKind.HANG:
                await hang(self.state, request, fault.hang_seconds)
            return Submitted(error=fault_reply(fault, now=self.state.clock()))
        if not self.state.is_logged_in(self.shape.platform, account):
            return Submitted(error=_reply(401, "auth_required", "You are not logged in."))
        problem = self._content_problem(text, uploads)
        if problem is not None:
            return Submitted(error=_reply(400, "invalid_content", problem))
        draft = Draft(text=text, media=tuple(name for name, _, _ in uploads), client_key="")
        base = f"{request.base_url.scheme}://{request.base_url.netloc}{root(request)}"

        def url(post_id: str) -> str:
            return base + self.shape.permalink.format(account=quote(account), id=quote(post_id))

        post = self.state.record(
            self.shape.platform, account, draft, base_url=str(request.base_url), permalink=url
        )
        if uploads and len(uploads[0][2]) <= MAX_SHOWN_MEDIA_BYTES:
            self._media[post.id] = (uploads[0][1], uploads[0][2])
        if fault is not None:  # accept_then_*: the post exists, the client never hears so
            if fault.kind is FaultKind.ACCEPT_THEN_HANG:
                await hang(self.state, request, fault.hang_seconds)
            return Submitted(error=fault_reply(fault, now=self.state.clock()))
        return Submitted(post=post)

    def _content_problem(self, text: str, uploads: list[tuple[str, str, bytes]]) -> str | None:
        if self.shape.needs_media and not uploads:
            return "Add a photo or video to share."
        if not text.strip() and not uploads:
            return "Your post is empty."
        if len(text) > self.shape.max_chars:
            return f"Your post is {len(text)} characters; the limit is {self.shape.max_chars}."
        return None


class ComposerSite(ABC):
    """One composer site's pages and submit, as its `Shape` says; a subclass supplies what only
    that site says (`created`, `error`, `item`, `permalink_route`)."""

    def __init__(self, state: SandboxState, shape: Shape) -> None:
        self.shape = shape
        self.site = Site(state, shape)

    @abstractmethod
    def created(self, post: Post) -> dict[str, object]:
        """The site's JSON answer to an accepted submit."""

    @abstractmethod
    def error(self, reply: Reply) -> Response:
        """The site's answer to a refused submit, in its own error shape."""

    @abstractmethod
    def item(self, base: str, post: Post) -> str:
        """One post's markup on the profile page (`base` is the site's mount path)."""

    @abstractmethod
    def permalink_route(self) -> Route:
        """The route of one post's page (before the profile's, which would match it)."""

    def app(self) -> Starlette:
        shape = self.shape
        return Starlette(
            routes=[
                static_mount(),
                Route(shape.login_path, self.login_page, methods=["GET"]),
                Route(shape.login_path, self.login, methods=["POST"]),
                Route(shape.challenge_path, self.challenge, methods=["GET", "POST"]),
                Route(shape.home_path, self.home, methods=["GET"]),
                Route(shape.compose_path, self.compose, methods=["GET"]),
                Route(shape.submit_path, self.submit, methods=["POST"]),
                Route("/media/{post_id}", self.media, methods=["GET"]),
                self.permalink_route(),
                Route(shape.profile_path, self.profile, methods=["GET"]),
            ]
        )

    def page(self, name: str, request: Request, *, status: int = 200, **values: str) -> Response:
        """The site's template `name` (login, home, compose, ...), under its mount path."""
        return render(f"{self.shape.templates}_{name}.html", status, root=root(request), **values)

    async def login_page(self, request: Request) -> Response:
        next_path = self.site.safe_next(request.query_params.get(self.shape.next_param, ""))
        return self.page("login", request, next=next_path, error="")

    async def login(self, request: Request) -> Response:
        shape = self.shape
        form = await request.form()
        username = str(form.get(shape.username_field, "")).strip()
        username = username.removeprefix(shape.username_prefix)
        password = str(form.get("password", ""))
        next_path = self.site.safe_next(str(form.get(shape.next_param, ""))) or shape.home_path
        if not USERNAME.fullmatch(username) or not password:
            return self.page("login", request, status=400, next=next_path, error=shape.login_error)
        return self.site.log_in(request, username, next_path)

    async def challenge(self, request: Request) -> Response:
        shape = self.shape
        return render(
            "challenge.html",
            root=root(request),
            title=shape.challenge_title,
            heading=shape.challenge_heading,
            error=shape.challenge_error if request.method == "POST" else "",
        )

    async def home(self, request: Request) -> Response:
        visit = await self.site.open_page(request)
        if not isinstance(visit, Visit):
            return visit
        return self.page("home", request, account=visit.account)

    async def compose(self, request: Request) -> Response:
        visit = await self.site.open_page(request, composer=True)
        if not isinstance(visit, Visit):
            return visit
        swapped = self.shape.renamable
        value = swapped.renamed if visit.renamed else swapped.value
        values = {"root": root(request), "account": visit.account, swapped.name: value}
        return render_values(f"{self.shape.templates}_compose.html", values)

    async def submit(self, request: Request) -> Response:
        submitted = await self.site.submit(request)
        if submitted.error is not None:
            return self.error(submitted.error)
        assert submitted.post is not None
        return JSONResponse(self.created(submitted.post))

    async def profile(self, request: Request) -> Response:
        account = request.path_params["account"]
        if not USERNAME.fullmatch(account):
            return Response("Not found", 404)
        visit = await self.site.open_page(request)
        if not isinstance(visit, Visit):
            return visit
        posts = self.site.posts_of(account)
        items = "\n".join(self.item(root(request), post) for post in posts)
        return self.page(
            "profile", request, account=account, count=str(len(posts)), items=Raw(items)
        )

    async def media(self, request: Request) -> Response:
        return self.site.media_response(request.path_params["post_id"])


def static_mount() -> Mount:
    """The sites' CSS and scripts, at {root}/static/."""
    return Mount("/static", app=StaticFiles(directory=Path(__file__).parent / "static"))


def root(request: Request) -> str:
    """The site's mount path (e.g. /web/x): every link and cookie is under it."""
    value = request.scope.get("root_path", "")
    return value if isinstance(value, str) else ""


def _reply(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"error": code, "message": message}, {})


async def _describe(upload: UploadFile) -> tuple[str, str, bytes]:
    """(recorded name, content type, bytes) of an uploaded file: the name carries a digest so
    a test can tell which file was posted."""
    data = await upload.read()
    digest = hashlib.sha256(data).hexdigest()[:16]
    name = f"{upload.filename or 'upload'}#sha256:{digest}"
    return name, upload.content_type or "application/octet-stream", data


def error_message(reply: Reply) -> str:
    message = reply.body.get("message")
    return message if isinstance(message, str) else "Something went wrong."
