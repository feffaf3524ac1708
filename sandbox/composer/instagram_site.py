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
    platform="instagram",
    title="Instagram",
    cookie="sessionid",
    login_path="/accounts/login/",
    next_param="next",
    home_path="/",
    challenge_path="/challenge/",
    max_chars=2200,
    needs_media=True,
)
CAPTION_LABEL = "Write a caption..."
RENAMED_CAPTION_LABEL = "Write a caption\u2026"


class InstagramSite:
    def __init__(self, state: SandboxState) -> None:
        self.site = Site(state, SHAPE)

    async def login_page(self, request: Request) -> Response:
        next_path = self.site.safe_next(request.query_params.get(SHAPE.next_param, ""))
        return render("ig_login.html", root=root(request), next=next_path, error="")

    async def login(self, request: Request) -> Response:
        form = await request.form()
        username = str(form.get("username", "")).strip()
        password = str(form.get("password", ""))
        next_path = self.site.safe_next(str(form.get(SHAPE.next_param, ""))) or SHAPE.home_path
        if not USERNAME.fullmatch(username) or not password:
            error = "Sorry, your password was incorrect. Please double-check your password."
            return render("ig_login.html", 400, root=root(request), next=next_path, error=error)
        return self.site.log_in(request, username, next_path)

    async def challenge(self, request: Request) -> Response:
        error = "Please check the security code and try again." if request.method == "POST" else ""
        return render(
            "challenge.html",
            root=root(request),
            title="Enter security code • Instagram",
            heading="Enter the 6-digit code we sent",
            error=error,
        )

    async def home(self, request: Request) -> Response:
        visit = await self.site.open_page(request)
        if not isinstance(visit, Visit):
            return visit
        return render("ig_home.html", root=root(request), account=visit.account)

    async def create(self, request: Request) -> Response:
        visit = await self.site.open_page(request, composer=True)
        if not isinstance(visit, Visit):
            return visit
        label = RENAMED_CAPTION_LABEL if visit.renamed else CAPTION_LABEL
        return render(
            "ig_create.html", root=root(request), account=visit.account, caption_label=label
        )

    async def configure(self, request: Request) -> Response:
        submitted = await self.site.submit(
            request, text_field="caption", media_field="photo", permalink="/p/{id}/"
        )
        if submitted.error is not None:
            return _error(submitted.error)
        assert submitted.post is not None
        post = submitted.post
        media = {
            "pk": post.id,
            "id": post.id,
            "code": post.id,
            "caption": {"text": post.text},
            "user": {"username": post.account},
            "taken_at": int(post.created_at),
        }
        return JSONResponse({"media": media, "status": "ok"})

    async def profile(self, request: Request) -> Response:
        account = request.path_params["account"]
        if not USERNAME.fullmatch(account):
            return Response("Not found", 404)
        visit = await self.site.open_page(request)
        if not isinstance(visit, Visit):
            return visit
        posts = self.site.posts_of(account)
        items = "\n".join(self._tile(request, post) for post in posts)
        return render(
            "ig_profile.html",
            root=root(request),
            account=account,
            count=str(len(posts)),
            items=Raw(items),
        )

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

    async def media(self, request: Request) -> Response:
        return self.site.media_response(request.path_params["post_id"])

    def _tile(self, request: Request, post: Post) -> str:
        base, pid = root(request), escape(post.id)
        image = (
            f'<img src="{base}/media/{pid}" alt="Photo by {escape(post.account)}">'
            if self.site.has_media(post.id)
            else ""
        )
        return (
            f'<div class="tile" role="listitem"><a href="{base}/p/{pid}/">{image}'
            f'<span class="caption">{escape(post.text)}</span></a></div>'
        )


def _error(reply: Reply) -> Response:
    name = reply.body.get("error")
    body = {
        "message": error_message(reply),
        "status": "fail",
        "error_type": name if isinstance(name, str) else "unknown",
    }
    return JSONResponse(body, status_code=reply.status, headers=reply.headers)


def instagram_app(state: SandboxState) -> Starlette:
    ig = InstagramSite(state)
    return Starlette(
        routes=[
            static_mount(),
            Route(SHAPE.login_path, ig.login_page, methods=["GET"]),
            Route(SHAPE.login_path, ig.login, methods=["POST"]),
            Route(SHAPE.challenge_path, ig.challenge, methods=["GET", "POST"]),
            Route("/", ig.home, methods=["GET"]),
            Route("/create/", ig.create, methods=["GET"]),
            Route("/api/v1/media/configure/", ig.configure, methods=["POST"]),
            Route("/media/{post_id}", ig.media, methods=["GET"]),
            Route("/p/{code}/", ig.post_page, methods=["GET"]),
            Route("/{account}/", ig.profile, methods=["GET"]),
        ]
    )
