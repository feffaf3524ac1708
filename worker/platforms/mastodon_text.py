"""Mastodon's text rules, pure: how long a status counts, and the text inside a status's HTML.

Length is counted the way Mastodon's `StatusLengthValidator` counts it
(https://docs.joinmastodon.org/user/posting/#text, app/validators/status_length_validator.rb):
grapheme clusters, where every URL counts as 23 characters however long it is, and a mention of
a remote account counts only its `@username` part (the `@domain` is free). The limit itself is
per instance (`configuration.statuses.max_characters` of `GET /api/v2/instance`, 500 by default).

The URL and mention patterns are simplified from Mastodon's extractor (twitter-text's URL rules,
`Account::MENTION_RE`): a URL needs its `http(s)://` scheme, as Mastodon requires for the
concession; trailing sentence punctuation is not part of a URL.
"""

from __future__ import annotations

import html
from html.parser import HTMLParser

import regex

URL_CHARS = 23
_URL = regex.compile(r"(?<![\w/@])https?://[^\s<>\"]+", regex.IGNORECASE)
_URL_TRAILING = ".,:;!?'\")]}"
_MENTION = regex.compile(
    r"(?<![=/\w])@([a-z0-9_]+(?:[a-z0-9_.-]+[a-z0-9_])?)(?:@[\w.-]+\w)?", regex.IGNORECASE
)
_GRAPHEME = regex.compile(r"\X")


def status_length(text: str) -> int:
    """How many characters Mastodon counts for `text`."""

    def url(match: regex.Match[str]) -> str:
        found = match.group(0)
        kept = found.rstrip(_URL_TRAILING)
        return "x" * URL_CHARS + found[len(kept) :]

    countable = _URL.sub(url, text)
    countable = _MENTION.sub(lambda m: "@" + m.group(1), countable)
    return len(_GRAPHEME.findall(countable))


class _TextOf(HTMLParser):
    """The visible text of a status's `content`: paragraphs become blank lines, `<br>` a line
    break. Mastodon hides parts of long URLs in `<span class="invisible">`; those are text too,
    so a URL comes back whole."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.parts.append("\n")
        elif tag == "p" and self.parts:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def text_of_html(content: str) -> str:
    parser = _TextOf()
    parser.feed(content)
    parser.close()
    return html.unescape("".join(parser.parts))


def same_words(a: str, b: str) -> bool:
    """Equal up to whitespace: the cheap first look, before the exact comparison."""
    return a.split() == b.split()


def same_text(source: str, text: str) -> bool:
    """A status's source text against the job's text: exact, but for line endings and the
    surrounding whitespace Mastodon does not keep."""
    return _canonical(source) == _canonical(text)


def _canonical(text: str) -> str:
    return text.replace("\r\n", "\n").strip()
