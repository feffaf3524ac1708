"""Per-platform content rules, checked when a post is created or updated (INVALID_ARGUMENT).

Pure functions, no I/O: `check(text, media, targets, limits)` raises `InvalidArgument` listing
*every* broken rule of every target at once (one line each, `platform:account: what is wrong;
what to do`), so an author fixes the post in one go rather than one refusal at a time.

Text, as each platform counts it:

| platform  | default | counted as                                                              |
|-----------|---------|-------------------------------------------------------------------------|
| x         | 280     | twitter-text v3 weighted length: URLs 23, CJK/emoji 2, NFC-normalised   |
| mastodon  | 500     | graphemes; http(s) URLs 23; `@user@domain` counts `@user` only          |
| bluesky   | 300     | graphemes (and at most 10 x that in UTF-8 bytes: the lexicon's 3,000)   |
| linkedin  | 3,000   | characters                                                              |
| facebook  | 63,206  | characters                                                              |
| instagram | 2,200   | characters; also at most 30 hashtags and 20 @-mentions                  |
| sandbox   | 10,000  | characters (domain.MAX_TEXT_CHARS; the sandbox server itself takes 500) |
| spirit    | 3,000   | characters (a django-spirit forum's comment field, through a browser)   |

Each default can be changed per platform or per account with `--text-limit PLATFORM[:ACCOUNT]=N`
(`TextLimits`; an account's own value wins): Mastodon instances and X Premium accounts allow more.

Media, as the adapters publish them (worker/platforms/): X up to 4 images, or 1 GIF, or 1 video;
Mastodon up to 4, a video only alone; Bluesky up to 4 images; LinkedIn up to 20 images (a
multi-image post); Facebook 1 image; Instagram exactly 1 JPEG image. A reference's type is
judged from its file extension (.png .jpg .jpeg .gif .webp .mp4 .mov, after stripping a URL's
query); one without a known extension passes here, and the worker, which sees the bytes, refuses
it with INVALID_CONTENT if it is not usable. Sizes are the
worker's check too.

Sources: twitter-text conformance/validate.yml (v3); docs.joinmastodon.org/user/posting and
Mastodon's StatusLengthValidator / PostStatusService#validate_media!; the app.bsky.feed.post
lexicon (text maxGraphemes 300, maxLength 3000 bytes); LinkedIn Posts and Images API docs
(commentary 3,000; JPG, GIF, PNG); Graph API Page photos (JPEG, PNG, GIF); Instagram content
publishing (JPEG only; caption 2,200 characters, 30 hashtags, 20 @ tags).
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
import types
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import regex

from coordinator.domain import KNOWN_PLATFORMS, MAX_ANY_TEXT_CHARS, MAX_TEXT_CHARS, Target
from coordinator.errors import InvalidArgument


def _import_twitter_text() -> tuple[Callable[..., Any], Callable[..., list[dict[str, Any]]]]:
    """twitter-text-parser 3.0.0 reads its emoji table with `pkg_resources.resource_string` at
    import, and setuptools >= 81 no longer ships pkg_resources (older ones warn on import). A
    stand-in with just that function is present during the import only, then removed, so anything
    else importing pkg_resources later still gets the real one (or none)."""
    shim: types.ModuleType | None = None
    if "pkg_resources" not in sys.modules:
        shim = types.ModuleType("pkg_resources")

        def resource_string(module_name: str, resource: str) -> bytes:
            origin = getattr(sys.modules[module_name], "__file__", None)
            assert origin is not None, module_name
            return (Path(origin).parent / resource).read_bytes()

        shim.resource_string = resource_string  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    try:
        parse = importlib.import_module("twitter_text.parse_tweet")
        urls = importlib.import_module("twitter_text.extract_urls")
    finally:
        if shim is not None and sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]
    return parse.parse_tweet, urls.extract_urls_with_indices


_parse_tweet, _extract_urls_with_indices = _import_twitter_text()
_TWITTER_TEXT_V3: Mapping[str, Any] = importlib.import_module("twitter_text.config").config[
    "version3"
]

# ---- limits ----------------------------------------------------------------------------------

DEFAULT_TEXT_LIMITS: Mapping[str, int] = types.MappingProxyType(
    {
        "x": 280,
        "mastodon": 500,
        "bluesky": 300,
        "linkedin": 3_000,
        "facebook": 63_206,
        "instagram": 2_200,
        "sandbox": MAX_TEXT_CHARS,
        "spirit": 3_000,
    }
)
URL_CHARS = 23  # X and Mastodon count every link as this many characters
BLUESKY_BYTES_PER_GRAPHEME = 10  # the lexicon's maxLength (bytes) is 10 x maxGraphemes
INSTAGRAM_MAX_HASHTAGS = 30
INSTAGRAM_MAX_MENTIONS = 20


@dataclass(frozen=True, slots=True)
class TextLimits:
    """Text limits set on the command line, keyed `platform` or `platform:account`."""

    overrides: Mapping[str, int] = field(default_factory=dict)

    def for_target(self, target: Target) -> tuple[int, bool]:
        """(limit, whether it was configured rather than the platform's default)."""
        for key in (str(target), target.platform):
            if key in self.overrides:
                return self.overrides[key], True
        return DEFAULT_TEXT_LIMITS.get(target.platform, MAX_TEXT_CHARS), False


def parse_text_limit(spec: str) -> tuple[str, int]:
    """`PLATFORM[:ACCOUNT]=N`, e.g. `mastodon=1000` or `mastodon:big-instance=5000`."""
    key, eq, number = spec.rpartition("=")
    platform, _, account = key.partition(":")
    platform = platform.strip().lower()
    if not eq or not platform or (":" in key and not account.strip()):
        raise ValueError(f"text limit {spec!r}: expected PLATFORM[:ACCOUNT]=N, e.g. mastodon=1000")
    if platform not in KNOWN_PLATFORMS:
        known = ", ".join(sorted(KNOWN_PLATFORMS))
        raise ValueError(f"text limit {spec!r}: unknown platform {platform!r}; use one of {known}")
    try:
        limit = int(number)
    except ValueError:
        raise ValueError(f"text limit {spec!r}: {number!r} is not a whole number") from None
    if not 1 <= limit <= MAX_ANY_TEXT_CHARS:
        raise ValueError(f"text limit {spec!r}: N must be between 1 and {MAX_ANY_TEXT_CHARS}")
    return (f"{platform}:{account.strip()}" if account.strip() else platform), limit


# ---- counting --------------------------------------------------------------------------------

_GRAPHEME = regex.compile(r"\X")
# Mastodon's Account::MENTION_RE: `@user` or `@user@domain`, not inside a word or a URL path.
_MASTODON_MENTION = re.compile(
    r"(?<![=/\w])@([a-z0-9_]+(?:[.-]+[a-z0-9_]+)*)(?:@\w+(?:[.-]+\w+)*)?", re.IGNORECASE
)
_HASHTAG = re.compile(r"(?<![\w&#/])#(\w+)")
_MENTION = re.compile(r"(?<![\w@/])@[\w.]+")
# twitter-text's invalid characters (a tweet containing one is not valid, whatever its length).
_X_INVALID = re.compile("[\ufffe\ufeff\uffff]")


# One post is checked for each of its targets (up to 50), and X's weighted count of a long text
# takes ~0.4 s: each measure is computed once per text, not once per target.
_measure = functools.lru_cache(maxsize=8)


@_measure
def graphemes(text: str) -> int:
    """User-perceived characters (Unicode extended grapheme clusters, UAX #29)."""
    return len(_GRAPHEME.findall(text))


@_measure
def x_weighted_length(text: str) -> int:
    """X's weighted length (twitter-text v3): most scripts 1, CJK and emoji 2, each URL 23."""
    return int(_parse_tweet(text, _TWITTER_TEXT_V3).weightedLength)


@_measure
def mastodon_length(text: str) -> int:
    """Mastodon's count: graphemes after each http(s) URL becomes 23 characters and each
    `@user@domain` mention becomes `@user` (StatusLengthValidator#countable_text)."""
    spans: list[tuple[int, int, str]] = [
        (u["indices"][0], u["indices"][1], "x" * URL_CHARS)
        for u in _extract_urls_with_indices(text, False)
    ]
    spans += [(m.start(), m.end(), "@" + m.group(1)) for m in _MASTODON_MENTION.finditer(text)]
    out: list[str] = []
    position = 0
    for start, end, replacement in sorted(spans):
        if start < position:  # overlaps an entity already rewritten (a mention inside a URL)
            continue
        out += [text[position:start], replacement]
        position = end
    out.append(text[position:])
    return graphemes("".join(out))


@_measure
def hashtags(text: str) -> int:
    return sum(1 for m in _HASHTAG.finditer(text) if not m.group(1).isdigit())


# ---- media -----------------------------------------------------------------------------------

IMAGE_FORMATS: Mapping[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".gif": "GIF",
    ".webp": "WebP",
}
VIDEO_FORMATS: Mapping[str, str] = {".mp4": "MP4", ".mov": "MOV"}
_ALL_IMAGES = frozenset({"PNG", "JPEG", "GIF", "WebP"})
_ALL_VIDEOS = frozenset({"MP4", "MOV"})


def media_format(reference: str) -> tuple[str, str] | None:
    """("image" | "video", format) from the reference's extension; None when it has no known one."""
    path = urlsplit(reference).path if "://" in reference else reference.removeprefix("file:")
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in IMAGE_FORMATS:
        return "image", IMAGE_FORMATS[suffix]
    if suffix in VIDEO_FORMATS:
        return "video", VIDEO_FORMATS[suffix]
    return None


@dataclass(frozen=True, slots=True)
class MediaRule:
    takes: str  # what the platform takes, for messages: "up to 4 images or 1 video"
    max_items: int
    max_videos: int = 0
    mixed: bool = False  # images and a video in one post
    image_formats: frozenset[str] = _ALL_IMAGES
    video_formats: frozenset[str] = _ALL_VIDEOS
    needs_image: bool = False
    alone_formats: frozenset[str] = frozenset()  # formats only taken on their own (X's GIF)


MEDIA_RULES: Mapping[str, MediaRule] = {
    "x": MediaRule(
        "up to 4 images, or 1 GIF, or 1 video",
        max_items=4,
        max_videos=1,
        alone_formats=frozenset({"GIF"}),
    ),
    "mastodon": MediaRule("up to 4 media, a video only on its own", max_items=4, max_videos=1),
    "bluesky": MediaRule("up to 4 images, no video", max_items=4),
    # 2 to 20 images go out as LinkedIn's multi-image post.
    "linkedin": MediaRule(
        "up to 20 images (JPEG, PNG or GIF)",
        max_items=20,
        image_formats=frozenset({"JPEG", "PNG", "GIF"}),
    ),
    "facebook": MediaRule(
        "1 image (JPEG, PNG or GIF)", max_items=1, image_formats=frozenset({"JPEG", "PNG", "GIF"})
    ),
    "instagram": MediaRule(
        "exactly 1 JPEG image", max_items=1, image_formats=frozenset({"JPEG"}), needs_image=True
    ),
}

PLATFORM_NAMES: Mapping[str, str] = {
    "x": "X",
    "mastodon": "Mastodon",
    "bluesky": "Bluesky",
    "linkedin": "LinkedIn",
    "facebook": "Facebook",
    "instagram": "Instagram",
    "sandbox": "the sandbox",
    "spirit": "Spirit",
}


def _media_problems(name: str, rule: MediaRule, media: Sequence[str]) -> list[str]:
    kinds = [(ref, media_format(ref)) for ref in media]
    videos = [ref for ref, k in kinds if k is not None and k[0] == "video"]
    out: list[str] = []
    if rule.needs_image and not media:
        out.append(f"{name} needs an image: add {rule.takes}")
    if len(media) > rule.max_items:
        extra = len(media) - rule.max_items
        out.append(f"{len(media)} media; {name} takes {rule.takes}: remove {extra}")
    if videos and rule.max_videos == 0:
        out.append(f"media {videos[0]!r} is a video; {name} takes {rule.takes}: remove it")
    elif len(videos) > rule.max_videos:
        out.append(f"{len(videos)} videos; {name} takes {rule.takes}: keep one")
    elif videos and len(media) > 1 and not rule.mixed and len(media) <= rule.max_items:
        out.append(f"a video with other media; {name} takes {rule.takes}: post the video alone")
    alone = [ref for ref, k in kinds if k is not None and k[1] in rule.alone_formats]
    if alone and len(media) > 1:
        out.append(f"media {alone[0]!r} goes alone; {name} takes {rule.takes}: post it alone")
    for ref, kind in kinds:
        if kind is None:
            continue
        allowed = rule.image_formats if kind[0] == "image" else rule.video_formats
        if kind[0] == "video" and rule.max_videos == 0:
            continue  # already said: no video at all
        if kind[1] not in allowed:
            formats = ", ".join(sorted(allowed))
            out.append(f"media {ref!r} is {kind[1]}; {name} takes {formats} only: convert it")
    return out


# ---- text ------------------------------------------------------------------------------------


def _shorten(counted: int, limit: int, unit: str, name: str, how: str, configured: bool) -> str:
    allows = f"{name} allows {limit}" + (" (--text-limit)" if configured else "")
    return f"text is {counted} {unit}; {allows}{how}: shorten it by {counted - limit}"


def _text_problems(target: Target, text: str, limit: int, configured: bool) -> list[str]:
    platform = target.platform
    name = PLATFORM_NAMES.get(platform, platform)
    out: list[str] = []
    match platform:
        case "x":
            weighted = x_weighted_length(text)
            if weighted > limit:
                how = " (each URL counts 23; CJK characters and emoji count 2)"
                out.append(_shorten(weighted, limit, "weighted characters", name, how, configured))
            bad = _X_INVALID.search(unicodedata.normalize("NFC", text))
            if bad:
                out.append(f"text contains U+{ord(bad.group()):04X}, which X refuses: remove it")
        case "mastodon":
            counted = mastodon_length(text)
            if counted > limit:
                how = " (each http(s) URL counts 23; a mention counts only its @username)"
                fix = (
                    ""
                    if configured
                    else f", or if the instance allows more, set --text-limit {target}=N"
                )
                out.append(_shorten(counted, limit, "characters", name, how, configured) + fix)
        case "bluesky":
            counted = graphemes(text)
            if counted > limit:
                how = " (graphemes: an emoji sequence counts 1; URLs count in full)"
                out.append(_shorten(counted, limit, "graphemes", name, how, configured))
            max_bytes = BLUESKY_BYTES_PER_GRAPHEME * limit
            size = len(text.encode("utf-8"))
            if size > max_bytes:
                out.append(
                    f"text is {size} bytes in UTF-8; {name} allows {max_bytes} "
                    "(an emoji sequence can take 25 bytes or more): shorten it by "
                    f"{size - max_bytes} bytes"
                )
        case _:
            if len(text) > limit:
                out.append(_shorten(len(text), limit, "characters", name, "", configured))
    if platform == "instagram":
        tags = hashtags(text)
        if tags > INSTAGRAM_MAX_HASHTAGS:
            out.append(
                f"caption has {tags} hashtags; Instagram allows {INSTAGRAM_MAX_HASHTAGS}: "
                f"remove {tags - INSTAGRAM_MAX_HASHTAGS}"
            )
        mentions = len(_MENTION.findall(text))
        if mentions > INSTAGRAM_MAX_MENTIONS:
            out.append(
                f"caption has {mentions} @-mentions; Instagram allows {INSTAGRAM_MAX_MENTIONS}: "
                f"remove {mentions - INSTAGRAM_MAX_MENTIONS}"
            )
    return out


# ---- the check -------------------------------------------------------------------------------


def problems(
    text: str, media: Sequence[str], targets: Sequence[Target], limits: TextLimits
) -> list[str]:
    """Every broken rule, one line each, prefixed with its target, in target order."""
    out: list[str] = []
    for target in targets:
        limit, configured = limits.for_target(target)
        found = _text_problems(target, text, limit, configured)
        rule = MEDIA_RULES.get(target.platform)
        if rule is not None:
            name = PLATFORM_NAMES.get(target.platform, target.platform)
            found += _media_problems(name, rule, media)
        out += [f"{target}: {p}" for p in found]
    return out


def check_detached(
    text: str, media: list[str], targets: list[Target], overrides: dict[str, int]
) -> None:
    """`check` in a worker process: arguments that pickle (a TextLimits may hold a proxy)."""
    check(text, media, targets, TextLimits(overrides))


def check(text: str, media: Sequence[str], targets: Sequence[Target], limits: TextLimits) -> None:
    """Raise InvalidArgument naming every broken rule (all targets at once), or return."""
    found = problems(text, media, targets, limits)
    if len(found) == 1:
        raise InvalidArgument(found[0])
    if found:
        raise InvalidArgument(f"{len(found)} content rules broken:\n" + "\n".join(found))
