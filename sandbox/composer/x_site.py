"""The X-like composer site, mounted at /web/x: X's paths and data-testid names where a playbook
looks (tweetTextarea_0, fileInput, tweetButton, toast, tweet/tweetText/User-Name on a profile,
permalinks /<account>/status/<id>), X's GraphQL-shaped CreateTweet answer and `errors` array.

The renamed_selector fault renders the Post button as `tweetButtonInline` (X's name for the
button of its inline composer) instead of `tweetButton`.
"""

from __future__ import annotations

from html import escape
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.app import Post, SandboxState, rfc3339
from sandbox.composer.web import (
    USERNAME,
    Raw,
    Shape,
    Site,
    Visit,
    error_message,
    render,
    root,
    static_mount,
)
from sandbox.faults import Reply

SHAPE = Shape(
    platform="x",
    title="X",
    cookie="auth_token",
    login_path="/i/flow/login",
    next_param="redirect_after_login",
    home_path="/home",
    challenge_path="/account/login_challenge",
    max_chars=280,
    needs_media=False,
)
BUTTON = "tweetButton"
RENAMED_BUTTON = "tweetButtonInline"
# X's error codes for the sandbox's error names (X answers a duplicate with 403, code 187).
_CODES = {
    "auth_required": 32,
    "rate_limited": 88,
    "invalid_content": 186,
    "duplicate": 187,
    "server_error": 131,
    "upstream_error": 130,
    "timeout": 130,
}


class XSite:
    def __init__(self, state: SandboxState) -> None:
        self.site = Site(state, SHAPE)

    async def login_page(self, request: Request) -> Response:
        next_path = self.site.safe_next(request.query_params.get(SHAPE.next_param, ""))
        return render("x_login.html", root=root(request), next=next_path, error="")

    async def login(self, request: Request) -> Response:
        form = await request.form()
        username = str(form.get("text", "")).strip().removeprefix("@")
        password = str(form.get("password", ""))
        next_path = self.site.safe_next(str(form.get(SHAPE.next_param, ""))) or SHAPE.home_path
        if not USERNAME.fullmatch(username) or not password:
            error = "Enter your username and password."
            return render("x_login.html", 400, root=root(request), next=next_path, error=error)
        return self.site.log_in(request, username, next_path)

    async def challenge(self, request: Request) -> Response:
        error = "That code was incorrect. Try again." if request.method == "POST" else ""
        return render(
            "challenge.html",
            root=root(request),
            title="Verify your identity / X",
            heading="Verify your identity",
            error=error,
        )

    async def home(self, request: Request) -> Response:
        visit = await self.site.open_page(request)
        if not isinstance(visit, Visit):
            return visit
        return render("x_home.html", root=root(request), account=visit.account)

    async def compose(self, request: Request) -> Response:
        visit = await self.site.open_page(request, composer=True)
        if not isinstance(visit, Visit):
            return visit
        button = RENAMED_BUTTON if visit.renamed else BUTTON
        return render(
            "x_compose.html", root=root(request), account=visit.account, button_testid=button
        )

    async def create_tweet(self, request: Request) -> Response:
        submitted = await self.site.submit(
            request, text_field="text", media_field="media", permalink="/{account}/status/{id}"
        )
        if submitted.error is not None:
            return _error(submitted.error)
        assert submitted.post is not None
        post = submitted.post
        result = {
            "rest_id": post.id,
            "legacy": {"full_text": post.text, "created_at": rfc3339(post.created_at)},
            "core": {"user_results": {"result": {"legacy": {"screen_name": post.account}}}},
        }
        return JSONResponse({"data": {"create_tweet": {"tweet_results": {"result": result}}}})

    async def profile(self, request: Request) -> Response:
        account = request.path_params["account"]
        if not USERNAME.fullmatch(account):
            return Response("Not found", 404)
        visit = await self.site.open_page(request)
        if not isinstance(visit, Visit):
            return visit
        posts = self.site.posts_of(account)
        items = "\n".join(self._article(request, post) for post in posts)
        return render(
            "x_profile.html",
            root=root(request),
            account=account,
            count=str(len(posts)),
            items=Raw(items),
        )

    async def status(self, request: Request) -> Response:
        visit = await self.site.open_page(request)
        if not isinstance(visit, Visit):
            return visit
        post = self.site.post_by_id(request.path_params["post_id"])
        if post is None or post.account != request.path_params["account"]:
            return render("x_status.html", 404, root=root(request), account="", item="")
        article = Raw(self._article(request, post))
        return render("x_status.html", root=root(request), account=post.account, item=article)

    async def media(self, request: Request) -> Response:
        return self.site.media_response(request.path_params["post_id"])

    def _article(self, request: Request, post: Post) -> str:
        base = root(request)
        who, pid = escape(post.account), escape(post.id)
        photo = (
            f'<img data-testid="tweetPhoto" src="{base}/media/{pid}" alt="Image">'
            if self.site.has_media(post.id)
            else ""
        )
        return (
            f'<article data-testid="tweet" id="{pid}">'
            f'<div data-testid="User-Name"><span class="who">@{who}</span>'
            f'<a href="{base}/{who}/status/{pid}"><time datetime="{rfc3339(post.created_at)}">'
            f"{rfc3339(post.created_at)}</time></a></div>"
            f'<p data-testid="tweetText" lang="en">{escape(post.text)}</p>{photo}</article>'
        )


def _error(reply: Reply) -> Response:
    name = reply.body.get("error")
    code = _CODES.get(name, 131) if isinstance(name, str) else 131
    status = 403 if name == "duplicate" else reply.status
    body: dict[str, Any] = {"errors": [{"code": code, "message": error_message(reply)}]}
    return JSONResponse(body, status_code=status, headers=reply.headers)


def x_app(state: SandboxState) -> Starlette:
    x = XSite(state)
    return Starlette(
        routes=[
            static_mount(),
            Route(SHAPE.login_path, x.login_page, methods=["GET"]),
            Route(SHAPE.login_path, x.login, methods=["POST"]),
            Route(SHAPE.challenge_path, x.challenge, methods=["GET", "POST"]),
            Route("/home", x.home, methods=["GET"]),
            Route("/compose/post", x.compose, methods=["GET"]),
            Route("/i/api/graphql/CreateTweet", x.create_tweet, methods=["POST"]),
            Route("/media/{post_id}", x.media, methods=["GET"]),
            Route("/{account}/status/{post_id}", x.status, methods=["GET"]),
            Route("/{account}", x.profile, methods=["GET"]),
        ]
    )
