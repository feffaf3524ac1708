"""A tiny text-card PNG renderer (zlib + struct, no imaging library), for API adapters' proof
"screenshots": a coloured title bar and a few lines describing the request and the answer.

Glyphs are 3x5 pixels drawn at 2x; lowercase is drawn as uppercase. The full text also goes into
a PNG `tEXt` chunk so tools can read it back exactly.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Literal

Tone = Literal["ok", "error", "info"]
RGB = tuple[int, int, int]

MAX_LINE_CHARS = 100
MAX_LINES = 24
_SCALE = 2
_CELL_W, _CELL_H = 4, 7  # glyph 3x5 plus spacing
_MARGIN = 6
_BACKGROUND: RGB = (250, 250, 247)
_INK: RGB = (34, 34, 34)
_TITLE_INK: RGB = (255, 255, 255)
_TONES: dict[Tone, RGB] = {"ok": (46, 125, 50), "error": (198, 40, 40), "info": (21, 101, 192)}

# Each glyph: five rows, top to bottom, one octal digit per row (4 = left, 2 = middle, 1 = right).
_GLYPHS: dict[str, str] = {
    "A": "25755", "B": "65656", "C": "34443", "D": "65556", "E": "74647", "F": "74644",
    "G": "34553", "H": "55755", "I": "72227", "J": "11152", "K": "55655", "L": "44447",
    "M": "57755", "N": "65555", "O": "25552", "P": "65644", "Q": "25563", "R": "65655",
    "S": "34216", "T": "72222", "U": "55557", "V": "55552", "W": "55775", "X": "55255",
    "Y": "55222", "Z": "71247", "0": "75557", "1": "26227", "2": "61247", "3": "61216",
    "4": "55711", "5": "74616", "6": "34757", "7": "71122", "8": "75757", "9": "75716",
    " ": "00000", ".": "00002", ",": "00024", ":": "02020", ";": "02024", "/": "11244",
    "\\": "44211", "-": "00700", "_": "00007", "=": "07070", "+": "02720", "?": "61202",
    "!": "22202", "(": "12221", ")": "42224", "[": "64446", "]": "31113", "{": "32623",
    "}": "62326", '"': "55000", "'": "22000", "#": "57575", "%": "51245", "@": "75743",
    "<": "12421", ">": "42124", "&": "25253", "*": "05250", "|": "22222", "^": "25000",
    "~": "03600", "$": "36236",
}  # fmt: skip
_UNKNOWN = "77777"


def render_card(title: str, lines: Sequence[str], *, tone: Tone = "info") -> bytes:
    """A PNG of `title` on a coloured bar above `lines` (each cut to MAX_LINE_CHARS)."""
    body = [line[:MAX_LINE_CHARS] for line in lines[:MAX_LINES]]
    title = title[:MAX_LINE_CHARS]
    cols = max([len(title), *map(len, body), 20])
    width = 2 * _MARGIN + cols * _CELL_W * _SCALE
    bar_h = _CELL_H * _SCALE + _MARGIN
    height = bar_h + _MARGIN + max(1, len(body)) * _CELL_H * _SCALE + _MARGIN
    pixels = [bytearray(bytes(_BACKGROUND) * width) for _ in range(height)]
    _fill(pixels, 0, 0, width, bar_h, _TONES[tone])
    _text(pixels, _MARGIN, _MARGIN // 2 + _SCALE, title, _TITLE_INK)
    for i, line in enumerate(body):
        _text(pixels, _MARGIN, bar_h + _MARGIN + i * _CELL_H * _SCALE, line, _INK)
    description = "\n".join([title, *lines])
    return encode_png(width, height, pixels, text={"Description": description})


def encode_png(
    width: int, height: int, rows: Sequence[bytes | bytearray], *, text: dict[str, str]
) -> bytes:
    """An 8-bit RGB PNG from `height` rows of `width * 3` bytes."""
    raw = b"".join(b"\x00" + bytes(row) for row in rows)  # filter type 0 on every row
    chunks = [
        _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
        *(
            _chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace"))
            for key, value in text.items()
        ),
        _chunk(b"IDAT", zlib.compress(raw, 9)),
        _chunk(b"IEND", b""),
    ]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _fill(pixels: list[bytearray], x: int, y: int, w: int, h: int, colour: RGB) -> None:
    run = bytes(colour) * w
    for row in pixels[y : y + h]:
        row[x * 3 : (x + w) * 3] = run


def _text(pixels: list[bytearray], x: int, y: int, text: str, colour: RGB) -> None:
    for i, char in enumerate(text):
        glyph = _GLYPHS.get(char.upper(), _UNKNOWN)
        gx = x + i * _CELL_W * _SCALE
        for row, digit in enumerate(glyph):
            bits = int(digit, 8)
            for col in range(3):
                if bits & (4 >> col):
                    _fill(pixels, gx + col * _SCALE, y + row * _SCALE, _SCALE, _SCALE, colour)
