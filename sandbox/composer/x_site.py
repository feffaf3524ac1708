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
    ComposerSite,
    Raw,
    Renamable,
    Shape,
    Visit,
    error_message,
    render,
    root,
)
from sandbox.faults import Reply

SHAPE = Shape(
    platform="x",
    title="X",
    templates="x",
    cookie="auth_token",
    login_path="/i/flow/login",
    next_param="redirect_after_login",
    username_field="text",
    username_prefix="@",
    login_error="Enter your username and password.",
    home_path="/home",
    challenge_path="/account/login_challenge",
    challenge_title="Verify your identity / X",
    challenge_heading="Verify your identity",
    challenge_error="That code was incorrect. Try again.",
    compose_path="/compose/post",
    renamable=Renamable("button_testid", "tweetButton", "tweetButtonInline"),
    submit_path="/i/api/graphql/CreateTweet",
    text_field="text",
    media_field="media",
    permalink="/{account}/status/{id}",
    profile_path="/{account}",
    max_chars=280,
    needs_media=False,
)
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


class XSite(ComposerSite):
    def created(self, post: Post) -> dict[str, object]:
        result = {
            "rest_id": post.id,
            "legacy": {"full_text": post.text, "created_at": rfc3339(post.created_at)},
            "core": {"user_results": {"result": {"legacy": {"screen_name": post.account}}}},
        }
        return {"data": {"create_tweet": {"tweet_results": {"result": result}}}}

    def error(self, reply: Reply) -> Response:
        name = reply.body.get("error")
        code = _CODES.get(name, 131) if isinstance(name, str) else 131
        status = 403 if name == "duplicate" else reply.status
        body: dict[str, Any] = {"errors": [{"code": code, "message": error_message(reply)}]}
        return JSONResponse(body, status_code=status, headers=reply.headers)

    def item(self, base: str, post: Post) -> str:
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

    def permalink_route(self) -> Route:
        return Route("/{account}/status/{post_id}", self.status, methods=["GET"])

    async def status(self, request: Request) -> Response:
        visit = await self.site.open_page(request)
        if not isinstance(visit, Visit):
            return visit
        post = self.site.post_by_id(request.path_params["post_id"])
        if post is None or post.account != request.path_params["account"]:
            return render("x_status.html", 404, root=root(request), account="", item="")
        article = Raw(self.item(root(request), post))
        return render("x_status.html", root=root(request), account=post.account, item=article)


def x_app(state: SandboxState) -> Starlette:
    return XSite(state, SHAPE).app()
