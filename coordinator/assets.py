"""Content-addressed screenshot storage: a file per sha256, written atomically, read in chunks."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from coordinator.errors import InvalidArgument, NotFound

_ASSET_ID = re.compile(r"^[0-9a-f]{64}$")
READ_CHUNK_BYTES = 64 * 1024


def sniff_content_type(head: bytes) -> str:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


class AssetStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, asset_id: str) -> Path:
        if not _ASSET_ID.match(asset_id):
            raise InvalidArgument(
                f"asset id {asset_id!r} is not a sha256 hex digest (64 lowercase hex characters)"
            )
        return self.root / asset_id[:2] / asset_id

    def put(self, data: bytes) -> str:
        """Store bytes under their sha256; storing the same bytes twice is a no-op."""
        asset_id = hashlib.sha256(data).hexdigest()
        path = self._path(asset_id)
        if path.exists():
            return asset_id
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # readers see the whole file or nothing
        return asset_id

    def size(self, asset_id: str) -> int:
        path = self._path(asset_id)
        if not path.exists():
            raise NotFound(f"asset {asset_id} does not exist")
        return path.stat().st_size

    def chunks(self, asset_id: str) -> Iterator[bytes]:
        path = self._path(asset_id)
        if not path.exists():
            raise NotFound(f"asset {asset_id} does not exist")
        with open(path, "rb") as fh:
            while chunk := fh.read(READ_CHUNK_BYTES):
                yield chunk
