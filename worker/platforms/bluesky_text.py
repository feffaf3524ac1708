"""Pure helpers of the Bluesky adapter: record keys (TIDs), rich-text facets, image sizes.

TIDs (https://atproto.com/specs/tid): a 64-bit integer, top bit 0, then 53 bits of microseconds
since the Unix epoch and a 10-bit clock id, written as 13 characters of base32-sortable
(`234567abcdefghijklmnopqrstuvwxyz`). `tid_for(key)` derives one from a job's platform key, so
every attempt of a job writes to the same record key: the PDS refuses a second create there.

Facets (https://docs.bsky.app/docs/advanced-guides/post-richtext): ranges of the post's UTF-8
bytes (byteStart inclusive, byteEnd exclusive) carrying a link, a mention (a DID) or a tag. The
detection follows the official client's rules (@atproto/api `detectFacets`):
- mention: `@handle` at the start, after whitespace or "("; the handle must have handle syntax
  (https://atproto.com/specs/handle) and is resolved to a DID by the caller; an unresolvable
  handle gets no facet;
- link: `http://` / `https://` up to the next whitespace, at the start, after whitespace or "(";
  one trailing `.,;:!?` is left out, and a trailing ")" unless the URL has a "(". Unlike the app,
  a bare domain (`example.com`) is not linked: the app decides those with the IANA list of
  top-level domains, which the worker does not carry;
- tag: `#` (or the full-width U+FF03) at the start or after whitespace, then text up to
  whitespace that is not only digits and punctuation; trailing punctuation is left out; at most
  64 characters.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import regex

# ---- record keys ------------------------------------------------------------------------------

TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
TID_LENGTH = 13
_TID_RE = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")
# Derived timestamps fall in [2023-01-01, +2^45 µs ≈ 13 months): valid, plausible, and in the
# past, so a derived key never sorts after the keys the account's other apps make now.
_TID_BASE_US = 1_672_531_200 * 1_000_000
_TID_SPAN_US = 1 << 45
_CLOCK_ID_BITS = 10


def encode_tid(micros: int, clock_id: int) -> str:
    if not 0 <= micros < 1 << 53 or not 0 <= clock_id < 1 << _CLOCK_ID_BITS:
        raise ValueError("a TID holds 53 bits of microseconds and a 10-bit clock id")
    value = (micros << _CLOCK_ID_BITS) | clock_id
    chars = []
    for _ in range(TID_LENGTH):
        chars.append(TID_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def decode_tid(tid: str) -> tuple[int, int]:
    """(microseconds, clock id) of a valid TID."""
    if not is_tid(tid):
        raise ValueError(f"not a TID: {tid!r}")
    value = 0
    for char in tid:
        value = (value << 5) | TID_ALPHABET.index(char)
    return value >> _CLOCK_ID_BITS, value & ((1 << _CLOCK_ID_BITS) - 1)


def is_tid(value: str) -> bool:
    return _TID_RE.match(value) is not None


def tid_for(key: str) -> str:
    """The record key of the job whose platform key is `key`: the same on every attempt."""
    if not key:
        raise ValueError("a record key needs the job's platform key")
    number = int.from_bytes(hashlib.sha256(f"postroom-bluesky-rkey|{key}".encode()).digest()[:8])
    micros = _TID_BASE_US + (number >> _CLOCK_ID_BITS) % _TID_SPAN_US
    return encode_tid(micros, number & ((1 << _CLOCK_ID_BITS) - 1))


# ---- facets -----------------------------------------------------------------------------------

FeatureKind = Literal["mention", "link", "tag"]

_MENTION = re.compile(r"(?:^|(?<=[\s(]))@([a-zA-Z0-9.-]+)(?a:\b)")
_HANDLE = re.compile(
    r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$"
)
MAX_HANDLE_CHARS = 253
_LINK = re.compile(r"(?:^|(?<=[\s(]))(https?://\S+)", re.IGNORECASE)
# Zero-width and joiner characters the official client does not let into a tag.
_INVISIBLE = "\u00ad\u2060\u200a\u200b\u200c\u200d\u20e2"
_TAG = regex.compile(
    rf"(^|\s)[#\uff03]((?!\ufe0f)[^\s{_INVISIBLE}]*[^0-9\s\p{{P}}{_INVISIBLE}]+[^\s{_INVISIBLE}]*)?"
)
_TRAILING_PUNCTUATION = regex.compile(r"\p{P}+$")
MAX_TAG_CHARS = 64  # UTF-16 code units, as the official client counts


@dataclass(frozen=True, slots=True)
class Span:
    """A facet before resolution: `value` is the handle, the URI or the tag."""

    kind: FeatureKind
    byte_start: int
    byte_end: int
    value: str


class _Utf8Offsets:
    """Code-point index -> UTF-8 byte offset in one text."""

    def __init__(self, text: str) -> None:
        self._offsets = [0]
        for char in text:
            self._offsets.append(self._offsets[-1] + len(char.encode()))

    def __getitem__(self, index: int) -> int:
        return self._offsets[index]


def detect_spans(text: str) -> list[Span]:
    """Every mention, link and tag in `text`, by byte offset (mentions still unresolved)."""
    at = _Utf8Offsets(text)
    spans = [*_mentions(text, at), *_links(text, at), *_tags(text, at)]
    return sorted(spans, key=lambda s: s.byte_start)


def _mentions(text: str, at: _Utf8Offsets) -> Iterator[Span]:
    for match in _MENTION.finditer(text):
        handle = match.group(1)
        if len(handle) <= MAX_HANDLE_CHARS and _HANDLE.match(handle):
            yield Span("mention", at[match.start()], at[match.end(1)], handle.lower())


def _links(text: str, at: _Utf8Offsets) -> Iterator[Span]:
    for match in _LINK.finditer(text):
        uri = match.group(1)
        if uri[-1] in ".,;:!?":
            uri = uri[:-1]
        if uri.endswith(")") and "(" not in uri:
            uri = uri[:-1]
        if "://" in uri and uri.split("://", 1)[1]:
            start = match.start(1)
            yield Span("link", at[start], at[start + len(uri)], uri)


def _tags(text: str, at: _Utf8Offsets) -> Iterator[Span]:
    for match in _TAG.finditer(text):
        tag = match.group(2)
        if not tag:
            continue
        tag = _TRAILING_PUNCTUATION.sub("", tag.strip())
        if not tag or len(tag.encode("utf-16-le")) // 2 > MAX_TAG_CHARS:
            continue
        start = match.start() + len(match.group(1))
        yield Span("tag", at[start], at[start + 1 + len(tag)], tag)


def facet(span: Span, value: str | None = None) -> dict[str, object]:
    """The `app.bsky.richtext.facet` of a span; a mention needs its DID as `value`."""
    feature: dict[str, object]
    match span.kind:
        case "mention":
            feature = {"$type": "app.bsky.richtext.facet#mention", "did": value}
        case "link":
            feature = {"$type": "app.bsky.richtext.facet#link", "uri": span.value}
        case "tag":
            feature = {"$type": "app.bsky.richtext.facet#tag", "tag": span.value}
    return {
        "index": {"byteStart": span.byte_start, "byteEnd": span.byte_end},
        "features": [feature],
    }


# ---- images -----------------------------------------------------------------------------------


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a PNG, GIF or JPEG header; None when it cannot tell."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
    elif data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
    elif data[:2] == b"\xff\xd8":
        found = _jpeg_size(data)
        if found is None:
            return None
        width, height = found
    else:
        return None
    return (width, height) if width > 0 and height > 0 else None


# Start-of-frame markers carry the size (not DHT C4, JPG C8, DAC CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None
