"""Everything the X stand-in remembers: accounts and the OAuth 2.0 tokens it issued, every tweet,
media uploads, rate-limit windows and pending faults. Only the app's handlers mutate it, each
without an `await` between reading and writing, so no lock is needed on the event loop.

How X shows a tweet's `text` is modelled because reconciliation depends on it: URLs are replaced
by `https://t.co/...` links, `&`, `<` and `>` are HTML-escaped, and a tweet with media gets one
more t.co link (to the media) at the end.
"""

from __future__ import annotations

import hashlib
import html
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox.standins.x_faults import FaultQueue, Op, Window

Clock = Callable[[], float]

MAX_WEIGHTED_LENGTH = 280
URL_WEIGHT = 23
DEFAULT_TOKEN_TTL_S = 7200.0  # X's OAuth 2.0 access tokens live two hours
DUPLICATE_WINDOW_S = 12 * 3600.0  # X refuses the same text from the same user "recently"
RATE_WINDOW_S = 15 * 60
DAY_S = 24 * 3600
# Per-user limits per 15 minutes (X API v2 documentation, paid tiers) and the 24-hour caps.
RATE_LIMITS = {Op.CREATE: 100, Op.TIMELINE: 900, Op.ME: 75, Op.MEDIA: 500}
DEFAULT_USER_TWEETS_PER_DAY = 100
DEFAULT_APP_TWEETS_PER_DAY = 10_000
MEDIA_PROCESSING_S = 1.0  # how long video/GIF processing takes after FINALIZE
MEDIA_LIMITS = {"tweet_image": 5 * 2**20, "tweet_gif": 15 * 2**20, "tweet_video": 512 * 2**20}
_TWEPOCH_MS = 1288834974657
_URL = re.compile(
    r"https?://[^\s]+|(?<![\w@.])(?:[a-z0-9-]+\.)+(?:com|org|net|io|dev|app|co|me|ly|info|ai)"
    r"\b(?:/[^\s]*)?",
    re.IGNORECASE,
)
_URL_TRAILING = ".,;:!?)]}'\""


def rfc3339(unix_s: float) -> str:
    return (
        datetime.fromtimestamp(unix_s, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def weighted_length(text: str) -> int:
    """twitter-text v3's count: URLs 23, code points outside the Latin-ish ranges 2."""
    text = unicodedata.normalize("NFC", text)
    total = 0
    for match in _urls(text):
        total += URL_WEIGHT
        text = text.replace(match, "", 1)
    for char in text:
        cp = ord(char)
        light = cp <= 4351 or 8192 <= cp <= 8205 or 8208 <= cp <= 8223 or 8242 <= cp <= 8247
        total += 1 if light else 2
    return total


def _urls(text: str) -> list[str]:
    return [m.group(0).rstrip(_URL_TRAILING) for m in _URL.finditer(text)]


def _tco(seed: str) -> str:
    return "https://t.co/" + hashlib.sha256(seed.encode()).hexdigest()[:10]


def display_text(text: str, *, tweet_id: str, has_media: bool) -> str:
    """The `text` X returns for a tweet created with `text`."""
    parts: list[str] = []
    rest = text
    for n, url in enumerate(_urls(text)):
        before, _, rest = rest.partition(url)
        parts += [html.escape(before, quote=False), _tco(f"{tweet_id}:{n}:{url}")]
    parts.append(html.escape(rest, quote=False))
    shown = "".join(parts)
    if has_media:
        shown = f"{shown} {_tco(f'{tweet_id}:media')}".lstrip()
    return shown


@dataclass
class Account:
    username: str
    user_id: str
    client_id: str
    client_secret: str | None
    access_token: str
    refresh_token: str
    access_expires_at: float | None  # None: never (until a refresh sets a lifetime)
    token_ttl_s: float = DEFAULT_TOKEN_TTL_S
    tweets_per_day: int = DEFAULT_USER_TWEETS_PER_DAY
    requests_per_window: int | None = None  # overrides RATE_LIMITS for every endpoint
    issued: list[str] = field(default_factory=list)  # every token a refresh handed out

    def public_json(self) -> dict[str, Any]:
        return {"id": self.user_id, "name": self.username.title(), "username": self.username}


@dataclass(frozen=True)
class Tweet:
    id: str
    author_id: str
    username: str
    text: str  # as sent
    shown: str  # as X shows it
    created_at: float
    media_ids: tuple[str, ...]

    def admin_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "author_id": self.author_id,
            "username": self.username,
            "text": self.text,
            "shown_text": self.shown,
            "media_ids": list(self.media_ids),
            "created_at": rfc3339(self.created_at),
        }


@dataclass
class Upload:
    id: str
    username: str
    media_type: str
    category: str
    total_bytes: int
    segments: dict[int, int] = field(default_factory=dict)  # segment_index -> bytes
    finalized_at: float | None = None
    processing_s: float = 0.0
    failed: bool = False

    @property
    def media_key(self) -> str:
        return f"{7 if self.category == 'tweet_video' else 3}_{self.id}"

    def state(self, now: float) -> str | None:
        """processing_info.state, or None when there is nothing to process."""
        if self.finalized_at is None or self.processing_s <= 0:
            return None
        if self.failed:
            return "failed"
        return "succeeded" if now >= self.finalized_at + self.processing_s else "in_progress"

    def usable(self, now: float) -> bool:
        return self.finalized_at is not None and self.state(now) in (None, "succeeded")


class XState:
    def __init__(self, *, clock: Clock) -> None:
        self.clock = clock
        self.faults = FaultQueue()
        self.accounts: dict[str, Account] = {}
        self.tweets: list[Tweet] = []
        self.uploads: dict[str, Upload] = {}
        self.requests: dict[str, int] = {}
        self.by_user: dict[str, dict[str, int]] = {}
        # Every fault answer sent: kind, username, status and headers (tests read the resets).
        self.fired: list[dict[str, Any]] = []
        self._windows: dict[tuple[str, str], tuple[int, int]] = {}  # -> (window start, used)
        self._seq = 0

    # ---- ids and tokens --------------------------------------------------------------------

    def new_id(self) -> str:
        """A snowflake like X's: milliseconds since X's epoch, then a sequence number."""
        self._seq += 1
        millis = max(0, int(self.clock() * 1000) - _TWEPOCH_MS)
        return str((millis << 22) | (self._seq & 0x3FFFFF))

    def add_account(self, account: Account) -> None:
        self.accounts[account.username] = account

    def bearer(self, token: str) -> Account | None:
        """The account whose live access token this is (None: unknown, revoked or expired)."""
        now = self.clock()
        for account in self.accounts.values():
            if token and secrets.compare_digest(account.access_token, token):
                expired = account.access_expires_at is not None and now >= account.access_expires_at
                return None if expired else account
        return None

    def refresh(self, account: Account) -> dict[str, Any]:
        """Issue new tokens; X rotates the refresh token, so the old one stops working."""
        account.access_token = f"x-at-{secrets.token_urlsafe(18)}"
        account.refresh_token = f"x-rt-{secrets.token_urlsafe(18)}"
        account.access_expires_at = self.clock() + account.token_ttl_s
        account.issued += [account.access_token, account.refresh_token]
        self.count("token_refresh", account.username)
        return {
            "token_type": "bearer",
            "expires_in": int(account.token_ttl_s),
            "access_token": account.access_token,
            "scope": "tweet.read tweet.write users.read media.write offline.access",
            "refresh_token": account.refresh_token,
        }

    def count(self, name: str, username: str | None = None) -> None:
        self.requests[name] = self.requests.get(name, 0) + 1
        if username is not None:
            mine = self.by_user.setdefault(username, {})
            mine[name] = mine.get(name, 0) + 1

    # ---- rate limits -----------------------------------------------------------------------

    def _window(self, key: tuple[str, str], limit: int, length_s: int, *, use: bool) -> Window:
        now = int(self.clock())
        start, used = self._windows.get(key, (now, 0))
        if now >= start + length_s:
            start, used = now, 0
        if use:
            used += 1
            self._windows[key] = (start, used)
        return Window(limit, limit - used, start + length_s)

    def rate(self, account: Account, op: Op, *, use: bool = True) -> Window:
        limit = account.requests_per_window or RATE_LIMITS[op]
        return self._window((account.username, op.value), limit, RATE_WINDOW_S, use=use)

    def user_day(self, account: Account, *, use: bool = False) -> Window:
        key = (account.username, "day")
        return self._window(key, account.tweets_per_day, DAY_S, use=use)

    def app_day(self, *, use: bool = False) -> Window:
        return self._window(("", "app-day"), DEFAULT_APP_TWEETS_PER_DAY, DAY_S, use=use)

    # ---- tweets ----------------------------------------------------------------------------

    def duplicate_of(self, account: Account, text: str) -> Tweet | None:
        since = self.clock() - DUPLICATE_WINDOW_S
        for tweet in reversed(self.tweets):
            if tweet.created_at < since:
                break
            if tweet.author_id == account.user_id and text and tweet.text == text:
                return tweet
        return None

    def record(self, account: Account, text: str, media_ids: Iterable[str]) -> Tweet:
        tweet_id = self.new_id()
        media = tuple(media_ids)
        tweet = Tweet(
            id=tweet_id,
            author_id=account.user_id,
            username=account.username,
            text=text,
            shown=display_text(text, tweet_id=tweet_id, has_media=bool(media)),
            created_at=self.clock(),
            media_ids=media,
        )
        self.tweets.append(tweet)
        return tweet

    def timeline(self, user_id: str) -> list[Tweet]:
        """The user's tweets, newest first."""
        return [t for t in reversed(self.tweets) if t.author_id == user_id]

    def user_by_id(self, user_id: str) -> Account | None:
        return next((a for a in self.accounts.values() if a.user_id == user_id), None)

    # ---- media -----------------------------------------------------------------------------

    def new_upload(self, account: Account, media_type: str, category: str, total: int) -> Upload:
        upload = Upload(self.new_id(), account.username, media_type, category, total)
        self.uploads[upload.id] = upload
        return upload

    def finalize(self, upload: Upload, *, failed: bool) -> None:
        upload.finalized_at = self.clock()
        # Images are ready at once; video and GIFs are processed asynchronously.
        if failed or upload.category in ("tweet_video", "tweet_gif", "amplify_video"):
            upload.processing_s = MEDIA_PROCESSING_S
        upload.failed = failed
