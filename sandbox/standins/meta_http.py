"""How the Meta stand-in reads a Graph request: parameters from the query string and the body
(form-encoded, multipart or JSON, as Graph takes them), uploaded files, the access token (the
`access_token` parameter, or `Authorization: Bearer|OAuth <token>`), and the images Graph fetches
from a URL. Stdlib parsing only (the sandbox has no multipart dependency).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.parser import BytesParser
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
from starlette.requests import Request

from sandbox.standins.meta_errors import graph_fail, unknown_param

FETCH_TIMEOUT_S = 5.0
MAX_IMAGE_BYTES = 8 * 1024 * 1024  # Instagram's limit for an image_url
HOSTED_PREFIX = "/_standin/media/"


@dataclass
class GraphRequest:
    params: dict[str, str]
    files: list[tuple[str, bytes]] = field(default_factory=list)
    token: str | None = None

    def check(self, accepted: frozenset[str]) -> None:
        for name in self.params:
            if name not in accepted:
                raise unknown_param(name)

    def fields(self, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self.params.get("fields")
        if not raw:
            return default
        return tuple(name.strip() for name in raw.split(",") if name.strip())

    def upload(self) -> bytes | None:
        """The uploaded file: the `source` part, else the first one (Graph takes any name; the
        SDK names its parts source0, source1, ...)."""
        for name, data in self.files:
            if name == "source":
                return data
        return self.files[0][1] if self.files else None


async def read_request(request: Request) -> GraphRequest:
    params = dict(request.query_params)
    files: list[tuple[str, bytes]] = []
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    if body and content_type.startswith("application/x-www-form-urlencoded"):
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    elif body and content_type.startswith("multipart/form-data"):
        form, files = _multipart(content_type, body)
        params.update(form)
    elif body and content_type.startswith("application/json"):
        try:
            data = json.loads(body)
        except ValueError:
            raise graph_fail(100, "(#100) The request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise graph_fail(100, "(#100) The request body must be a JSON object")
        params.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items()})
    token = params.pop("access_token", None)
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "oauth") and value.strip():
        token = value.strip()
    return GraphRequest(params=params, files=files, token=token)


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    message = BytesParser(policy=policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    form: dict[str, str] = {}
    files: list[tuple[str, bytes]] = []
    if not message.is_multipart():
        raise graph_fail(100, "(#100) The multipart body could not be read")
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if part.get_filename() is not None:
            files.append((name, data))
        else:
            form[name] = data.decode(part.get_content_charset() or "utf-8", "replace")
    return form, files


def parse_bool(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.strip().lower() not in ("false", "0", "")


def parse_time(value: str | None) -> float | None:
    """`since` / `until`: a Unix timestamp (what the adapters send) or an ISO 8601 time."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise graph_fail(100, f"(#100) Invalid time {value!r}") from None


def sniff_image(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data.startswith(b"BM"):
        return "image/bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    return None


def hosted_name(url: str) -> str | None:
    path = urlsplit(url).path
    index = path.find(HOSTED_PREFIX)
    return unquote(path[index + len(HOSTED_PREFIX) :]) if index >= 0 else None


async def fetch(url: str, hosted: dict[str, tuple[bytes, str]]) -> bytes | None:
    """What Graph would download from `url` (None when it cannot): the stand-in's own hosted
    images directly, anything else over HTTP."""
    name = hosted_name(url)
    if name is not None and name in hosted:
        return hosted[name][0]
    if not url.startswith(("http://", "https://")):
        return None
    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=True) as client:
            response = await client.get(url)
    except httpx.HTTPError:
        return None
    if response.status_code != 200 or len(response.content) > MAX_IMAGE_BYTES:
        return None
    return response.content
