"""The X stand-in's media upload, as X v2 documents it
(https://docs.x.com/x-api/media/quickstart/media-upload-chunked):

    POST /2/media/upload/initialize   {media_type, total_bytes, media_category}  -> data.id
    POST /2/media/upload/{id}/append  multipart: media (the chunk), segment_index
    POST /2/media/upload/{id}/finalize                -> data (+ processing_info for video/GIF)
    GET  /2/media/upload?command=STATUS&media_id=ID   -> data.processing_info {state, ...}

Images are usable as soon as they are finalized; video and GIFs answer `processing_info`
{state: pending, check_after_secs} and become usable after MEDIA_PROCESSING_S.
"""

from __future__ import annotations

import base64
import binascii
import math
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sandbox.standins.x_faults import FaultKind, Op, Reply, invalid_request
from sandbox.standins.x_gate import Gate, ok, send
from sandbox.standins.x_state import MEDIA_LIMITS, Upload, XState

UPLOAD_EXPIRES_S = 86_400
MEDIA_TYPES = frozenset(
    {
        "video/mp4",
        "video/webm",
        "video/mp2t",
        "video/quicktime",
        "text/srt",
        "text/vtt",
        "image/jpeg",
        "image/gif",
        "image/bmp",
        "image/png",
        "image/webp",
        "image/pjpeg",
        "image/tiff",
        "model/gltf-binary",
        "model/vnd.usdz+zip",
    }
)
CATEGORIES = frozenset(
    {
        "amplify_video",
        "tweet_gif",
        "tweet_image",
        "tweet_video",
        "dm_gif",
        "dm_image",
        "dm_video",
        "subtitles",
    }
)
_INIT_FIELDS = frozenset(
    {"additional_owners", "media_category", "media_type", "shared", "total_bytes"}
)


def _default_category(media_type: str) -> str:
    if media_type == "image/gif":
        return "tweet_gif"
    return "tweet_video" if media_type.startswith("video/") else "tweet_image"


def parse_multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """The form fields of a multipart/form-data body (file or plain), by name."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message: Message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, bytes] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload
    return fields


class MediaApi:
    def __init__(self, state: XState, gate: Gate) -> None:
        self.state = state
        self.gate = gate

    def _upload(self, upload_id: str, username: str) -> Upload | Reply:
        upload = self.state.uploads.get(upload_id)
        if not upload_id.isdigit() or upload is None or upload.username != username:
            return invalid_request(f"The media_id [{upload_id}] is invalid.", {"id": [upload_id]})
        return upload

    async def initialize(self, request: Request) -> Response:
        entered = self.gate.enter(request, Op.MEDIA)
        if isinstance(entered, Response):
            return entered
        account, _, _ = entered
        try:
            body = await request.json()
        except ValueError:
            return send(invalid_request("Request body is not valid JSON."))
        if not isinstance(body, dict) or set(body) - _INIT_FIELDS:
            return send(invalid_request("$: only media_type, total_bytes, media_category, ..."))
        media_type, total = body.get("media_type"), body.get("total_bytes")
        if not isinstance(media_type, str) or media_type not in MEDIA_TYPES:
            return send(invalid_request("$.media_type: is missing or not a supported type."))
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            return send(invalid_request("$.total_bytes: is missing or not a size in bytes."))
        category = body.get("media_category") or _default_category(media_type)
        if not isinstance(category, str) or category not in CATEGORIES:
            return send(invalid_request("$.media_category: is not a media category."))
        limit = MEDIA_LIMITS.get(category, max(MEDIA_LIMITS.values()))
        if total > limit:
            return send(invalid_request(f"File size exceeds {limit} bytes."))
        upload = self.state.new_upload(account, media_type, category, total)
        data = {"id": upload.id, "media_key": upload.media_key, "expires_after_secs": 86_400}
        return ok({"data": data})

    async def append(self, request: Request) -> Response:
        entered = self.gate.enter(request, Op.MEDIA)
        if isinstance(entered, Response):
            return entered
        account, _, _ = entered
        upload = self._upload(request.path_params["id"], account.username)
        if isinstance(upload, Reply):
            return send(upload)
        chunk_index = await _chunk(request)
        if isinstance(chunk_index, Reply):
            return send(chunk_index)
        chunk, index = chunk_index
        if upload.finalized_at is not None:
            return send(invalid_request("This upload has been finalized already."))
        upload.segments[index] = len(chunk)
        if sum(upload.segments.values()) > upload.total_bytes:
            return send(invalid_request("Segments add up to more than total_bytes."))
        expires_at = math.ceil(self.state.clock()) + UPLOAD_EXPIRES_S
        return ok({"data": {"expires_at": expires_at}})

    async def finalize(self, request: Request) -> Response:
        entered = self.gate.enter(request, Op.MEDIA, finalize=True)
        if isinstance(entered, Response):
            return entered
        account, fault, _ = entered
        upload = self._upload(request.path_params["id"], account.username)
        if isinstance(upload, Reply):
            return send(upload)
        size = sum(upload.segments.values())
        if upload.finalized_at is None:
            if size != upload.total_bytes:
                message = "Segments do not add up to provided total file size."
                return send(invalid_request(message))
            failed = fault is not None and fault.kind is FaultKind.PROCESSING_FAILED
            self.state.finalize(upload, failed=failed)
        return ok({"data": self._describe(upload, first=True)})

    async def status(self, request: Request) -> Response:
        entered = self.gate.enter(request, Op.MEDIA)
        if isinstance(entered, Response):
            return entered
        account, _, _ = entered
        params = dict(request.query_params.multi_items())
        if set(params) - {"media_id", "command"} or params.get("command", "STATUS") != "STATUS":
            return send(invalid_request("Only media_id and command=STATUS are understood."))
        upload = self._upload(params.get("media_id", ""), account.username)
        if isinstance(upload, Reply):
            return send(upload)
        return ok({"data": self._describe(upload, first=False)})

    def _describe(self, upload: Upload, *, first: bool) -> dict[str, Any]:
        now = self.state.clock()
        data: dict[str, Any] = {
            "id": upload.id,
            "media_key": upload.media_key,
            "size": sum(upload.segments.values()),
            "expires_after_secs": UPLOAD_EXPIRES_S,
        }
        if upload.category == "tweet_image" and upload.finalized_at is not None:
            data["image"] = {"image_type": upload.media_type}
        state = upload.state(now)
        if state is None:
            return data
        info: dict[str, Any] = {"state": "pending" if first and state == "in_progress" else state}
        if state == "in_progress":
            info["check_after_secs"] = max(1, math.ceil(upload.processing_s))
            info["progress_percent"] = 0 if first else 50
        elif state == "succeeded":
            info["progress_percent"] = 100
        data["processing_info"] = info
        return data


async def _chunk(request: Request) -> tuple[bytes, int] | Reply:
    """APPEND's `media` and `segment_index`, from multipart/form-data (or JSON, base64)."""
    content_type = request.headers.get("content-type", "")
    body = await request.body()
    if content_type.startswith("multipart/form-data"):
        fields = parse_multipart(content_type, body)
        media, raw_index = fields.get("media"), fields.get("segment_index", b"").decode()
    elif content_type.startswith("application/json"):
        try:
            data = await request.json()
            media = base64.b64decode(data["media"], validate=True)
            raw_index = str(data["segment_index"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            return invalid_request("Request body must hold media (base64) and segment_index.")
    else:
        return invalid_request("Send the chunk as multipart/form-data.")
    if media is None:
        return invalid_request("The `media` field is required.", {"media": []})
    if not raw_index.isdigit() or not 0 <= int(raw_index) <= 999:
        return invalid_request("segment_index must be 0 to 999.", {"segment_index": [raw_index]})
    return media, int(raw_index)
