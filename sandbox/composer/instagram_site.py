"""The Instagram-like composer site, mounted at /web/instagram: a photo is required; Share opens
a "Share this post?" dialog whose Share sends the post (`POST /api/v1/media/configure/`, answered
with Instagram's `{"media": {..., "code"}, "status": "ok"}` or `{"message", "status": "fail"}`);
the profile is a grid of permalinks /p/<code>/ with the captions.

The renamed_selector fault renders the caption box's aria-label as "Write a caption…" (one
ellipsis character) instead of "Write a caption..." (three dots).
"""

from __future__ import annotations

from html import escape

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
    platform="instagram",
    title="Instagram",
    templates="ig",
    cookie="sessionid",
    login_path="/accounts/login/",
    next_param="next",
    username_field="username",
    login_error="Sorry, your password was incorrect. Please double-check your password.",
    home_path="/",
    challenge_path="/challenge/",
    challenge_title="Enter security code • Instagram",
    challenge_heading="Enter the 6-digit code we sent",
    challenge_error="Please check the security code and try again.",
    compose_path="/create/",
    renamable=Renamable("caption_label", "Write a caption...", "Write a caption\u2026"),
    submit_path="/api/v1/media/configure/",
    text_field="caption",
    media_field="photo",
    permalink="/p/{id}/",
    profile_path="/{account}/",
    max_chars=2200,
    needs_media=True,
)


class InstagramSite(ComposerSite):
    def created(self, post: Post) -> dict[str, object]:
        media = {
            "pk": post.id,
            "id": post.id,
            "code": post.id,
            "caption": {"text": post.text},
            "user": {"username": post.account},
            "taken_at": int(post.created_at),
        }
        return {"media": media, "status": "ok"}

    def error(self, reply: Reply) -> Response:
        name = reply.body.get("error")
        body = {
            "message": error_message(reply),
            "status": "fail",
            "error_type": name if isinstance(name, str) else "unknown",
        }
        return JSONResponse(body, status_code=reply.status, headers=reply.headers)

    def item(self, base: str, post: Post) -> str:
        pid = escape(post.id)
        image = (
            f'<img src="{base}/media/{pid}" alt="Photo by {escape(post.account)}">'
            if self.site.has_media(post.id)
            else ""
        )
        return (
            f'<div class="tile" role="listitem"><a href="{base}/p/{pid}/">{image}'
            f'<span class="caption">{escape(post.text)}</span></a></div>'
        )

    def permalink_route(self) -> Route:
        return Route("/p/{code}/", self.post_page, methods=["GET"])

    async def post_page(self, request: Request) -> Response:
        visit = await self.site.open_page(request)
        if not isinstance(visit, Visit):
            return visit
        post = self.site.post_by_id(request.path_params["code"])
        if post is None:
            return render(
                "ig_post.html", 404, root=root(request), item="Sorry, this page isn't available."
            )
        base, pid = root(request), escape(post.id)
        item = (
            f'<article id="{pid}"><header class="who">{escape(post.account)}</header>'
            f'<img src="{base}/media/{pid}" alt="Photo by {escape(post.account)}">'
            f'<p data-testid="caption">{escape(post.text)}</p>'
            f'<time datetime="{rfc3339(post.created_at)}">{rfc3339(post.created_at)}</time>'
            "</article>"
        )
        return render("ig_post.html", root=base, item=Raw(item))


def instagram_app(state: SandboxState) -> Starlette:
    return InstagramSite(state, SHAPE).app()
