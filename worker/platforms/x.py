"""X (Twitter) API v2 client: an OAuth 2.0 user-context token with refresh, chunked media upload,
`POST /2/tweets`, and reconciliation by the account's timeline.

Contract (https://docs.x.com/x-api; OpenAPI: xdevplatform/xdk `specs/openapi.json`):
    POST /2/oauth2/token              grant_type=refresh_token, refresh_token, client_id (+ HTTP
                                      Basic client_id:client_secret for confidential clients)
                                      -> access_token, refresh_token (rotated: each works once),
                                      expires_in
    POST /2/media/upload/initialize   {media_type, total_bytes, media_category} -> data.id
    POST /2/media/upload/{id}/append  multipart: media, segment_index
    POST /2/media/upload/{id}/finalize -> data.processing_info {state, check_after_secs}
    GET  /2/media/upload?command=STATUS&media_id=   until state is succeeded (or failed)
    POST /2/tweets                    {text, media: {media_ids}} -> 201 {data: {id, text}}
    GET  /2/users/me                  -> data.id
    GET  /2/users/{id}/tweets         max_results, start_time, tweet.fields -> data[] {id, text}

X takes no idempotency key and has no hidden field to carry one, so `verify` looks for the job's
text among the account's tweets of the last `verify_window_s` (see x_rules.same_post for how
t.co links are handled). X itself refuses a repeat of a recent text with 403 "duplicate
content" (Duplicate here: the runtime then verifies), so a retry can never post twice.

Errors (`error_for`): 429 -> RateLimited until `x-rate-limit-reset` (a throttle), or until the
24-hour reset when `x-user-limit-24hour-remaining` / `x-app-limit-24hour-remaining` is 0 (a
quota cap; the latest instant wins);
401 -> one refresh, then AuthRequired; 403 duplicate content -> Duplicate; any other 403 ->
AuthRequired: X documents 403 as "access is not allowed" (an app without write access, a token
without the `tweet.write`/`media.write` scopes, a locked account: "You are not permitted to
perform this action."), which the account owner fixes, not the post's author; other 4xx ->
InvalidContent; 408 and 5xx -> Transient.

Account options: verify_window_s (43200), verify_pages (3), media_chunk_bytes (4 MiB),
media_processing_timeout_s (300).
"""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime
from typing import Any, ClassVar

import anyio
import httpx

from postroom.clock import sleep_for
from worker.accounts import AccountConfig, AccountsError
from worker.adapters import ratelimit
from worker.adapters.base import JobSpec, Prepared, Published
from worker.errors import (
    AdapterError,
    AuthRequired,
    Duplicate,
    InvalidContent,
    Transient,
)
from worker.media import MediaFile
from worker.platforms.base import PlatformClient, PlatformContext, Transcript, json_of
from worker.platforms.x_rules import (
    check_media,
    is_duplicate,
    is_quota_cap,
    media_category,
    read_problem,
    same_post,
)

TOKEN_PATH = "/2/oauth2/token"
STATUS_URL = "https://x.com/i/web/status/{}"
DEFAULT_VERIFY_WINDOW_S = 12 * 3600  # X's duplicate window is reported as up to ~12 hours
DEFAULT_VERIFY_PAGES = 3  # of 100 tweets each
DEFAULT_MEDIA_CHUNK_BYTES = 4 * 2**20  # X takes segments of up to 5 MB
MAX_MEDIA_CHUNK_BYTES = 5 * 2**20
DEFAULT_PROCESSING_TIMEOUT_S = 300
DEFAULT_CHECK_AFTER_S = 1.0
# Refresh this long before a known expiry rather than spend a request on a certain 401.
REFRESH_MARGIN_S = 60.0
_PROCESSING = frozenset({"pending", "in_progress"})


class XClient(PlatformClient):
    platform: ClassVar[str] = "x"

    def __init__(self, account: AccountConfig, ctx: PlatformContext) -> None:
        super().__init__(account, ctx)
        self._access = account.secret("access_token")
        self._refresh = account.secret("refresh_token")
        self._client_id = account.secret("client_id")
        self._client_secret = account.optional_secret("client_secret")
        self._verify_window_s = account.int_option("verify_window_s", DEFAULT_VERIFY_WINDOW_S)
        self._verify_pages = account.int_option("verify_pages", DEFAULT_VERIFY_PAGES)
        self._chunk_bytes = account.int_option("media_chunk_bytes", DEFAULT_MEDIA_CHUNK_BYTES)
        self._processing_timeout_s = account.int_option(
            "media_processing_timeout_s", DEFAULT_PROCESSING_TIMEOUT_S
        )
        if not 1 <= self._chunk_bytes <= MAX_MEDIA_CHUNK_BYTES:
            raise AccountsError(
                f"account {account.label}: media_chunk_bytes must be 1..{MAX_MEDIA_CHUNK_BYTES}"
            )
        if self._verify_window_s <= 0 or self._verify_pages <= 0:
            raise AccountsError(
                f"account {account.label}: verify_window_s and verify_pages must be positive"
            )
        self._expires_at: float | None = None  # known once we have refreshed
        self._user_id: str | None = None
        # One refresh at a time: X rotates refresh tokens, so two racing refreshes would spend
        # the same token twice and the loser would lock the account out.
        self._refresh_lock = anyio.Lock()

    # ---- the job ---------------------------------------------------------------------------

    async def prepare(self, job: JobSpec, t: Transcript) -> Prepared:
        files = await self.ctx.media.load_all(job.media)
        check_media(files)
        payload: dict[str, Any] = {"text": job.text}
        media_ids = [await self._upload(t, media) for media in files]
        if media_ids:
            payload["media"] = {"media_ids": media_ids}
        summary = f"{len(job.text)} characters" + (
            f", {len(media_ids)} media uploaded ({', '.join(media_ids)})" if media_ids else ""
        )
        return Prepared(payload=payload, summary=summary)

    async def commit(self, job: JobSpec, prepared: Prepared, t: Transcript) -> Published:
        response = self.check(await self._call(t, "POST", "/2/tweets", json=prepared.payload))
        data = json_of(response).get("data")
        tweet_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(tweet_id, str) or not tweet_id:
            # It may exist: Transient makes the next attempt look on the timeline first.
            raise Transient(f"x: HTTP {response.status_code} without a tweet id")
        return Published(tweet_id, STATUS_URL.format(tweet_id))

    async def verify(self, job: JobSpec, t: Transcript) -> Published | None:
        user_id = await self._me(t)
        since = datetime.fromtimestamp(self.clock.now() - self._verify_window_s, UTC)
        params: dict[str, str] = {
            "max_results": "100",
            "start_time": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "exclude": "retweets,replies",
            "tweet.fields": "created_at,text,note_tweet",
        }
        for _ in range(self._verify_pages):
            response = self.check(
                await self._call(t, "GET", f"/2/users/{user_id}/tweets", params=params), 200
            )
            body = json_of(response)
            tweets = body.get("data")
            for tweet in tweets if isinstance(tweets, list) else []:
                if isinstance(tweet, dict) and _matches(job, tweet):
                    tweet_id = str(tweet.get("id"))
                    t.note(f"found tweet {tweet_id} with this post's text")
                    return Published(tweet_id, STATUS_URL.format(tweet_id))
            meta = body.get("meta")
            next_token = meta.get("next_token") if isinstance(meta, dict) else None
            if not isinstance(next_token, str) or not next_token:
                break
            params["pagination_token"] = next_token
        t.note(f"no tweet with this post's text in the last {self._verify_window_s}s")
        return None

    async def check_login(self, t: Transcript) -> bool:
        try:
            self._user_id = None
            await self._me(t)
        except AuthRequired:
            return False
        return True

    # ---- errors ----------------------------------------------------------------------------

    def error_for(self, response: httpx.Response) -> AdapterError:
        status = response.status_code
        problem = read_problem(json_of(response), response.reason_phrase)
        message = f"x: HTTP {status}: {problem.text}"
        if status == 429:
            now = self.clock.now()
            limit = ratelimit.normalise(response.headers, now=now)
            # X decides itself: its 15-minute windows are throttles, its 24-hour caps quotas.
            quota_cap = is_quota_cap(response.headers, limit.wait_s(now))
            limit = dataclasses.replace(limit, quota_cap=quota_cap)
            return ratelimit.rate_limited(message, limit, now=now, http_status=status)
        if status == 401:
            return AuthRequired(
                f"{message}; the token was refused even after a refresh: authorise postroom "
                "for this account again",
                http_status=status,
            )
        if status == 403:
            if is_duplicate(problem):
                return Duplicate(message, http_status=status)
            return AuthRequired(
                f"{message}; X refuses this account's token the action (check the app has "
                "read and write access and the token the tweet.write, media.write scopes)",
                http_status=status,
            )
        if status == 408 or status >= 500:
            return Transient(message, http_status=status)
        return InvalidContent(message, http_status=status)

    # ---- requests with the user's token, refreshed when X says it expired -------------------

    async def _call(self, t: Transcript, method: str, path: str, **kwargs: Any) -> httpx.Response:
        token = self._access.reveal()
        if self._expires_at is not None and self.clock.now() >= self._expires_at - REFRESH_MARGIN_S:
            token = await self._fresh_token(t, stale=token)
        response = await self.send(t, self._request(method, path, token, **kwargs))
        if response.status_code == 401:  # nothing was done: safe to send again, once
            token = await self._fresh_token(t, stale=token)
            response = await self.send(t, self._request(method, path, token, **kwargs))
        return response

    def _request(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Request:
        request = self.http.build_request(
            method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs
        )
        request.read()  # multipart bodies are streams; the transcript wants their size
        return request

    async def _fresh_token(self, t: Transcript, *, stale: str) -> str:
        async with self._refresh_lock:
            current = self._access.reveal()
            if current != stale:  # another job refreshed while this one waited
                return current
            form = {
                "grant_type": "refresh_token",
                "refresh_token": self._refresh.reveal(),
                "client_id": self._client_id.reveal(),
            }
            headers = {}
            if self._client_secret is not None:
                pair = f"{self._client_id.reveal()}:{self._client_secret.reveal()}"
                headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
            request = self.http.build_request("POST", TOKEN_PATH, data=form, headers=headers)
            response = await self.send(t, request, sensitive=True)
            if response.status_code in (408, 429) or response.status_code >= 500:
                raise self.error_for(response)
            body = json_of(response)
            access, refresh = body.get("access_token"), body.get("refresh_token")
            if response.status_code != 200 or not isinstance(access, str) or not access:
                problem = read_problem(body, response.reason_phrase)
                raise AuthRequired(
                    f"x: refreshing the OAuth 2.0 token was refused (HTTP "
                    f"{response.status_code}: {problem.text}); authorise postroom for this "
                    "account again and store the new access and refresh tokens",
                    http_status=response.status_code,
                )
            # The refresh token first: X has retired the old one, losing the new one would
            # lock the account out until someone authorises again.
            saved = False
            if isinstance(refresh, str) and refresh:
                self.ctx.redactor.add(refresh)
                saved = self._refresh.rotate(refresh)
            self.ctx.redactor.add(access)
            self._access.rotate(access)
            expires_in = body.get("expires_in")
            if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
                self._expires_at = self.clock.now() + float(expires_in)
            t.note(
                f"refreshed the access token (valid {expires_in}s); refresh token rotated"
                + (f", written to {self._refresh.source}" if saved else "")
            )
            return access

    async def _me(self, t: Transcript) -> str:
        if self._user_id is None:
            response = self.check(await self._call(t, "GET", "/2/users/me"), 200)
            data = json_of(response).get("data")
            user_id = data.get("id") if isinstance(data, dict) else None
            if not isinstance(user_id, str) or not user_id:
                raise Transient("x: /2/users/me answered without a user id")
            self._user_id = user_id
        return self._user_id

    # ---- media -----------------------------------------------------------------------------

    async def _upload(self, t: Transcript, media: MediaFile) -> str:
        init = {
            "media_type": media.content_type,
            "total_bytes": len(media.data),
            "media_category": media_category(media),
        }
        response = await self._call(t, "POST", "/2/media/upload/initialize", json=init)
        data = json_of(self.check(response, 200)).get("data")
        media_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(media_id, str) or not media_id:
            raise Transient(f"x: media initialize answered without an id for {media.filename}")
        for index, start in enumerate(range(0, len(media.data), self._chunk_bytes)):
            chunk = media.data[start : start + self._chunk_bytes]
            response = await self._call(
                t,
                "POST",
                f"/2/media/upload/{media_id}/append",
                data={"segment_index": str(index)},
                files={"media": (media.filename, chunk, "application/octet-stream")},
            )
            self.check(response, 200, 204)
        response = await self._call(t, "POST", f"/2/media/upload/{media_id}/finalize")
        data = json_of(self.check(response, 200)).get("data")
        await self._processed(t, media, media_id, data if isinstance(data, dict) else {})
        return media_id

    async def _processed(
        self, t: Transcript, media: MediaFile, media_id: str, data: dict[str, Any]
    ) -> None:
        """Wait while X processes the upload (video, GIF), polling when it says to."""
        deadline = self.clock.now() + self._processing_timeout_s
        while True:
            info = data.get("processing_info")
            if not isinstance(info, dict):  # nothing to process (images): ready now
                return
            state = info.get("state")
            if state == "failed":
                raise InvalidContent(f"x: X could not process {media.filename} ({info})")
            if state not in _PROCESSING:
                return
            wait = info.get("check_after_secs", DEFAULT_CHECK_AFTER_S)
            wait_s = float(wait) if isinstance(wait, int | float) else DEFAULT_CHECK_AFTER_S
            if self.clock.now() + wait_s > deadline:
                raise Transient(
                    f"x: {media.filename} still processing after {self._processing_timeout_s}s"
                )
            await sleep_for(self.clock, max(wait_s, DEFAULT_CHECK_AFTER_S))
            params = {"command": "STATUS", "media_id": media_id}
            response = await self._call(t, "GET", "/2/media/upload", params=params)
            body = json_of(self.check(response, 200)).get("data")
            data = body if isinstance(body, dict) else {}


def _matches(job: JobSpec, tweet: dict[str, Any]) -> bool:
    texts = [tweet.get("text")]
    note = tweet.get("note_tweet")
    if isinstance(note, dict):  # a long post: `text` is cut short, the whole is here
        texts.insert(0, note.get("text"))
    return any(isinstance(s, str) and same_post(job.text, bool(job.media), s) for s in texts)
