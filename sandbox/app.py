"""The sandbox HTTP app: platform-shaped APIs, fault injection, and an admin API over the record.

All state lives in one `SandboxState` owned by the app. Its methods are synchronous, so each
request's read-modify-write (take a fault, check, record) runs without an `await` in between
and is atomic on the event loop: no lock is needed, and none could make it any safer.

The sandbox never de-duplicates a create: every accepted post is recorded, so a caller that
posts twice shows up in `/admin/duplicates`.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sandbox.admin_auth import AdminToken
from sandbox.composer import composer_mounts
from sandbox.faults import (
    FaultKind,
    FaultQueue,
    FaultSpec,
    FaultSpecError,
    Op,
    Reply,
    fault_reply,
    parse_fault_spec,
)
from sandbox.standins import standin_mounts

MAX_TEXT_CHARS = 500

Clock = Callable[[], float]


def fingerprint(text: str) -> str:
    """The content fingerprint lookups accept: sha256 hex of the UTF-8 text, not normalised."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def rfc3339(unix_seconds: float) -> str:
    moment = datetime.fromtimestamp(unix_seconds, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, kw_only=True)
class Draft:
    text: str
    media: tuple[str, ...]
    client_key: str


@dataclass(frozen=True, kw_only=True)
class Post:
    id: str
    platform: str
    account: str
    text: str
    media: tuple[str, ...]
    client_key: str
    fingerprint: str
    created_at: float
    url: str

    def public_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "text": self.text,
            "client_key": self.client_key,
            "created_at": rfc3339(self.created_at),
        }

    def admin_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "platform": self.platform,
            "account": self.account,
            "text": self.text,
            "media": list(self.media),
            "client_key": self.client_key,
            "fingerprint": self.fingerprint,
            "created_at": rfc3339(self.created_at),
            "url": self.url,
        }


class SandboxState:
    """Everything the sandbox remembers. Only the app's handlers mutate it."""

    def __init__(self, *, clock: Clock) -> None:
        self.clock = clock
        self.faults = FaultQueue()
        self.posts: list[Post] = []
        self._by_id: dict[tuple[str, str], Post] = {}
        self._by_account: dict[tuple[str, str], list[Post]] = {}
        self._logged_out: set[tuple[str, str]] = set()
        # Bumped at every log-out, so a composer site's older session cookies stop working.
        # Kept across reset(), like the ids, so a stale cookie never comes back to life.
        self._session_epoch: Counter[tuple[str, str]] = Counter()
        self.requests: Counter[str] = Counter()
        self.faults_fired: Counter[str] = Counter()
        self.hanging = 0
        # Ids keep counting across reset() so an id never names two different posts.
        self._seq: Counter[str] = Counter()
        # Set when the server begins shutting down, to release requests stuck in a `hang`.
        # asyncio's Event binds to a loop only when first awaited, so this works outside one.
        self.closing = asyncio.Event()

    def take_fault(
        self, platform: str, account: str, op: Op, kinds: Container[FaultKind] | None = None
    ) -> FaultSpec | None:
        spec = self.faults.take(platform, account, op, kinds)
        if spec is not None:
            self.faults_fired[spec.kind.value] += 1
            if spec.kind is FaultKind.AUTH:
                self.set_logged_in(platform, account, False)
        return spec

    def is_logged_in(self, platform: str, account: str) -> bool:
        return (platform, account) not in self._logged_out

    def set_logged_in(self, platform: str, account: str, logged_in: bool) -> None:
        if logged_in:
            self._logged_out.discard((platform, account))
        else:
            self._logged_out.add((platform, account))
            self._session_epoch[(platform, account)] += 1

    def session_epoch(self, platform: str, account: str) -> int:
        """Which log-out the account is past: a web session made before it is no longer valid."""
        return self._session_epoch[(platform, account)]

    def record(
        self,
        platform: str,
        account: str,
        draft: Draft,
        *,
        base_url: str,
        permalink: Callable[[str], str] | None = None,
    ) -> Post:
        """Record an accepted post; its url is `permalink(post_id)` when given (a composer
        site's own page), else the sandbox's /p/ page under `base_url`."""
        self._seq[platform] += 1
        post_id = f"{platform}-{self._seq[platform]}"
        default_url = f"{base_url}p/{quote(platform, safe='')}/{quote(account, safe='')}/{post_id}"
        post = Post(
            id=post_id,
            platform=platform,
            account=account,
            text=draft.text,
            media=draft.media,
            client_key=draft.client_key,
            fingerprint=fingerprint(draft.text),
            created_at=self.clock(),
            url=permalink(post_id) if permalink is not None else default_url,
        )
        self.posts.append(post)
        self._by_id[(platform, post_id)] = post
        self._by_account.setdefault((platform, account), []).append(post)
        return post

    def find(
        self, platform: str, account: str, *, client_key: str | None, fingerprint: str | None
    ) -> list[Post]:
        return [
            post
            for post in self._by_account.get((platform, account), [])
            if (client_key is None or post.client_key == client_key)
            and (fingerprint is None or post.fingerprint == fingerprint)
        ]

    def latest_like(self, platform: str, account: str, draft: Draft) -> Post | None:
        """The most recent post a `duplicate` answer should point at: same key or same text."""
        wanted = fingerprint(draft.text)
        for post in reversed(self._by_account.get((platform, account), [])):
            if (draft.client_key and post.client_key == draft.client_key) or (
                post.fingerprint == wanted
            ):
                return post
        return None

    def get(self, platform: str, account: str, post_id: str) -> Post | None:
        post = self._by_id.get((platform, post_id))
        return post if post is not None and post.account == account else None

    def duplicates(self) -> list[dict[str, Any]]:
        groups: dict[tuple[str, str, str, str], list[Post]] = {}
        for post in self.posts:
            # Without a client key, the text is the only identity a post has.
            identity = "" if post.client_key else post.fingerprint
            key = (post.platform, post.account, post.client_key, identity)
            groups.setdefault(key, []).append(post)
        return [
            {
                "platform": platform,
                "account": account,
                "client_key": client_key,
                "count": len(posts),
                "ids": [post.id for post in posts],
            }
            for (platform, account, client_key, _), posts in groups.items()
            if len(posts) > 1
        ]

    def reset(self) -> None:
        self.faults.clear()
        self.posts.clear()
        self._by_id.clear()
        self._by_account.clear()
        self._logged_out.clear()
        self.requests.clear()
        self.faults_fired.clear()


class _BadRequest(Exception):
    """A request body that is not the documented shape (a client bug, not a content problem)."""


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _send(reply: Reply) -> Response:
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


def _session_expired() -> Response:
    return _error(401, "auth_required", "session expired; log in again")


def _has_bearer(request: Request) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def content_problem(text: str) -> str | None:
    if not text.strip():
        return "text is empty"
    if len(text) > MAX_TEXT_CHARS:
        return f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}"
    return None


async def _read_draft(request: Request) -> Draft:
    try:
        data = await request.json()
    except ValueError:
        raise _BadRequest("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _BadRequest("body must be a JSON object")
    text = data.get("text", "")
    media = data.get("media", [])
    client_key = data.get("client_key") or request.headers.get("idempotency-key", "")
    if not isinstance(text, str):
        raise _BadRequest("'text' must be a string")
    if not isinstance(media, list) or not all(isinstance(item, str) for item in media):
        raise _BadRequest("'media' must be a list of strings")
    if not isinstance(client_key, str):
        raise _BadRequest("'client_key' must be a string")
    return Draft(text=text, media=tuple(media), client_key=client_key)


async def _first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as any of `waits` returns, cancelling the rest."""
    async with anyio.create_task_group() as group:

        async def run(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            group.cancel_scope.cancel()

        for wait in waits:
            group.start_soon(run, wait)


async def _client_gone(request: Request) -> None:
    # The body has been read already, so the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def hang(state: SandboxState, request: Request, seconds: float) -> None:
    """Wait `seconds`, or less: stop early when the client gives up (the soak would otherwise
    pile up handlers) or the server shuts down (so stopping it is prompt)."""
    state.hanging += 1
    try:
        with anyio.move_on_after(seconds):
            await _first_of(state.closing.wait, lambda: _client_gone(request))
    finally:
        state.hanging -= 1


class _Api:
    def __init__(self, state: SandboxState) -> None:
        self.state = state

    # Platform APIs --------------------------------------------------------------------------

    async def create_post(self, request: Request) -> Response:
        platform, account = request.path_params["platform"], request.path_params["account"]
        self.state.requests[Op.CREATE.value] += 1
        if not _has_bearer(request):
            return _error(401, "auth_required", "missing bearer token")
        try:
            draft = await _read_draft(request)
        except _BadRequest as exc:
            return _error(400, "invalid_request", str(exc))
        fault = self.state.take_fault(platform, account, Op.CREATE)
        accepts = (FaultKind.ACCEPT_THEN_FAIL, FaultKind.ACCEPT_THEN_HANG)
        if fault is not None and fault.kind not in accepts:
            return await self._fire(request, fault, platform, account, draft)
        if not self.state.is_logged_in(platform, account):
            return _session_expired()
        problem = content_problem(draft.text)
        if problem is not None:
            return _error(400, "invalid_content", problem)
        post = self.state.record(platform, account, draft, base_url=str(request.base_url))
        if fault is not None:  # accept_then_*: the post exists, the client never hears so
            if fault.kind is FaultKind.ACCEPT_THEN_HANG:
                await hang(self.state, request, fault.hang_seconds)
            return _send(fault_reply(fault, now=self.state.clock()))
        return JSONResponse(
            {"id": post.id, "url": post.url, "created_at": rfc3339(post.created_at)},
            status_code=201,
        )

    async def lookup_posts(self, request: Request) -> Response:
        platform, account = request.path_params["platform"], request.path_params["account"]
        self.state.requests[Op.LOOKUP.value] += 1
        if not _has_bearer(request):
            return _error(401, "auth_required", "missing bearer token")
        fault = self.state.take_fault(platform, account, Op.LOOKUP)
        if fault is not None:
            return await self._fire(request, fault, platform, account, None)
        if not self.state.is_logged_in(platform, account):
            return _session_expired()
        posts = self.state.find(
            platform,
            account,
            client_key=request.query_params.get("client_key"),
            fingerprint=request.query_params.get("fingerprint"),
        )
        return JSONResponse({"posts": [post.public_json() for post in posts]})

    async def me(self, request: Request) -> Response:
        platform, account = request.path_params["platform"], request.path_params["account"]
        self.state.requests[Op.ME.value] += 1
        if not _has_bearer(request):
            return _error(401, "auth_required", "missing bearer token")
        fault = self.state.take_fault(platform, account, Op.ME)
        if fault is not None:
            return await self._fire(request, fault, platform, account, None)
        if not self.state.is_logged_in(platform, account):
            return _session_expired()
        return JSONResponse({"account": account, "logged_in": True})

    async def post_page(self, request: Request) -> Response:
        platform, account = request.path_params["platform"], request.path_params["account"]
        post = self.state.get(platform, account, request.path_params["post_id"])
        if post is None:
            return HTMLResponse("<!doctype html><title>Not found</title><p>No such post.</p>", 404)
        text = html.escape(post.text).replace("\n", "<br>")
        who = html.escape(f"{platform}/{account}")
        return HTMLResponse(
            f"<!doctype html><meta charset=utf-8><title>{who} {html.escape(post.id)}</title>"
            f'<article id="{html.escape(post.id)}"><header>{who}</header><p>{text}</p>'
            f"<footer><time>{rfc3339(post.created_at)}</time></footer></article>"
        )

    async def _fire(
        self, request: Request, fault: FaultSpec, platform: str, account: str, draft: Draft | None
    ) -> Response:
        existing_id = None
        if fault.kind is FaultKind.DUPLICATE and draft is not None:
            existing = self.state.latest_like(platform, account, draft)
            existing_id = existing.id if existing is not None else None
        if fault.kind is FaultKind.HANG:
            await hang(self.state, request, fault.hang_seconds)
        return _send(fault_reply(fault, now=self.state.clock(), existing_id=existing_id))

    # Admin API ------------------------------------------------------------------------------

    async def add_fault(self, request: Request) -> Response:
        try:
            spec = parse_fault_spec(await request.json())
        except ValueError:
            return _error(400, "invalid_fault", "body is not valid JSON")
        except FaultSpecError as exc:
            return _error(400, "invalid_fault", str(exc))
        fault = self.state.faults.add(spec)
        return JSONResponse({"id": fault.id}, status_code=201)

    async def list_faults(self, request: Request) -> Response:
        return JSONResponse({"faults": [fault.to_json() for fault in self.state.faults.pending()]})

    async def clear_faults(self, request: Request) -> Response:
        return JSONResponse({"cleared": self.state.faults.clear()})

    async def login(self, request: Request) -> Response:
        return self._set_login(request, logged_in=True)

    async def logout(self, request: Request) -> Response:
        return self._set_login(request, logged_in=False)

    def _set_login(self, request: Request, *, logged_in: bool) -> Response:
        platform, account = request.path_params["platform"], request.path_params["account"]
        self.state.set_logged_in(platform, account, logged_in)
        return JSONResponse({"platform": platform, "account": account, "logged_in": logged_in})

    async def admin_posts(self, request: Request) -> Response:
        platform = request.query_params.get("platform")
        account = request.query_params.get("account")
        posts = [
            post.admin_json()
            for post in self.state.posts
            if (platform is None or post.platform == platform)
            and (account is None or post.account == account)
        ]
        return JSONResponse({"posts": posts, "count": len(posts)})

    async def duplicates(self, request: Request) -> Response:
        return JSONResponse({"duplicates": self.state.duplicates()})

    async def stats(self, request: Request) -> Response:
        return JSONResponse(
            {
                "requests": dict(self.state.requests),
                "faults_fired": dict(self.state.faults_fired),
                "posts": len(self.state.posts),
                "hanging": self.state.hanging,
            }
        )

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        return JSONResponse({"reset": True})

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")


def create_app(*, clock: Clock = time.time, admin_token: str = "") -> Starlette:
    """A fresh sandbox with empty state; `clock` gives Unix seconds (created_at, rate limits);
    with `admin_token`, the admin API needs it as a bearer token (admin_auth.py)."""
    state = SandboxState(clock=clock)
    api = _Api(state)
    account_path = "/api/{platform}/accounts/{account}"
    admin_account = "/admin/accounts/{platform}/{account}"
    app = Starlette(
        routes=[
            Route(f"{account_path}/posts", api.create_post, methods=["POST"]),
            Route(f"{account_path}/posts", api.lookup_posts, methods=["GET"]),
            Route(f"{account_path}/me", api.me, methods=["GET"]),
            Route("/p/{platform}/{account}/{post_id}", api.post_page, methods=["GET"]),
            Route("/admin/faults", api.add_fault, methods=["POST"]),
            Route("/admin/faults", api.list_faults, methods=["GET"]),
            Route("/admin/faults", api.clear_faults, methods=["DELETE"]),
            Route(f"{admin_account}/login", api.login, methods=["POST"]),
            Route(f"{admin_account}/logout", api.logout, methods=["POST"]),
            Route("/admin/posts", api.admin_posts, methods=["GET"]),
            Route("/admin/duplicates", api.duplicates, methods=["GET"]),
            Route("/admin/stats", api.stats, methods=["GET"]),
            Route("/admin/reset", api.reset, methods=["POST"]),
            Route("/healthz", api.healthz, methods=["GET"]),
            *standin_mounts(clock=clock),
            *composer_mounts(state),
        ],
        middleware=[Middleware(AdminToken, token=admin_token)] if admin_token else None,
    )
    app.state.sandbox = state
    return app


def sandbox_state(app: Starlette) -> SandboxState:
    """The state behind an app made by `create_app` (the server uses it to release hangs)."""
    state = app.state.sandbox
    assert isinstance(state, SandboxState)
    return state
