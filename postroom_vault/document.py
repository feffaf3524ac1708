"""One vault file: YAML frontmatter + Markdown body; parsing, writing in the field's shape, and
atomic, edit-safe rewrites.

The frontmatter is written by hand rather than by `yaml.dump` so that it reads exactly like the
field's files: times bare (`2026-01-19T16:15:00Z`), platform ids, URLs and errors double-quoted,
keys in the field's order. Parsing is PyYAML's safe loader.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from postroom_vault import MalformedFile, OutsideVault

PENDING = "Pending_Approval"
APPROVED = "Approved"
DONE = "Done"
LOGS = "Logs"
MEDIA = "Media"
ERROR_SUFFIX = ".postroom-error.md"
TMP_PREFIX = ".postroom-tmp-"

# Keys in the order the field's files show them; anything a person adds follows, untouched.
KEY_ORDER = (
    "id",
    "type",
    "status",
    "created_at",
    "approved_at",
    "last_attempt_at",
    "executed_at",
    "completed_at",
    "retry_count",
    "next_retry_at",
    "image",
    "platforms",
)
_QUOTED_KEYS = frozenset({"post_id", "url", "error", "image"})
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
_FRONT = re.compile(r"\A---\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)(.*)\Z", re.S)


def utc_text(when: dt.datetime) -> str:
    """`2026-01-19T16:15:00Z`: the field's time format."""
    return when.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> dt.datetime | None:
    if not isinstance(text, str) or not _TIME.match(text):
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(slots=True)
class Document:
    front: dict[str, Any]
    body: str
    extra_order: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.front.get("id", ""))

    @property
    def status(self) -> str:
        return str(self.front.get("status", ""))


def _plain(value: Any) -> Any:
    """YAML's own types made plain: a bare time parses as a datetime; keep the field's text."""
    if isinstance(value, dt.datetime):
        return utc_text(value if value.tzinfo else value.replace(tzinfo=dt.UTC))
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def parse(raw: bytes) -> Document:
    """A vault file's frontmatter and body; MalformedFile says what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedFile(f"not UTF-8 text (byte {exc.start})") from None
    match = _FRONT.match(text.lstrip("\ufeff"))
    if match is None:
        raise MalformedFile("no YAML frontmatter: the file must start with a `---` line")
    try:
        loaded = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        raise MalformedFile(f"the frontmatter is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise MalformedFile("the frontmatter must be a mapping of `key: value` lines")
    front = _plain(loaded)
    post_id = front.get("id")
    if not isinstance(post_id, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", post_id):
        raise MalformedFile("`id:` is missing or not a plain name (letters, digits, _ . -)")
    platforms = front.get("platforms")
    if not isinstance(platforms, (list, dict)) or not platforms:
        raise MalformedFile("`platforms:` must list at least one platform (facebook, x, …)")
    extra = [k for k in front if k not in KEY_ORDER]
    return Document(front=front, body=match.group(2), extra_order=extra)


def _scalar(key: str, value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if key in _QUOTED_KEYS:
        return json.dumps(text, ensure_ascii=False)
    if _TIME.match(text) or (_PLAIN.match(text) and yaml.safe_load(text) == text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _emit(key: str, value: Any, indent: str, out: list[str]) -> None:
    if isinstance(value, dict):
        if not value:
            out.append(f"{indent}{key}: {{}}")
            return
        out.append(f"{indent}{key}:")
        for k, v in value.items():
            _emit(str(k), v, indent + "  ", out)
    elif isinstance(value, list):
        if not value:
            out.append(f"{indent}{key}: []")
            return
        out.append(f"{indent}{key}:")
        for item in value:
            if isinstance(item, (dict, list)):
                out.append(f"{indent}  - {json.dumps(item, ensure_ascii=False)}")
            else:
                out.append(f"{indent}  - {_scalar(key, item)}")
    else:
        out.append(f"{indent}{key}: {_scalar(key, value)}")


def serialize(doc: Document) -> bytes:
    lines = ["---"]
    keys = [k for k in KEY_ORDER if k in doc.front]
    keys += [k for k in doc.front if k not in KEY_ORDER]
    for key in keys:
        _emit(key, doc.front[key], "", lines)
    lines.append("---")
    body = doc.body if doc.body.startswith("\n") else "\n" + doc.body
    return ("\n".join(lines) + "\n" + body).encode("utf-8")


def inside(vault: Path, path: Path) -> Path:
    """`path` resolved, refused when it leaves the vault (symlinks and `..` included)."""
    root = vault.resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise OutsideVault(f"{path} is outside the vault {root}")
    return resolved


def write_atomic(path: Path, data: bytes) -> None:
    """Temporary file beside it, fsync, rename: a reader sees the old or the new file, whole."""
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


Transform = Callable[[Document], Document | None]
DEFAULT_EDIT_ATTEMPTS = 5


def update(
    path: Path,
    transform: Transform,
    *,
    attempts: int = DEFAULT_EDIT_ATTEMPTS,
    before_replace: Callable[[Path], None] | None = None,
) -> bool:
    """Rewrite `path` with `transform(current)`, never over a person's edit.

    The file is read, transformed and written to a temporary file; just before the rename it is
    read again, and if a person saved it meanwhile the work is thrown away and done again on
    their version (so their body edits and status changes are kept). After `attempts` such
    collisions it gives up until the next pass. True when the file was rewritten.
    `before_replace` is a test seam: it runs between the first read and the check.
    """
    for _ in range(attempts):
        raw = path.read_bytes()
        new = transform(parse(raw))
        if new is None:
            return False
        data = serialize(new)
        if data == raw:
            return False
        tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace(path)
        if path.read_bytes() != raw:
            tmp.unlink(missing_ok=True)
            continue
        os.replace(tmp, path)
        return True
    return False


def error_note_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".md") + ERROR_SUFFIX)


def write_error_note(path: Path, reason: str) -> None:
    """A note beside a file the bridge cannot use; the file itself is left alone."""
    note = error_note_path(path)
    text = (
        f"# postroom could not use {path.name}\n\n"
        f"**Problem**: {reason}\n\n"
        "The file was left as it is. Fix it and save: the bridge tries again and removes this "
        "note.\n"
    )
    if not note.exists() or note.read_text(encoding="utf-8") != text:
        write_atomic(note, text.encode("utf-8"))


def is_post_file(path: Path) -> bool:
    name = path.name
    return (
        name.endswith(".md")
        and not name.startswith(".")
        and not name.endswith(ERROR_SUFFIX)
        and not name.startswith(TMP_PREFIX)
    )
