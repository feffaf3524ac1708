"""Mastodon: one account on one instance, through Mastodon's REST API.

Contract (https://docs.joinmastodon.org/methods/statuses/, /methods/media/, /methods/accounts/):

    POST /api/v2/media                   multipart `file` -> 200 MediaAttachment, or 202 with
                                         `url: null` while the full-size file is processed
    GET  /api/v1/media/:id               206 while processing, 200 with `url` once processed
    POST /api/v1/statuses                JSON {status, media_ids, visibility?, language?} and
                                         `Idempotency-Key` -> 200 Status {id, url, ...}
    GET  /api/v1/accounts/verify_credentials            -> Account {id}  (login check, verify)
    GET  /api/v1/accounts/:id/statuses?limit=40&exclude_reblogs=true    (verify)
    GET  /api/v1/statuses/:id/source     -> {id, text}: the text as it was sent  (verify)

Auth: `Authorization: Bearer <access_token>`, a user token of an application registered on the
instance with the scopes `read:accounts read:statuses write:statuses write:media`.

Errors, as Mastodon answers them (`{"error": "..."}`): 401 "The access token is invalid" and
403 (suspended or disabled login, scope missing) -> AUTH_REQUIRED; 422 "Validation failed: ..."
(and 400, 413) -> INVALID_CONTENT; 429 -> RATE_LIMITED until `X-RateLimit-Reset` (an ISO 8601
time on Mastodon, epoch seconds on some servers and mocks; `Retry-After` if a proxy sends it);
408 and 5xx -> TRANSIENT. https://docs.joinmastodon.org/api/rate-limits/

Never twice: the job's platform key goes out as `Idempotency-Key` on every create; Mastodon keeps
a key for an hour and answers a repeat with the status it made the first time. `verify` only
reads (see its comment): the account's recent statuses, matched on their source text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar
from urllib.parse import quote

import anyio
import httpx

from worker.accounts import AccountConfig, AccountsError
from worker.adapters import ratelimit
from worker.adapters.base import JobSpec, Prepared, Published
from worker.errors import (
    AdapterError,
    AuthRequired,
    InvalidContent,
    Transient,
)
from worker.media import MediaFile
from worker.platforms.base import PlatformClient, PlatformContext, Transcript, json_of
from worker.platforms.mastodon_text import same_text, same_words, status_length, text_of_html

DEFAULT_MAX_CHARACTERS = 500
DEFAULT_MAX_MEDIA_ATTACHMENTS = 4
# How long an upload may stay "processing" (video can take a while) before the attempt gives up.
DEFAULT_MEDIA_TIMEOUT_S = 120.0
# How far back `verify` looks for a status this job may have made. Wider than the hour Mastodon
# keeps an idempotency key, because a job in doubt can wait out a closed gate or a login first.
DEFAULT_VERIFY_WINDOW_S = 24 * 3600.0
VISIBILITIES = frozenset({"public", "unlisted", "private", "direct"})

_FIRST_POLL_S = 0.25
_MAX_POLL_S = 5.0
_PAGE_LIMIT = 40  # Mastodon's maximum for account statuses
_MAX_VERIFY_PAGES = 3
_MAX_SOURCE_LOOKUPS = 10
_SHOWN_ERROR_CHARS = 200


class MastodonClient(PlatformClient):
    platform: ClassVar[str] = "mastodon"

    def __init__(self, account: AccountConfig, ctx: PlatformContext) -> None:
        super().__init__(account, ctx)
        self._token = account.secret("access_token")
        self.max_characters = _positive(account, "max_characters", DEFAULT_MAX_CHARACTERS)
        self.max_media = _positive(account, "max_media_attachments", DEFAULT_MAX_MEDIA_ATTACHMENTS)
        self.media_timeout_s = float(
            _positive(account, "media_timeout_s", int(DEFAULT_MEDIA_TIMEOUT_S))
        )
        self.verify_window_s = float(
            _positive(account, "verify_window_s", int(DEFAULT_VERIFY_WINDOW_S))
        )
        self.visibility = account.str_option("visibility", "") or None
        if self.visibility is not None and self.visibility not in VISIBILITIES:
            raise AccountsError(
                f"account {account.label}: visibility {self.visibility!r} is not one of "
                f"{', '.join(sorted(VISIBILITIES))}"
            )
        self.language = account.str_option("language", "") or None
        self._account_id: str | None = None

    # ---- publishing ----------------------------------------------------------------------

    async def prepare(self, job: JobSpec, t: Transcript) -> Prepared:
        length = status_length(job.text)
        if length > self.max_characters:
            raise InvalidContent(
                f"mastodon: the text counts {length} characters; this instance allows "
                f"{self.max_characters} (a URL counts 23, a mention without its @domain)"
            )
        if not job.text.strip() and not job.media:
            raise InvalidContent("mastodon: nothing to post (no text, no media)")
        if len(job.media) > self.max_media:
            raise InvalidContent(
                f"mastodon: {len(job.media)} attachments; this instance allows {self.max_media}"
            )
        files = await self.ctx.media.load_all(job.media)
        media_ids = [await self._upload(media, t) for media in files]
        payload: dict[str, object] = {"status": job.text}
        if media_ids:
            payload["media_ids"] = media_ids
        if self.visibility is not None:
            payload["visibility"] = self.visibility
        if self.language is not None:
            payload["language"] = self.language
        return Prepared(
            payload=payload,
            summary=f"POST /api/v1/statuses: {length} characters, media {media_ids or 'none'}",
        )

    async def commit(self, job: JobSpec, prepared: Prepared, t: Transcript) -> Published:
        # The same key on every attempt of this job (the coordinator stores it before the first
        # send); the job id stands in only for a coordinator that sent none.
        headers = {**self._auth(), "Idempotency-Key": job.platform_key or job.job_id}
        request = self.http.build_request(
            "POST", "/api/v1/statuses", json=dict(prepared.payload), headers=headers
        )
        body = json_of(self.check(await self.send(t, request), 200))
        published = _published(body)
        if published is None:
            # A 200 that does not say which status: it may well exist. Transient makes the next
            # attempt look first, and the key covers a repeat within the hour.
            raise Transient("mastodon: HTTP 200 without a status id")
        return published

    async def verify(self, job: JobSpec, t: Transcript) -> Published | None:
        """The status this job made, found by reading only.

        Why not ask by the idempotency key: Mastodon has no call that reads a key. The only way
        to use it is to POST the status again, and that posts when the first attempt never
        arrived (or its key is older than Mastodon's hour). `verify` also serves verify-only
        attempts and duplicate checks, which must never publish. So `verify` reads, and the key
        is the second line of defence: an attempt that found nothing publishes with the same
        key, and Mastodon answers a repeat within the hour with the original status.

        How: the account's statuses of the last `verify_window_s` (newest first, up to three
        pages of 40) with as many attachments as the job, then each one's source text
        (`GET /api/v1/statuses/:id/source`, the text as sent) compared with the job's. The
        HTML `content` is not compared for the decision: it drops a remote mention's domain
        and linkifies, so it serves only to decide which candidates to read first.
        """
        account_id = await self._own_id(t)
        since = self.clock.now() - self.verify_window_s
        candidates = [
            s
            for s in await self._recent_statuses(account_id, since, t)
            if _attachment_count(s) == len(job.media)
        ]
        # Likely matches first (a stable sort keeps newest-first among equals).
        candidates.sort(key=lambda s: not same_words(text_of_html(_str(s, "content")), job.text))
        for status in candidates[:_MAX_SOURCE_LOOKUPS]:
            status_id = _str(status, "id")
            request = self.http.build_request(
                "GET", f"/api/v1/statuses/{quote(status_id, safe='')}/source", headers=self._auth()
            )
            response = await self.send(t, request)
            if response.status_code == 404:  # deleted since the listing
                continue
            source = json_of(self.check(response, 200))
            if same_text(_str(source, "text"), job.text):
                t.note(f"status {status_id} has this job's text")
                return _published(status)
        return None

    async def check_login(self, t: Transcript) -> bool:
        try:
            await self._own_id(t, refresh=True)
        except AuthRequired:
            return False
        return True

    # ---- errors --------------------------------------------------------------------------

    def error_for(self, response: httpx.Response) -> AdapterError:
        status = response.status_code
        body = json_of(response)
        detail = body.get("error")
        if not isinstance(detail, str) or not detail:
            detail = response.reason_phrase or "no error message"
        message = f"mastodon: HTTP {status}: {detail[:_SHOWN_ERROR_CHARS]}"
        if status == 429:
            now = self.clock.now()
            limit = ratelimit.normalise(response.headers, now=now, body=body)
            return ratelimit.rate_limited(message, limit, now=now, http_status=status)
        if status in (401, 403):
            return AuthRequired(message, http_status=status)
        if status == 408 or status >= 500:
            return Transient(message, http_status=status)
        if status == 404:
            # A missing record (media gone before use, a wrong base_url): the next attempt
            # prepares again; an attempt limit ends a wrong configuration.
            return Transient(message, http_status=status)
        # 400, 413 (file too large), 422 "Validation failed: ...": retrying cannot help.
        return InvalidContent(message, http_status=status)

    # ---- pieces --------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token.reveal()}"}

    async def _own_id(self, t: Transcript, *, refresh: bool = False) -> str:
        """The account's id (it never changes for a token; the login check asks again)."""
        if self._account_id is not None and not refresh:
            return self._account_id
        request = self.http.build_request(
            "GET", "/api/v1/accounts/verify_credentials", headers=self._auth()
        )
        body = json_of(self.check(await self.send(t, request), 200))
        account_id = _str(body, "id")
        if not account_id:
            raise Transient("mastodon: verify_credentials answered without an account id")
        self._account_id = account_id
        return account_id

    async def _recent_statuses(
        self, account_id: str, since: float, t: Transcript
    ) -> list[Mapping[str, object]]:
        found: list[Mapping[str, object]] = []
        params: dict[str, str] = {"limit": str(_PAGE_LIMIT), "exclude_reblogs": "true"}
        for _ in range(_MAX_VERIFY_PAGES):
            request = self.http.build_request(
                "GET",
                f"/api/v1/accounts/{quote(account_id, safe='')}/statuses",
                params=params,
                headers=self._auth(),
            )
            page = _statuses(self.check(await self.send(t, request), 200))
            recent = [s for s in page if _created_at(s) >= since]
            found += recent
            if len(recent) < len(page) or len(page) < _PAGE_LIMIT:
                break  # older than the window, or the account has no more
            params["max_id"] = _str(page[-1], "id")
        return found

    async def _upload(self, media: MediaFile, t: Transcript) -> str:
        request = self.http.build_request(
            "POST",
            "/api/v2/media",
            files={"file": (media.filename, media.data, media.content_type)},
            headers=self._auth(),
        )
        request.read()  # a multipart body streams; the transcript records its size
        body = json_of(self.check(await self.send(t, request), 200, 202))
        media_id = _str(body, "id")
        if not media_id:
            raise Transient("mastodon: the media upload answered without an id")
        if not _str(body, "url"):
            await self._await_processed(media_id, t)
        return media_id

    async def _await_processed(self, media_id: str, t: Transcript) -> None:
        """Poll until the full-size file is processed (`url` set), bounded by the client
        clock; Mastodon answers 206 until then."""
        deadline = self.clock.now() + self.media_timeout_s
        delay = _FIRST_POLL_S
        path = f"/api/v1/media/{quote(media_id, safe='')}"
        while True:
            await anyio.sleep(delay)
            request = self.http.build_request("GET", path, headers=self._auth())
            response = self.check(await self.send(t, request), 200, 206)
            if response.status_code == 200 and _str(json_of(response), "url"):
                return
            if self.clock.now() >= deadline:
                raise Transient(
                    f"mastodon: media {media_id} still processing after {self.media_timeout_s:.0f}s"
                )
            delay = min(delay * 2, _MAX_POLL_S)


def _positive(account: AccountConfig, name: str, default: int) -> int:
    value = account.int_option(name, default)
    if value <= 0:
        raise AccountsError(f"account {account.label}: option {name!r} must be positive")
    return value


def _str(body: Mapping[str, object], key: str) -> str:
    value = body.get(key)
    return value if isinstance(value, str) else ""


def _published(status: Mapping[str, object]) -> Published | None:
    status_id = _str(status, "id")
    return Published(post_id=status_id, url=_str(status, "url")) if status_id else None


def _statuses(response: httpx.Response) -> list[Mapping[str, object]]:
    try:
        data = response.json()
    except ValueError:
        raise Transient("mastodon: the account's statuses were not JSON") from None
    items: Sequence[object] = data if isinstance(data, list) else []
    return [s for s in items if isinstance(s, dict) and _str(s, "id")]


def _attachment_count(status: Mapping[str, object]) -> int:
    media = status.get("media_attachments")
    return len(media) if isinstance(media, list) else 0


def _created_at(status: Mapping[str, object]) -> float:
    when = ratelimit.parse_iso(_str(status, "created_at"))
    return when if when is not None else 0.0
