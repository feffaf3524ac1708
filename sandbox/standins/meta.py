"""A stand-in for Meta's Graph API: Facebook Pages posts and photos, Instagram content publishing.

Mounted by `postroom sandbox` under `/meta`, so an account's base_url is `{sandbox}/meta` and the
adapters call `{base_url}/{version}/{node}/{edge}` exactly as on graph.facebook.com. It follows
the published contract (the facebook-business SDK drives it in tests/test_meta_contract.py):

    POST /{v}/{page-id}/feed                   -> {"id": "{page-id}_{n}"}; 506 on a repeat
    POST /{v}/{page-id}/photos                 multipart file or url -> {"id", "post_id"}
    GET  /{v}/{page-id}/feed | /photos?type=uploaded     fields, since, until, limit
    POST /{v}/{ig-user-id}/media               image_url (fetched, must be a JPEG), caption
    GET  /{v}/{container-id}?fields=status_code,status   IN_PROGRESS for the first N polls,
                                               then FINISHED; EXPIRED after a TTL; PUBLISHED
    POST /{v}/{ig-user-id}/media_publish       creation_id -> {"id": media-id}; 9007 if not
                                               ready; 9/2207042 past the quota
    GET  /{v}/{ig-user-id}/media | /content_publishing_limit | /{node-id}

Each endpoint takes exactly the facebook-business SDK's parameters (meta_params.py) and refuses
any other with code 100; every error is Meta's shape (meta_errors.py). Admin, not Graph:

    PUT  /_standin/pages/{id}      {"access_token", "name", "duplicate_window_s"}
    PUT  /_standin/ig_users/{id}   {"access_token", "username", "quota_total",
                                    "quota_duration", "polls_to_finish", "container_ttl_s",
                                    "publishes": [unix, ...]}   (the quota history)
    POST|GET|DELETE /_standin/faults           GET lists pending and fired (with `at`)
    GET  /_standin/posts?target=ID | /_standin/containers?target=ID
    PUT|GET /_standin/media/{name} an image Instagram can "fetch" (a user's public media folder)
    POST /_standin/reset
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.standins import meta_params
from sandbox.standins.meta_admin import AdminApi
from sandbox.standins.meta_errors import (
    GraphFail,
    graph_fail,
    no_such_object,
)
from sandbox.standins.meta_http import (
    GraphRequest,
    fetch,
    parse_bool,
    parse_time,
    read_request,
    sniff_image,
)
from sandbox.standins.meta_state import Clock, Image, MetaState

_VERSION = re.compile(r"^v\d+\.\d+$")
DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
SINCE_MAX_AGE_S = 24 * 3600.0  # content_publishing_limit: "no older than 24 hours"
PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/bmp", "image/tiff"})
# (method, endpoint) -> the fault op that hits it.
OPS = {
    ("POST", "page/feed"): "feed",
    ("POST", "page/photos"): "photos",
    ("POST", "ig_user/media"): "media",
    ("POST", "ig_user/media_publish"): "media_publish",
    ("GET", "container"): "container_status",
    ("GET", "ig_user/content_publishing_limit"): "publishing_limit",
    ("GET", "page"): "node",
    ("GET", "ig_user"): "node",
}
Handler = Callable[[str, GraphRequest], Awaitable[dict[str, Any]]]


def _send_fail(fail: GraphFail) -> Response:
    headers = dict(fail.headers)
    if fail.error.get("code") == 190:
        headers.setdefault(
            "WWW-Authenticate",
            f'OAuth "Facebook Platform" "invalid_token" "{fail.error["message"]}"',
        )
    return JSONResponse(fail.body(), status_code=fail.status, headers=headers)


class _Graph:
    def __init__(self, state: MetaState) -> None:
        self.state = state
        self.closing = asyncio.Event()
        self.handlers: dict[tuple[str, str], Handler] = {
            ("POST", "page/feed"): self.post_feed,
            ("POST", "page/photos"): self.post_photo,
            ("GET", "page/feed"): self.get_feed,
            ("GET", "page/photos"): self.get_photos,
            ("POST", "ig_user/media"): self.post_container,
            ("POST", "ig_user/media_publish"): self.post_publish,
            ("GET", "ig_user/media"): self.get_media,
            ("GET", "ig_user/content_publishing_limit"): self.get_limit,
        }

    async def serve(self, request: Request) -> Response:
        try:
            return JSONResponse(await self._serve(request))
        except GraphFail as fail:
            return _send_fail(fail)

    async def _serve(self, request: Request) -> dict[str, Any]:
        version, node_id = request.path_params["version"], request.path_params["node"]
        edge = request.path_params.get("edge")
        if not _VERSION.match(version):
            raise graph_fail(2500, f"Unknown path components: /{version}", type_="OAuthException")
        kind = self.state.kind_of(node_id)
        method = request.method
        if kind is None:
            raise no_such_object(node_id, method)
        endpoint = f"{kind}/{edge}" if edge else kind
        if (method, endpoint) not in meta_params.ENDPOINTS:
            raise no_such_object(node_id, method)
        graph = await read_request(request)
        owner = self.state.owner_of(node_id, kind)
        self.state.authorise(owner, graph.token)
        graph.check(meta_params.accepted(method, endpoint))
        op = OPS.get((method, endpoint), "read")
        fault = self.state.faults.take(op, owner, self.state.clock())
        buc_kind = "instagram" if owner in self.state.ig_users else "pages"
        if fault is not None and fault.kind == "error":
            if fault.code == 190:
                self.state.expire_token(owner)
            raise fault.failure(buc_kind=buc_kind)
        handler = self.handlers.get((method, endpoint))
        result = await (handler(node_id, graph) if handler else self.get_node(node_id, kind, graph))
        if fault is not None:  # accept_then_*: done, and the client never hears so
            if fault.kind == "accept_then_hang":
                await self._hang(request, fault.hang_seconds)
            raise fault.failure(buc_kind=buc_kind)
        return result

    async def _hang(self, request: Request, seconds: float) -> None:
        async def client_gone() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        with anyio.move_on_after(seconds):
            async with anyio.create_task_group() as group:
                for wait in (client_gone, self.closing.wait):

                    async def run(wait: Callable[[], Awaitable[object]] = wait) -> None:
                        await wait()
                        group.cancel_scope.cancel()

                    group.start_soon(run)

    # ---- nodes ----------------------------------------------------------------------------

    async def get_node(self, node_id: str, kind: str, graph: GraphRequest) -> dict[str, Any]:
        state = self.state
        obj: dict[str, Any]
        if kind == "page":
            page = state.pages[node_id]
            obj = {"id": page.id, "name": page.name}
        elif kind == "ig_user":
            user = state.ig_users[node_id]
            obj = {"id": user.id, "username": user.username, "name": user.username}
        elif kind == "container":
            container = state.containers[node_id]
            wants = set(graph.fields(meta_params.DEFAULT_FIELDS[kind]))
            code = state.status_of(container, poll=bool(wants & {"status_code", "status"}))
            obj = {"id": container.id, "status_code": code, "status": _STATUS_TEXT[code]}
        elif kind == "media":
            obj = next(m for m in state.media if m.id == node_id).fields()
        elif kind == "post":
            obj = next(p for p in state.posts if p.id == node_id).fields()
        else:
            obj = next(p for p in state.photos if p.id == node_id).fields()
        return _pick(obj, graph.fields(meta_params.DEFAULT_FIELDS[kind]), keep_id=True)

    # ---- Facebook Pages -------------------------------------------------------------------

    async def post_feed(self, page_id: str, graph: GraphRequest) -> dict[str, Any]:
        message, link = graph.params.get("message", ""), graph.params.get("link", "")
        if not message.strip() and not link:
            raise graph_fail(100, "(#100) Missing message or attachment")
        post = self.state.create_feed_post(self.state.pages[page_id], message, link)
        return {"id": post.id}

    async def post_photo(self, page_id: str, graph: GraphRequest) -> dict[str, Any]:
        data = graph.upload()
        source = "upload"
        if data is None and (url := graph.params.get("url")):
            data, source = await fetch(url, self.state.hosted), url
        if data is None:
            raise graph_fail(324, "(#324) Requires upload file")
        content_type = sniff_image(data)
        if content_type not in PHOTO_TYPES:
            raise graph_fail(324, "(#324) Missing or invalid image file")
        story = parse_bool(graph.params.get("published"), True) and not parse_bool(
            graph.params.get("no_story"), False
        )
        name = graph.params.get("message") or graph.params.get("caption") or ""
        page = self.state.pages[page_id]
        photo = self.state.create_photo(
            page, name, Image.of(data, content_type), source=source, story=story
        )
        answer = {"id": photo.id}
        if photo.page_story_id is not None:
            answer["post_id"] = photo.page_story_id
        return answer

    async def get_feed(self, page_id: str, graph: GraphRequest) -> dict[str, Any]:
        posts = [p for p in self.state.posts if p.page_id == page_id]
        items = [(p.created, p.fields()) for p in posts]
        return _listing(items, graph, meta_params.DEFAULT_FIELDS["post"])

    async def get_photos(self, page_id: str, graph: GraphRequest) -> dict[str, Any]:
        # The Page's own photos are type=uploaded; the default lists photos it is tagged in.
        uploaded = graph.params.get("type") == "uploaded"
        photos = [p for p in self.state.photos if p.page_id == page_id and uploaded]
        items = [(p.created, p.fields()) for p in photos]
        return _listing(items, graph, meta_params.DEFAULT_FIELDS["photo"])

    # ---- Instagram ------------------------------------------------------------------------

    async def post_container(self, ig_user_id: str, graph: GraphRequest) -> dict[str, Any]:
        params = graph.params
        if params.get("media_type", "IMAGE") != "IMAGE" or "video_url" in params:
            raise graph_fail(100, "(#100) The stand-in publishes single images only")
        image_url = params.get("image_url")
        if not image_url:
            raise graph_fail(100, "(#100) The parameter image_url is required")
        data = await fetch(image_url, self.state.hosted)
        if data is None:
            raise graph_fail(9004, f"The media could not be fetched from this uri: {image_url}")
        if sniff_image(data) != "image/jpeg":
            raise graph_fail(9004)  # JPEG is the only image format Instagram publishes
        user = self.state.ig_users[ig_user_id]
        image = Image.of(data, "image/jpeg")
        return {
            "id": self.state.create_container(user, image_url, params.get("caption", ""), image)
        }

    async def post_publish(self, ig_user_id: str, graph: GraphRequest) -> dict[str, Any]:
        creation_id = graph.params.get("creation_id", "")
        if not creation_id.isdigit():
            raise graph_fail(100, "(#100) The parameter creation_id is required")
        container = self.state.containers.get(creation_id)
        if container is None or container.ig_user_id != ig_user_id:
            raise no_such_object(creation_id)
        media = self.state.publish(self.state.ig_users[ig_user_id], container)
        return {"id": media.id}

    async def get_media(self, ig_user_id: str, graph: GraphRequest) -> dict[str, Any]:
        items = [(m.created, m.fields()) for m in self.state.media if m.ig_user_id == ig_user_id]
        return _listing(items, graph, meta_params.DEFAULT_FIELDS["media"])

    async def get_limit(self, ig_user_id: str, graph: GraphRequest) -> dict[str, Any]:
        user = self.state.ig_users[ig_user_id]
        since = parse_time(graph.params.get("since"))
        if since is not None and since < self.state.clock() - SINCE_MAX_AGE_S:
            raise graph_fail(100, "(#100) since must be a Unix timestamp no older than 24 hours")
        entry = {
            "quota_usage": self.state.quota_usage(user, since),
            "config": {"quota_total": user.quota_total, "quota_duration": user.quota_duration},
        }
        wanted = graph.fields(meta_params.DEFAULT_FIELDS["content_publishing_limit"])
        return {"data": [_pick(entry, wanted, keep_id=False)]}


_STATUS_TEXT = {
    "IN_PROGRESS": "In Progress: Media is still being processed.",
    "FINISHED": "Finished: Media has been uploaded and it is ready to be published.",
    "PUBLISHED": "Published: Media has been successfully published.",
    "EXPIRED": "Expired: The container was not published within 24 hours.",
    "ERROR": "Error: Media upload has failed.",
}


def _pick(obj: dict[str, Any], fields: tuple[str, ...], *, keep_id: bool) -> dict[str, Any]:
    out = {name: obj[name] for name in fields if name in obj}
    if keep_id and "id" in obj:
        out["id"] = obj["id"]
    return out


def _listing(
    items: list[tuple[float, dict[str, Any]]], graph: GraphRequest, default: tuple[str, ...]
) -> dict[str, Any]:
    since, until = parse_time(graph.params.get("since")), parse_time(graph.params.get("until"))
    limit = graph.params.get("limit", str(DEFAULT_PAGE_SIZE))
    if not limit.isdigit():
        raise graph_fail(100, "(#100) limit must be a number")
    kept = [
        obj
        for created, obj in sorted(items, key=lambda item: item[0], reverse=True)
        if (since is None or created >= since) and (until is None or created <= until)
    ]
    fields = graph.fields(default)
    return {
        "data": [_pick(obj, fields, keep_id=True) for obj in kept[: min(int(limit), MAX_PAGE_SIZE)]]
    }


def create_app(*, clock: Clock = time.time) -> Starlette:
    """A fresh stand-in; `clock` gives Unix seconds (created times, windows, expiry)."""
    state = MetaState(clock=clock)
    graph = _Graph(state)
    admin = AdminApi(state)
    app = Starlette(
        routes=[
            Route("/_standin/pages/{id}", admin.put_page, methods=["PUT"]),
            Route("/_standin/ig_users/{id}", admin.put_ig_user, methods=["PUT"]),
            Route("/_standin/faults", admin.add_fault, methods=["POST"]),
            Route("/_standin/faults", admin.list_faults, methods=["GET"]),
            Route("/_standin/faults", admin.clear_faults, methods=["DELETE"]),
            Route("/_standin/posts", admin.posts, methods=["GET"]),
            Route("/_standin/containers", admin.containers, methods=["GET"]),
            Route("/_standin/media/{name:path}", admin.put_media, methods=["PUT"]),
            Route("/_standin/media/{name:path}", admin.get_media, methods=["GET"]),
            Route("/_standin/reset", admin.reset, methods=["POST"]),
            Route("/{version}/{node}", graph.serve, methods=["GET", "POST"]),
            Route("/{version}/{node}/{edge}", graph.serve, methods=["GET", "POST"]),
        ]
    )
    app.state.meta = state
    app.state.meta_closing = graph.closing
    return app
