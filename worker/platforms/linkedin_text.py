"""LinkedIn's "little" text format, which the Posts API's `commentary` field is written in.

https://learn.microsoft.com/en-us/linkedin/marketing/community-management/shares/little-text-format

little has three elements: plain text, mentions `@[Name](urn:li:person:…)`, and hashtags (the
template `{hashtag|\\#|word}`). The characters `\\ | { } @ [ ] ( ) < > # * _ ~` are reserved: "all
reserved characters need to be escaped with a backslash, even if those characters are not used in
one of the supported elements or templates". LinkedIn does not refuse an unescaped one: it cuts
the post at it and reports success, so a post "Our results (Q3)" would go out as "Our results ".

`to_little` writes a person's plain text so it reads on LinkedIn exactly as written: every
reserved character escaped, and a `#word` turned into the hashtag template so it stays a hashtag.
`to_plain` reads little back into the text a reader sees (for matching a post when reconciling).
`to_plain(to_little(s)) == s` for every string.
"""

from __future__ import annotations

import re

RESERVED = frozenset("\\|{}@[]()<>#*_~")
# A hashtag: '#' not glued to a word before it, then letters/digits only (so no reserved '_'
# inside the template), not glued to a word after it, with at least one letter ("#1" is text).
_HASHTAG = re.compile(r"(?<!\w)#([^\W_]+)(?!\w)")
_HASHTAG_TEMPLATE = re.compile(r"\{hashtag\|\\#\|([^{}|]*)\}")
_MENTION = re.compile(r"@\[((?:\\.|[^\]\\])*)\]\((urn:li:[^()]*)\)")


def escape(text: str) -> str:
    """Every reserved character backslash-escaped: `a (b)` -> `a \\(b\\)`."""
    return "".join(f"\\{ch}" if ch in RESERVED else ch for ch in text)


def to_little(text: str) -> str:
    """Plain text -> little: reserved characters escaped, `#word` as a hashtag template."""
    out: list[str] = []
    last = 0
    for match in _HASHTAG.finditer(text):
        word = match.group(1)
        if not any(ch.isalpha() for ch in word):
            continue
        out.append(escape(text[last : match.start()]))
        out.append(f"{{hashtag|\\#|{word}}}")
        last = match.end()
    out.append(escape(text[last:]))
    return "".join(out)


def to_plain(little: str) -> str:
    """little -> the text a reader sees: escapes undone, hashtag templates as `#word`, mentions
    as the mentioned name."""
    out: list[str] = []
    i = 0
    while i < len(little):
        ch = little[i]
        if ch == "\\" and i + 1 < len(little):
            out.append(little[i + 1])
            i += 2
            continue
        if ch == "{" and (m := _HASHTAG_TEMPLATE.match(little, i)):
            out.append(f"#{m.group(1)}")
            i = m.end()
            continue
        if ch == "@" and (m := _MENTION.match(little, i)):
            out.append(to_plain(m.group(1)))
            i = m.end()
            continue
        out.append(ch)
        i += 1
    return "".join(out)
