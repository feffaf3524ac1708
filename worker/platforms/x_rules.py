"""Pure rules of the X adapter: what X's answers mean, which media X takes, and whether a tweet
on the timeline is the post a job made. No I/O; unit-tested with cases from X's documentation.

Error bodies (https://developer.x.com/en/support/x-api/error-troubleshooting): X v2 answers
RFC 7807 problems, `{"title", "detail", "type", "status"}` (`type` is `about:blank` or
`https://api.x.com/2/problems/<name>`), sometimes with `errors: [{"message", "parameters"}]`;
older answers and the rate-limit page use `{"errors": [{"code", "message"}]}`. The OAuth token
endpoint answers `{"error", "error_description"}`.

Matching a tweet to a job (X has no idempotency key, and no hidden field to carry one): X shows
`text` with every URL replaced by a `https://t.co/...` link (bare domains such as example.com
included), `&`, `<`, `>` HTML-escaped, and one more t.co link at the end when media are
attached. So both sides are compared with URLs masked: HTML entities decoded, anything URL-like
replaced by one placeholder up to the next space (so trailing punctuation is masked alike on both
sides, whichever side of the link X put it), whitespace runs collapsed; a tweet with media may
carry one extra placeholder at the end. Two posts that differ only in their URLs therefore look
the same.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from worker.errors import InvalidContent
from worker.media import MediaFile

# X's limits per tweet (https://docs.x.com/x-api/media/quickstart/media-upload-chunked and the
# media upload reference): sizes per category.
MAX_IMAGES = 4
MAX_IMAGE_BYTES = 5 * 2**20
MAX_GIF_BYTES = 15 * 2**20
MAX_VIDEO_BYTES = 512 * 2**20
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
VIDEO_TYPES = frozenset({"video/mp4"})
DUPLICATE_CODE = 187  # v1.1's "Status is a duplicate."
DAILY_HEADERS = ("x-user-limit-24hour-remaining", "x-app-limit-24hour-remaining")
# X's ordinary rate-limit windows are 15 minutes; a reset within one (plus clock skew) is a
# throttle, a later one a quota.
THROTTLE_WINDOW_S = 15 * 60 + 60
URL_MARK = "\u2039url\u203a"
_URL = re.compile(r"https?://\S+|(?<![\w@.])(?:[a-z0-9-]+\.)+[a-z]{2,}\b\S*", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


# ---- error bodies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """What an X error answer said, flattened."""

    type: str
    text: str  # title, detail and every error message, for people and for matching
    codes: tuple[int, ...]


def read_problem(body: Mapping[str, object], fallback: str) -> Problem:
    parts: list[str] = []
    codes: list[int] = []
    for key in ("title", "detail", "error", "error_description"):
        value = body.get(key)
        if isinstance(value, str) and value and value not in parts:
            parts.append(value)
    errors = body.get("errors")
    for error in errors if isinstance(errors, list) else []:
        if not isinstance(error, Mapping):
            continue
        message = error.get("message") or error.get("detail")
        if isinstance(message, str) and message not in parts:
            parts.append(message)
        code = error.get("code")
        if isinstance(code, int) and not isinstance(code, bool):
            codes.append(code)
    kind = body.get("type")
    return Problem(
        type=kind if isinstance(kind, str) else "",
        text=": ".join(parts) if parts else fallback,
        codes=tuple(codes),
    )


def is_quota_cap(headers: Mapping[str, str], wait_s: float) -> bool:
    """A 24-hour allowance spent (`x-user-limit-24hour-remaining: 0`, or the app's), or a wait
    longer than X's 15-minute windows."""
    lowered = {k.lower(): v.strip() for k, v in headers.items()}
    return any(lowered.get(name) == "0" for name in DAILY_HEADERS) or wait_s > THROTTLE_WINDOW_S


def is_duplicate(problem: Problem) -> bool:
    """X's 403 for a text the account posted recently ("You are not allowed to create a Tweet
    with duplicate content."; v1.1: code 187 "Status is a duplicate.")."""
    lowered = problem.text.lower()
    return (
        "duplicate content" in lowered
        or "status is a duplicate" in lowered
        or DUPLICATE_CODE in problem.codes
    )


# ---- media -------------------------------------------------------------------------------------


def media_category(media: MediaFile) -> str:
    if media.content_type == "image/gif":
        return "tweet_gif"
    return "tweet_video" if media.is_video else "tweet_image"


def check_media(files: Sequence[MediaFile]) -> None:
    """Up to 4 images, or one GIF, or one video (X's rule for one tweet); sizes per type."""
    for media in files:
        if media.content_type not in IMAGE_TYPES | VIDEO_TYPES:
            raise InvalidContent(
                f"x: {media.filename} is {media.content_type}; X takes JPEG, PNG, WebP, GIF "
                "images and MP4 video"
            )
        limit = {"tweet_gif": MAX_GIF_BYTES, "tweet_video": MAX_VIDEO_BYTES}.get(
            media_category(media), MAX_IMAGE_BYTES
        )
        if len(media.data) > limit:
            raise InvalidContent(
                f"x: {media.filename} is {len(media.data)} bytes; X takes at most {limit} for "
                f"{media.content_type}"
            )
    alone = [m for m in files if media_category(m) != "tweet_image"]
    if alone and len(files) > 1:
        raise InvalidContent(
            f"x: a tweet takes one GIF or one video on its own; this post has {len(files)} media"
        )
    if len(files) > MAX_IMAGES:
        raise InvalidContent(f"x: a tweet takes at most 4 images; this post has {len(files)}")


# ---- is this the job's tweet? ------------------------------------------------------------------


def canonical(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    return _SPACE.sub(" ", _URL.sub(URL_MARK, text)).strip()


def same_post(job_text: str, has_media: bool, shown: str) -> bool:
    """Whether a tweet whose `text` X shows as `shown` is the post of a job with `job_text`."""
    want = canonical(job_text)
    got = canonical(html.unescape(shown))
    if got == want:
        return True
    # A tweet with media: X adds a t.co link to the media at the end of `text`.
    return has_media and got.endswith(URL_MARK) and got[: -len(URL_MARK)].rstrip() == want
