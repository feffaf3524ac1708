"""Content-addressed screenshot storage: a file per sha256, written atomically, read in chunks.

Uploads stream to disk: `begin()` opens an `Incoming` file in `.incoming/` that each chunk is
appended to (and hashed) as it arrives, so a 16 MiB screenshot never sits in the coordinator's
memory; `finish()` renames it to its sha256 name, `discard()` deletes it. Blocking calls: run them
in a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from coordinator.errors import InvalidArgument, NotFound

_ASSET_ID = re.compile(r"^[0-9a-f]{64}$")
READ_CHUNK_BYTES = 64 * 1024
INCOMING_DIR = ".incoming"
# Unfinished uploads older than this are from a process that died mid-upload.
STALE_INCOMING_S = 3600.0


def sniff_content_type(head: bytes) -> str:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


class Incoming:
    """One upload being received: appended to a temporary file and hashed as it arrives."""

    def __init__(self, store: AssetStore) -> None:
        self._store = store
        folder = store.root / INCOMING_DIR
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix="upload-")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.head = b""  # the first bytes, to sniff the content type by

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        if len(self.head) < 16:
            self.head = (self.head + data)[:16]
        self.size += len(data)

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> str:
        """Durably store the bytes under their sha256 (a no-op if already stored)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        asset_id = self.sha256()
        path = self._store._path(asset_id)
        if path.exists():
            self.path.unlink(missing_ok=True)
            return asset_id
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, path)  # readers see the whole file or nothing
        return asset_id

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class AssetStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._sweep_incoming()

    def _sweep_incoming(self) -> None:
        folder = self.root / INCOMING_DIR
        if not folder.is_dir():
            return
        cutoff = time.time() - STALE_INCOMING_S
        for leftover in folder.glob("upload-*"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
            except OSError:
                pass  # another process's, or gone already

    def begin(self) -> Incoming:
        """Start receiving an upload (see Incoming)."""
        return Incoming(self)

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
