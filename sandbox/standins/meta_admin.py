"""The Meta stand-in's admin API (`{prefix}/_standin/...`), not part of Graph: register Pages and
IG users with their tokens and settings, inject faults, host images, read what was published.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandbox.standins.meta_errors import FaultError, parse_fault
from sandbox.standins.meta_http import sniff_image
from sandbox.standins.meta_state import DEFAULT_DUPLICATE_WINDOW_S, IgUser, MetaState, Page


class AdminApi:
    """The `/_standin` endpoints: set up Pages and IG users, faults, and read the record."""

    def __init__(self, state: MetaState) -> None:
        self.state = state

    async def put_page(self, request: Request) -> Response:
        data = await _json(request)
        page_id = request.path_params["id"]
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            return _admin_error("access_token is required")
        self.state.pages[page_id] = Page(
            page_id,
            token,
            name=str(data.get("name", f"Page {page_id}")),
            duplicate_window_s=float(data.get("duplicate_window_s", DEFAULT_DUPLICATE_WINDOW_S)),
        )
        return JSONResponse({"id": page_id})

    async def put_ig_user(self, request: Request) -> Response:
        data = await _json(request)
        user_id = request.path_params["id"]
        token = data.pop("access_token", None)
        if not isinstance(token, str) or not token:
            return _admin_error("access_token is required")
        try:
            user = IgUser(user_id, token, **data)
        except TypeError as exc:
            return _admin_error(str(exc))
        user.publishes = [float(t) for t in user.publishes]
        self.state.ig_users[user_id] = user
        return JSONResponse({"id": user_id})

    async def add_fault(self, request: Request) -> Response:
        try:
            fault = self.state.faults.add(parse_fault(await _json(request)))
        except FaultError as exc:
            return _admin_error(str(exc))
        return JSONResponse({"id": fault.id}, status_code=201)

    async def list_faults(self, request: Request) -> Response:
        book = self.state.faults
        return JSONResponse(
            {"pending": [f.to_json() for f in book.pending], "fired": list(book.fired)}
        )

    async def clear_faults(self, request: Request) -> Response:
        return JSONResponse({"cleared": self.state.faults.clear()})

    async def posts(self, request: Request) -> Response:
        posts = self.state.record(request.query_params.get("target"))
        return JSONResponse({"posts": posts, "count": len(posts)})

    async def containers(self, request: Request) -> Response:
        containers = self.state.container_record(request.query_params.get("target"))
        return JSONResponse({"containers": containers, "count": len(containers)})

    async def put_media(self, request: Request) -> Response:
        data = await request.body()
        content_type = sniff_image(data) or "application/octet-stream"
        self.state.hosted[request.path_params["name"]] = (data, content_type)
        return JSONResponse({"name": request.path_params["name"], "bytes": len(data)})

    async def get_media(self, request: Request) -> Response:
        hosted = self.state.hosted.get(request.path_params["name"])
        if hosted is None:
            return Response(b"not found", status_code=404, media_type="text/plain")
        return Response(hosted[0], media_type=hosted[1])

    async def reset(self, request: Request) -> Response:
        fresh = MetaState(clock=self.state.clock)
        vars(self.state).update(vars(fresh))
        return JSONResponse({"reset": True})


async def _json(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _admin_error(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=400)
