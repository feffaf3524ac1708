"""Media of a post, turned into bytes on the worker.

A post's media are references. The worker resolves them itself:
- `https://…` / `http://…`: downloaded (at most `max_bytes`);
- `file:NAME`, or a plain relative `NAME`: a file under one of the worker's `--media-dir`
  folders. Absolute paths and `..` are refused: a post's author must not be able to make a
  worker upload its own files (its credentials, say) to a public account.

The content type is read from the bytes (PNG, JPEG, GIF, WebP, MP4), not trusted from a name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx

from worker.errors import InvalidContent, Transient

DEFAULT_MAX_MEDIA_BYTES = 50 * 1024 * 1024

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"ftyp", 4, "video/mp4"),
)


@dataclass(frozen=True, slots=True)
class MediaFile:
    reference: str
    filename: str
    content_type: str
    data: bytes

    @property
    def is_video(self) -> bool:
        return self.content_type.startswith("video/")


def sniff_content_type(data: bytes) -> str | None:
    for magic, offset, content_type in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


class MediaLoader:
    def __init__(
        self,
        *,
        media_dirs: Sequence[Path] = (),
        max_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._dirs = tuple(d.resolve() for d in media_dirs)
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._transport = transport

    async def load(self, reference: str) -> MediaFile:
        """The bytes of one reference; InvalidContent when it cannot be used, Transient when a
        download failed in a way that may pass."""
        if reference.startswith(("http://", "https://")):
            data = await self._download(reference)
            name = PurePosixPath(httpx.URL(reference).path).name or "media"
        else:
            path = self._local(reference)
            data = path.read_bytes()
            name = path.name
        if len(data) > self._max_bytes:
            raise InvalidContent(f"media {reference!r} is over {self._max_bytes} bytes")
        content_type = sniff_content_type(data)
        if content_type is None:
            raise InvalidContent(
                f"media {reference!r} is not an image or video this worker knows "
                "(PNG, JPEG, GIF, WebP, MP4)"
            )
        return MediaFile(reference=reference, filename=name, content_type=content_type, data=data)

    async def load_all(self, references: Sequence[str]) -> list[MediaFile]:
        return [await self.load(ref) for ref in references]

    def _local(self, reference: str) -> Path:
        name = reference.removeprefix("file:")
        relative = PurePosixPath(name)
        if not name or relative.is_absolute() or ".." in relative.parts:
            raise InvalidContent(
                f"media {reference!r}: give a URL or a file name inside the worker's --media-dir"
            )
        if not self._dirs:
            raise InvalidContent(
                f"media {reference!r} is a file name, but this worker has no --media-dir"
            )
        for folder in self._dirs:
            candidate = (folder / relative).resolve()
            if candidate.is_relative_to(folder) and candidate.is_file():
                return candidate
        raise InvalidContent(f"media {reference!r} is in none of the worker's media folders")

    async def _download(self, url: str) -> bytes:
        try:
            async with (
                httpx.AsyncClient(timeout=self._timeout_s, transport=self._transport) as client,
                client.stream("GET", url, follow_redirects=True) as response,
            ):
                if response.status_code >= 500:
                    raise Transient(f"media {url}: HTTP {response.status_code}")
                if response.status_code != 200:
                    raise InvalidContent(f"media {url}: HTTP {response.status_code}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise InvalidContent(f"media {url} is over {self._max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise Transient(f"media {url}: download failed: {type(exc).__name__}") from exc
