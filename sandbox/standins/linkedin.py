"""A LinkedIn stand-in: the versioned Posts and Images APIs and the OAuth token endpoint, with
LinkedIn's headers, bodies and error shapes, fault injection, and a record of every post.

Served by `postroom sandbox` under `/linkedin` (an account's base_url is `{sandbox}/linkedin`,
its `oauth_url` `{sandbox}/linkedin/oauth/v2/accessToken`), or alone: `create_app(clock=...)`.

    POST /rest/posts                            create -> 201, `x-restli-id: urn:li:share:…`
    GET  /rest/posts?q=author&author=URN&…      the author's posts, newest first
    GET  /rest/posts/{urn}                      one post
    POST /rest/images?action=initializeUpload   -> {value: {uploadUrl, image, uploadUrlExpiresAt}}
    PUT  /dms-uploads/{id}/uploaded-image/0     the upload URL: the image bytes
    GET  /rest/images/{urn}                     {id, owner, status: PROCESSING -> AVAILABLE}
    POST /oauth/v2/accessToken                  grant_type=refresh_token

Every /rest call needs `LinkedIn-Version` (missing: 400 VERSION_MISSING; older than
`OLDEST_ACTIVE_VERSION`: 426 NONEXISTENT_VERSION, as LinkedIn answers a sunset version) and
`X-Restli-Protocol-Version: 2.0.0`. Without the latter LinkedIn falls back to protocol 1.0 and
fails in ways that differ by endpoint; the stand-in refuses it outright (400) so a client that
forgets it is caught. A token is accepted only once registered (admin below); an author only when
it is the token's member or one of its organizations (else 403 ACCESS_DENIED). The same
commentary from the same author within `DUPLICATE_WINDOW_S` is refused with LinkedIn's 422 naming
the existing post. An unescaped reserved character of the little text format cuts the recorded
text there, as LinkedIn does (`truncated` in the admin record).

Admin (not LinkedIn's):
    POST   /_standin/tokens   {member, access_token, organizations?, refresh_token?, client_id?,
                               client_secret?}            register a member and its tokens
    GET    /_standin/tokens?member=URN                    access tokens issued by refreshes
    POST   /_standin/faults   {kind, op?, member?, count?, status?, retry_after_seconds?,
                               hang_seconds?, message?}   see linkedin_model.Kind / Op
    GET    /_standin/faults · DELETE /_standin/faults
    GET    /_standin/posts?author=URN                     every accepted post, with its text
    GET    /_standin/stats                                requests per op and per member
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.standins.linkedin_admin import Admin
from sandbox.standins.linkedin_model import (
    ACCESS_TOKEN_TTL_S,
    MAX_COMMENTARY_CHARS,
    OLDEST_ACTIVE_VERSION,
    PROTOCOL_VERSION,
    REFRESH_TOKEN_TTL_S,
    VERSION_RE,
    Clock,
    Image,
    Kind,
    LinkedInState,
    Member,
    Op,
    Post,
    Reply,
    access_denied,
    duplicate,
    error,
    fault_reply,
    oauth_error,
    render,
    unprocessable,
)

_VISIBILITY = frozenset({"PUBLIC", "CONNECTIONS", "LOGGED_IN", "CONTAINER"})
_FEEDS = frozenset({"MAIN_FEED", "NONE", "CONTAINER_ONLY"})
_POST_FIELDS = frozenset(
    {
        "author",
        "commentary",
        "visibility",
        "distribution",
        "lifecycleState",
        "isReshareDisabledByAuthor",
        "content",
        "contentLandingPage",
        "contentCallToActionLabel",
        "reshareContext",
        "adContext",
        "container",
    }
)


_Handler = Callable[[Request], Awaitable[Response]]


def _send(reply: Reply) -> Response:
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


def _own_base(request: Request) -> str:
    """This app's URL prefix (with the mount path when mounted under `postroom sandbox`)."""
    root = str(request.scope.get("root_path", ""))
    app_root = str(request.scope.get("app_root_path", ""))
    return str(request.base_url).rstrip("/") + root.removeprefix(app_root)


class _Api:
    def __init__(self, state: LinkedInState) -> None:
        self.state = state

    # ---- the checks every call goes through -----------------------------------------------

    def _caller(self, request: Request, op: Op, *, versioned: bool = True) -> Member | Reply:
        if versioned:
            version = request.headers.get("linkedin-version")
            if not version:
                return error(
                    400,
                    "VERSION_MISSING",
                    "A version must be present. Please specify a version by adding the "
                    "LinkedIn-Version header.",
                )
            if not VERSION_RE.match(version) or version[:6] < OLDEST_ACTIVE_VERSION:
                return error(
                    426, "NONEXISTENT_VERSION", f"Requested version {version} is not active"
                )
            if request.headers.get("x-restli-protocol-version") != PROTOCOL_VERSION:
                return error(
                    400,
                    "INVALID_PROTOCOL_VERSION",
                    f"X-Restli-Protocol-Version: {PROTOCOL_VERSION} is required",
                )
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error(401, "EMPTY_ACCESS_TOKEN", "Empty oauth2_access_token", 401)
        member = self.state.member_for(token.strip())
        if isinstance(member, Reply):
            return member
        self.state.count(member.urn, op)
        return member

    def _fault(self, request: Request, member: str, op: Op) -> Response | None:
        """The injected answer, if a fault fires (accept_then_hang is create's own business)."""
        fault = self.state.take_fault(member, op)
        if fault is None:
            return None
        if fault.kind is Kind.ACCEPT_THEN_HANG:
            request.state.hang = fault
            return None
        if fault.kind is Kind.AUTH:  # the token has expired, for good
            self.state.expired.add(request.headers["authorization"].partition(" ")[2].strip())
        return _send(fault_reply(fault, op))

    # ---- posts ----------------------------------------------------------------------------

    async def create_post(self, request: Request) -> Response:
        member = self._caller(request, Op.CREATE)
        if isinstance(member, Reply):
            return _send(member)
        if (answer := self._fault(request, member.urn, Op.CREATE)) is not None:
            return answer
        try:
            body = await request.json()
        except ValueError:
            return _send(error(400, "INVALID_ARGUMENT", "Request body is not valid JSON"))
        checked = self._check_post(member, body)
        if isinstance(checked, Reply):
            return _send(checked)
        text, truncated = checked
        existing = self.state.recent_duplicate(body["author"], body["commentary"])
        if existing is not None:
            return _send(duplicate(existing.urn))
        post = Post(
            urn=f"urn:li:share:{self.state.next_id()}",
            author=body["author"],
            member=member.urn,
            body=body,
            text=text,
            truncated=truncated,
            created_ms=int(self.state.clock() * 1000),
        )
        self.state.posts.append(post)
        hang = getattr(request.state, "hang", None)
        if hang is not None:  # the post exists; the client never hears so
            await self._hang(request, hang.hang_seconds)
            return _send(fault_reply(hang, Op.CREATE))
        return Response(status_code=201, headers={"x-restli-id": post.urn})

    def _check_post(self, member: Member, body: object) -> tuple[str, bool] | Reply:
        if not isinstance(body, dict):
            return unprocessable("", "expected a record")
        if unknown := sorted(set(body) - _POST_FIELDS):
            return unprocessable(f"/{unknown[0]}", "unrecognized field found but not allowed")
        for name in ("author", "commentary", "visibility", "distribution", "lifecycleState"):
            if name not in body:
                return unprocessable(f"/{name}", "field is required but not found")
        author, commentary = body["author"], body["commentary"]
        if not isinstance(author, str) or not isinstance(commentary, str):
            return unprocessable("/author", "author and commentary are strings")
        if not member.may_act_as(author):
            return access_denied(f"partnerApiPostsExternal.CREATE as {author}")
        if body["visibility"] not in _VISIBILITY:
            return unprocessable("/visibility", f'"{body["visibility"]}" is not an enum symbol')
        distribution = body["distribution"]
        if not isinstance(distribution, dict) or distribution.get("feedDistribution") not in _FEEDS:
            return unprocessable("/distribution/feedDistribution", "missing or not an enum symbol")
        if body["lifecycleState"] not in ("PUBLISHED", "DRAFT"):
            return unprocessable("/lifecycleState", "must be PUBLISHED or DRAFT")
        if not isinstance(body.get("isReshareDisabledByAuthor", False), bool):
            return unprocessable("/isReshareDisabledByAuthor", "expected a boolean")
        text, truncated = render(commentary)
        if len(text) > MAX_COMMENTARY_CHARS:
            return unprocessable("/commentary", f"length exceeds {MAX_COMMENTARY_CHARS}")
        if "content" in body and (problem := self._check_content(author, body["content"])):
            return problem
        return text, truncated

    def _check_content(self, author: str, content: object) -> Reply | None:
        if isinstance(content, dict) and isinstance(content.get("media"), dict):
            ids = [content["media"].get("id")]
        elif isinstance(content, dict) and isinstance(content.get("multiImage"), dict):
            images = content["multiImage"].get("images")
            if not isinstance(images, list) or not 2 <= len(images) <= 20:
                return unprocessable("/content/multiImage/images", "2 to 20 images")
            ids = [i.get("id") if isinstance(i, dict) else None for i in images]
        else:
            return unprocessable("/content", "expected media or multiImage")
        for urn in ids:
            image = self.state.images.get(urn) if isinstance(urn, str) else None
            if image is None or image.owner != author:
                return unprocessable("/content", f"image {urn} does not exist for {author}")
            if image.status != "AVAILABLE":
                return unprocessable("/content", f"image {urn} is {image.status}, not AVAILABLE")
        return None

    async def find_posts(self, request: Request) -> Response:
        member = self._caller(request, Op.READ)
        if isinstance(member, Reply):
            return _send(member)
        if (answer := self._fault(request, member.urn, Op.READ)) is not None:
            return answer
        params = request.query_params
        if params.get("q") != "author" or not params.get("author"):
            return _send(error(400, "INVALID_ARGUMENT", "finder q=author needs author"))
        author = params["author"]
        if not member.may_act_as(author):
            return _send(access_denied(f"partnerApiPostsExternal.FINDER-author as {author}"))
        try:
            start, count = int(params.get("start", 0)), int(params.get("count", 10))
        except ValueError:
            return _send(error(400, "INVALID_ARGUMENT", "start and count are integers"))
        if params.get("sortBy", "LAST_MODIFIED") not in ("LAST_MODIFIED", "CREATED"):
            return _send(error(400, "INVALID_ARGUMENT", "sortBy: LAST_MODIFIED or CREATED"))
        mine = [p for p in reversed(self.state.posts) if p.author == author]
        page = mine[start : start + max(0, min(count, 100))]
        return JSONResponse(
            {
                "paging": {"start": start, "count": count, "links": [], "total": len(mine)},
                "elements": [post.public_json() for post in page],
            }
        )

    async def get_post(self, request: Request) -> Response:
        member = self._caller(request, Op.READ)
        if isinstance(member, Reply):
            return _send(member)
        if (answer := self._fault(request, member.urn, Op.READ)) is not None:
            return answer
        urn = request.path_params["urn"]
        post = next((p for p in self.state.posts if p.urn == urn), None)
        if post is None:
            return _send(error(404, "NOT_FOUND", f"Post {urn} not found"))
        if not member.may_act_as(post.author):
            return _send(access_denied(f"partnerApiPostsExternal.GET {urn}"))
        return JSONResponse(post.public_json())

    # ---- images ---------------------------------------------------------------------------

    async def images_action(self, request: Request) -> Response:
        member = self._caller(request, Op.IMAGES)
        if isinstance(member, Reply):
            return _send(member)
        if (answer := self._fault(request, member.urn, Op.IMAGES)) is not None:
            return answer
        if request.query_params.get("action") != "initializeUpload":
            return _send(error(400, "INVALID_ARGUMENT", "unknown action"))
        try:
            body = await request.json()
            owner = body["initializeUploadRequest"]["owner"]
        except (ValueError, KeyError, TypeError):
            return _send(unprocessable("/initializeUploadRequest/owner", "field is required"))
        if not isinstance(owner, str) or not member.may_act_as(owner):
            return _send(access_denied(f"images.ACTION-initializeUpload as {owner}"))
        image_id = f"D4E10AQ{self.state.next_id()}"
        urn = f"urn:li:image:{image_id}"
        self.state.images[urn] = Image(urn=urn, owner=owner, member=member.urn)
        now_ms = int(self.state.clock() * 1000)
        upload_url = (
            f"{_own_base(request)}/dms-uploads/{image_id}/uploaded-image/0"
            f"?ca=vector_feedshare&cn=uploads&m={secrets.token_urlsafe(12)}&app=standin&sync=0"
        )
        return JSONResponse(
            {
                "value": {
                    "uploadUrlExpiresAt": now_ms + 24 * 3600 * 1000,
                    "uploadUrl": upload_url,
                    "image": urn,
                }
            }
        )

    async def upload(self, request: Request) -> Response:
        member = self._caller(request, Op.IMAGES, versioned=False)
        if isinstance(member, Reply):
            return _send(member)
        if (answer := self._fault(request, member.urn, Op.IMAGES)) is not None:
            return answer
        image = self.state.images.get(f"urn:li:image:{request.path_params['image_id']}")
        if image is None or image.member != member.urn:
            return _send(error(404, "NOT_FOUND", "Upload not found"))
        data = await request.body()
        if not data:
            return _send(error(400, "INVALID_ARGUMENT", "Empty upload"))
        image.size = len(data)
        image.status = "PROCESSING" if image.polls_left > 0 else "AVAILABLE"
        return Response(status_code=201)

    async def get_image(self, request: Request) -> Response:
        member = self._caller(request, Op.IMAGES)
        if isinstance(member, Reply):
            return _send(member)
        if (answer := self._fault(request, member.urn, Op.IMAGES)) is not None:
            return answer
        image = self.state.images.get(request.path_params["urn"])
        if image is None:
            return _send(error(404, "NOT_FOUND", "Image not found"))
        if not member.may_act_as(image.owner):
            return _send(access_denied(f"images.GET {image.urn}"))
        answer_json: dict[str, Any] = {"id": image.urn, "owner": image.owner}
        answer_json["status"] = image.status
        if image.status == "PROCESSING":
            image.polls_left -= 1
            if image.polls_left <= 0:
                image.status = "AVAILABLE"
        if answer_json["status"] == "AVAILABLE":
            answer_json["downloadUrl"] = f"{_own_base(request)}/media/{quote(image.urn)}"
        return JSONResponse(answer_json)

    # ---- OAuth ----------------------------------------------------------------------------

    async def access_token(self, request: Request) -> Response:
        form = await request.form()
        refresh = str(form.get("refresh_token", ""))
        member, client = self.state.refresh_tokens.get(refresh, ("", ""))
        self.state.count(member or "?", Op.TOKEN)
        fault = self.state.take_fault(member or "?", Op.TOKEN)
        if fault is not None:
            return _send(fault_reply(fault, Op.TOKEN))
        if form.get("grant_type") != "refresh_token":
            return _send(oauth_error(400, "unsupported_grant_type", "grant_type not supported"))
        client_id, client_secret = str(form.get("client_id", "")), form.get("client_secret")
        if self.state.clients.get(client_id) != client_secret or not client_id:
            return _send(oauth_error(401, "invalid_client", "Client authentication failed"))
        if not member or client != client_id:
            return _send(
                oauth_error(
                    400,
                    "invalid_request",
                    "The provided authorization grant or refresh token is invalid, expired or "
                    "revoked",
                )
            )
        token = f"AQV{secrets.token_urlsafe(24)}"
        self.state.access_tokens[token] = member
        self.state.issued.setdefault(member, []).append(token)
        return JSONResponse(
            {
                "access_token": token,
                "expires_in": ACCESS_TOKEN_TTL_S,
                "refresh_token": refresh,
                "refresh_token_expires_in": REFRESH_TOKEN_TTL_S,
            }
        )

    async def _hang(self, request: Request, seconds: float) -> None:
        # Until the client gives up (or is killed), or `seconds` pass.
        self.state.hanging += 1
        try:
            with anyio.move_on_after(seconds):
                while (await request.receive())["type"] != "http.disconnect":
                    pass
        finally:
            self.state.hanging -= 1


def create_app(*, clock: Clock = time.time) -> Starlette:
    """A fresh LinkedIn stand-in; `clock` gives Unix seconds."""
    state = LinkedInState(clock=clock)
    api, admin = _Api(state), Admin(state)
    routes: list[tuple[str, _Handler, str]] = [
        ("/rest/posts", api.create_post, "POST"),
        ("/rest/posts", api.find_posts, "GET"),
        ("/rest/posts/{urn}", api.get_post, "GET"),
        ("/rest/images", api.images_action, "POST"),
        ("/rest/images/{urn}", api.get_image, "GET"),
        ("/dms-uploads/{image_id}/uploaded-image/0", api.upload, "PUT"),
        ("/oauth/v2/accessToken", api.access_token, "POST"),
        ("/_standin/tokens", admin.add_tokens, "POST"),
        ("/_standin/tokens", admin.list_tokens, "GET"),
        ("/_standin/faults", admin.add_fault, "POST"),
        ("/_standin/faults", admin.list_faults, "GET"),
        ("/_standin/faults", admin.clear_faults, "DELETE"),
        ("/_standin/posts", admin.admin_posts, "GET"),
        ("/_standin/stats", admin.stats, "GET"),
    ]
    app = Starlette(routes=[Route(path, fn, methods=[m]) for path, fn, m in routes])
    app.state.linkedin = state
    return app


def linkedin_state(app: Starlette) -> LinkedInState:
    state = app.state.linkedin
    assert isinstance(state, LinkedInState)
    return state
