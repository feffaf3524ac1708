"""Downloading an asset to a file: written beside the target and renamed at the end (a failed
download leaves no file), checked against the sha256 in its id."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

from postroom.client.errors import PostroomError
from postroom.v1 import publishing_pb2 as pb

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class AssetFile:
    """Feed it an asset's chunks, then `finish()`; `abort()` on failure."""

    def __init__(self, asset_id: str, path: Path) -> None:
        self.asset_id = asset_id
        self.path = path
        self.part = path.with_name(f".{path.name}.part")
        self.size = 0
        self.total = -1
        self.content_type = ""
        try:
            self._file = self.part.open("wb")
        except OSError as exc:
            raise _io_error(path, exc) from exc

    def feed(self, chunk: pb.AssetChunk) -> None:
        try:
            self._file.seek(chunk.offset)
            self._file.write(chunk.data)
        except OSError as exc:
            self.abort()
            raise _io_error(self.path, exc) from exc
        self.size = max(self.size, chunk.offset + len(chunk.data))
        self.total = chunk.total_size or self.total
        self.content_type = chunk.content_type or self.content_type

    def finish(self) -> pb.AssetChunk:
        """Checked and renamed into place; its size and content type."""
        try:
            self._file.close()
            self._verify()
            self.part.replace(self.path)
        except OSError as exc:
            raise _io_error(self.path, exc) from exc
        finally:
            self.part.unlink(missing_ok=True)
        return pb.AssetChunk(total_size=self.size, content_type=self.content_type)

    def abort(self) -> None:
        self._file.close()
        self.part.unlink(missing_ok=True)

    def _verify(self) -> None:
        if self.total >= 0 and self.size != self.total:
            raise PostroomError(
                "DATA_LOSS", f"asset {self.asset_id}: got {self.size} of {self.total} bytes"
            )
        # Asset ids are the sha256 of the bytes, so the download can check itself.
        expected = self.asset_id.removeprefix("sha256:").lower()
        if _SHA256_HEX.fullmatch(expected):
            actual = hashlib.sha256(self.part.read_bytes()).hexdigest()
            if actual != expected:
                raise PostroomError(
                    "DATA_LOSS", f"asset {self.asset_id}: downloaded bytes hash to {actual}"
                )


def write_asset(asset_id: str, path: Path, chunks: Iterator[pb.AssetChunk]) -> pb.AssetChunk:
    out = AssetFile(asset_id, path)
    try:
        for chunk in chunks:
            out.feed(chunk)
    except BaseException:
        out.abort()
        raise
    return out.finish()


def _io_error(path: Path, exc: OSError) -> PostroomError:
    return PostroomError("IO", f"cannot write {path}: {exc.strerror or exc}")
