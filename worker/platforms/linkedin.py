"""LinkedIn: member or organization posts through the versioned Posts and Images APIs.

Contract (https://learn.microsoft.com/en-us/linkedin/marketing/community-management/shares/):
every call sends `LinkedIn-Version: YYYYMM`, `X-Restli-Protocol-Version: 2.0.0` and a bearer
token.

    POST /rest/images?action=initializeUpload  {initializeUploadRequest: {owner}}
                                               -> {value: {uploadUrl, image: urn:li:image:…}}
    PUT  {uploadUrl}                           the image bytes (bearer only)
    GET  /rest/images/{urn}                    until status AVAILABLE (PROCESSING_FAILED: refused)
    POST /rest/posts                           {author, commentary, visibility, distribution,
                                               lifecycleState, content?} -> 201, the new post's
                                               URN in the `x-restli-id` header
    GET  /rest/posts?author=…&q=author&…       the author's recent posts (reconcile)
    GET  /rest/posts/{urn}                     one post (the one a duplicate answer named)
    POST {oauth_url}                           grant_type=refresh_token: a new access token

Commentary is LinkedIn's "little" text format (worker/platforms/linkedin_text.py). Never twice:
LinkedIn takes no idempotency key and no hidden marker, so a job in doubt is reconciled by the
author's recent posts with exactly this commentary within `verify_window_s`; and LinkedIn itself
refuses a repeat with 422 "Content is a duplicate of urn:li:share:…", which is raised as
`Duplicate(existing_id=urn)` and found again by `verify`. Rate limits: a bare 429 means a daily
limit, which resets at midnight UTC (https://learn.microsoft.com/en-us/linkedin/shared/api-guide/
concepts/rate-limits), so the gate closes until then as a quota cap unless a Retry-After says
otherwise.

Account options: `author` (urn:li:person:… or urn:li:organization:…, required),
`linkedin_version` (default `DEFAULT_LINKEDIN_VERSION`), `oauth_url`, `verify_window_s`.
Credentials: `access_token`; optionally `refresh_token` with `client_id` and `client_secret`
(refreshed on a 401, one refresh at a time: worker/platforms/linkedin_auth.py).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

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
from worker.platforms.linkedin_auth import Tokens
from worker.platforms.linkedin_text import to_little, to_plain

DEFAULT_OAUTH_URL = "https://www.linkedin.com/oauth/v2/accessToken"
# LinkedIn serves each monthly version for about a year, then answers 426 NONEXISTENT_VERSION.
DEFAULT_LINKEDIN_VERSION = "202609"
RESTLI_PROTOCOL_VERSION = "2.0.0"
MAX_COMMENTARY_CHARS = 3000
MAX_IMAGES = 20  # a multiImage post takes 2..20
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif"})
# How far back a reconciling look accepts a post with the same commentary as this job's.
DEFAULT_VERIFY_WINDOW_S = 24 * 3600
RECENT_POSTS_COUNT = 50
# Image processing: first look at once, then back off, for at most this long.
IMAGE_POLL_FIRST_S = 0.25
IMAGE_POLL_MAX_S = 2.0
IMAGE_READY_TIMEOUT_S = 60.0
_REMEMBERED_DUPLICATES = 1000

_AUTHOR = re.compile(r"^urn:li:(person|organization):[A-Za-z0-9_-]+$")
_VERSION = re.compile(r"^\d{6}(\.\d{2})?$")
_JAVA_EXCEPTION = re.compile(r"^[\w.]+Exception: ")
_POST_URN = re.compile(r"urn:li:(?:share|ugcPost):\d+")


def post_url(urn: str) -> str:
    return f"https://www.linkedin.com/feed/update/{urn}/"


class LinkedInClient(PlatformClient):
    platform: ClassVar[str] = "linkedin"

    def __init__(self, account: AccountConfig, ctx: PlatformContext) -> None:
        super().__init__(account, ctx)
        label = account.label
        self.author = account.str_option("author")
        if not _AUTHOR.match(self.author):
            raise AccountsError(
                f"account {label}: option 'author' must be urn:li:person:ID or "
                f"urn:li:organization:ID, got {self.author!r}"
            )
        self.version = str(account.option("linkedin_version", DEFAULT_LINKEDIN_VERSION))
        if not _VERSION.match(self.version):
            raise AccountsError(
                f"account {label}: option 'linkedin_version' must be YYYYMM (e.g. "
                f"{DEFAULT_LINKEDIN_VERSION}), got {self.version!r}"
            )
        self.oauth_url = account.str_option("oauth_url", DEFAULT_OAUTH_URL)
        self.verify_window_s = account.int_option("verify_window_s", DEFAULT_VERIFY_WINDOW_S)
        self.tokens = Tokens(account, ctx.redactor, oauth_url=self.oauth_url)
        # job key -> the URN LinkedIn named when it refused this job's post as a duplicate.
        self._duplicates: OrderedDict[str, str] = OrderedDict()

    # ---- the lifecycle ---------------------------------------------------------------------

    async def prepare(self, job: JobSpec, t: Transcript) -> Prepared:
        if len(job.text) > MAX_COMMENTARY_CHARS:
            raise InvalidContent(
                f"linkedin: the text is {len(job.text)} characters; LinkedIn takes at most "
                f"{MAX_COMMENTARY_CHARS}"
            )
        media = await self.ctx.media.load_all(job.media)
        if not job.text.strip() and not media:
            raise InvalidContent("linkedin: a post needs text or an image")
        for item in media:
            if item.content_type not in IMAGE_TYPES:
                raise InvalidContent(
                    f"linkedin: {item.filename} is {item.content_type}; this adapter posts "
                    "JPEG, PNG and GIF images (videos need LinkedIn's Videos API)"
                )
        if len(media) > MAX_IMAGES:
            raise InvalidContent(f"linkedin: at most {MAX_IMAGES} images in one post")
        images = [await self._upload_image(t, item) for item in media]
        payload: dict[str, Any] = {
            "author": self.author,
            "commentary": to_little(job.text),
            "visibility": "PUBLIC",
            "distribution": {
                "feedDistribution": "MAIN_FEED",
                "targetEntities": [],
                "thirdPartyDistributionChannels": [],
            },
            "lifecycleState": "PUBLISHED",
            "isReshareDisabledByAuthor": False,
        }
        if len(images) == 1:
            payload["content"] = {"media": {"id": images[0]}}
        elif images:
            payload["content"] = {"multiImage": {"images": [{"id": urn} for urn in images]}}
        summary = f"{len(job.text)} characters as {self.author}"
        if images:
            summary += f", {len(images)} image(s) uploaded: {', '.join(images)}"
        return Prepared(payload=payload, summary=summary)

    async def commit(self, job: JobSpec, prepared: Prepared, t: Transcript) -> Published:
        try:
            response = await self._api(t, "POST", "/rest/posts", json=prepared.payload, ok=(201,))
        except Duplicate as dup:
            if dup.existing_id:
                self._remember_duplicate(job, dup.existing_id)
            raise
        urn = response.headers.get("x-restli-id", "")
        if not urn:
            # Created, but we cannot say which post it is: the next attempt reconciles.
            raise Transient("linkedin: 201 Created without an x-restli-id header", http_status=201)
        return Published(urn, post_url(urn))

    async def verify(self, job: JobSpec, t: Transcript) -> Published | None:
        named = self._duplicates.get(self._key(job))
        if named is not None:
            found = await self._named_post(t, named)
            if found is not None:
                return found
        return await self._recent_post(t, job)

    async def check_login(self, t: Transcript) -> bool:
        try:
            response = await self._api(t, "GET", self._finder(count=1), ok=())
        except AuthRequired:
            return False
        if response.status_code == 401:
            return False
        # 403 on reading is a token that works but lacks r_*_social: publishing may still work.
        if response.status_code in (200, 403):
            return True
        raise self.error_for(response)

    # ---- errors ----------------------------------------------------------------------------

    def error_for(self, response: httpx.Response) -> AdapterError:
        status = response.status_code
        body = json_of(response)
        code = str(body.get("code") or "")
        detail = str(body.get("message") or body.get("error_description") or "")
        # "com.linkedin….BadRequestResponseException: Content is …": the Java class is noise.
        detail = _JAVA_EXCEPTION.sub("", detail) or response.reason_phrase
        message = f"linkedin: HTTP {status}{f' {code}' if code else ''}: {detail}"
        if status == 429:
            now = self.clock.now()
            # LinkedIn's limits are daily and reset at midnight UTC; a Retry-After, when one
            # comes (infrastructure protection), is the more precise word.
            has_retry_after = "retry-after" in response.headers
            limit = ratelimit.normalise(
                response.headers, now=now, body=body, daily_quota=not has_retry_after
            )
            return ratelimit.rate_limited(message, limit, now=now, http_status=status)
        if status in (401, 403):
            return AuthRequired(message, http_status=status)
        if status == 422 and _is_duplicate(body, detail):
            match = _POST_URN.search(detail)
            return Duplicate(
                message, existing_id=match.group(0) if match else None, http_status=status
            )
        if status == 426:
            return InvalidContent(
                f"{message}; set the account's linkedin_version to a version LinkedIn serves "
                "now (YYYYMM, see LinkedIn's versioning page)",
                http_status=status,
            )
        if status == 408 or status >= 500:
            return Transient(message, http_status=status)
        return InvalidContent(message, http_status=status)

    # ---- images ----------------------------------------------------------------------------

    async def _upload_image(self, t: Transcript, item: MediaFile) -> str:
        init = {"initializeUploadRequest": {"owner": self.author}}
        response = await self._api(t, "POST", "/rest/images?action=initializeUpload", json=init)
        value = json_of(response).get("value")
        upload_url = value.get("uploadUrl") if isinstance(value, Mapping) else None
        urn = value.get("image") if isinstance(value, Mapping) else None
        if not isinstance(upload_url, str) or not isinstance(urn, str):
            raise Transient("linkedin: initializeUpload answered without uploadUrl and image")
        target = httpx.URL(upload_url)
        if not self._may_send_token_to(target):
            raise Transient(f"linkedin: refusing to send the token to upload host {target.host}")
        await self._api(
            t,
            "PUT",
            upload_url,
            content=item.data,
            headers={"content-type": item.content_type},
            versioned=False,
            ok=(200, 201),
        )
        await self._until_available(t, urn)
        return urn

    async def _until_available(self, t: Transcript, urn: str) -> None:
        deadline = self.clock.now() + IMAGE_READY_TIMEOUT_S
        delay = IMAGE_POLL_FIRST_S
        while True:
            response = await self._api(t, "GET", f"/rest/images/{quote(urn, safe='')}")
            status = json_of(response).get("status")
            if status == "AVAILABLE":
                return
            if status == "PROCESSING_FAILED":
                raise InvalidContent(f"linkedin: LinkedIn could not process image {urn}")
            if self.clock.now() + delay > deadline:
                raise Transient(f"linkedin: image {urn} still {status} after upload")
            await sleep_for(self.clock, delay)
            delay = min(delay * 2, IMAGE_POLL_MAX_S)

    def _may_send_token_to(self, url: httpx.URL) -> bool:
        # The upload URL comes from LinkedIn's answer; the bearer token goes only to LinkedIn
        # (or to the host this account's API is on: a stand-in or a proxy the user set).
        host = url.host
        return (
            host == self.http.base_url.host
            or host == "linkedin.com"
            or host.endswith(".linkedin.com")
        ) and url.scheme in ("https", self.http.base_url.scheme)

    # ---- reconciling -----------------------------------------------------------------------

    def _key(self, job: JobSpec) -> str:
        return job.platform_key or job.job_id

    def _remember_duplicate(self, job: JobSpec, urn: str) -> None:
        self._duplicates[self._key(job)] = urn
        while len(self._duplicates) > _REMEMBERED_DUPLICATES:
            self._duplicates.popitem(last=False)

    async def _named_post(self, t: Transcript, urn: str) -> Published | None:
        response = await self._api(t, "GET", f"/rest/posts/{quote(urn, safe='')}", ok=())
        if response.status_code == 200:
            return Published(urn, post_url(urn))
        if response.status_code == 403:
            # The app may not read posts (r_member_social is restricted); LinkedIn's own word
            # that this content is that post is the best evidence there is.
            t.note(f"cannot read {urn}; trusting LinkedIn's duplicate answer")
            return Published(urn, post_url(urn))
        if response.status_code == 404:
            return None
        raise self.error_for(response)

    async def _recent_post(self, t: Transcript, job: JobSpec) -> Published | None:
        response = await self._api(t, "GET", self._finder(count=RECENT_POSTS_COUNT), ok=())
        if response.status_code == 403:
            t.note(
                "cannot list this author's posts (no r_*_social permission); LinkedIn's "
                "duplicate check guards a repeated post"
            )
            return None
        self.check(response, 200)
        elements = json_of(response).get("elements")
        wanted_little = to_little(job.text)
        since_ms = (self.clock.now() - self.verify_window_s) * 1000
        for post in elements if isinstance(elements, list) else []:
            if not isinstance(post, Mapping) or post.get("author") != self.author:
                continue
            commentary = post.get("commentary")
            created = post.get("createdAt") or post.get("publishedAt") or 0
            urn = post.get("id")
            if (
                isinstance(urn, str)
                and isinstance(commentary, str)
                and (commentary == wanted_little or to_plain(commentary) == job.text)
                and isinstance(created, int | float)
                and created >= since_ms
            ):
                return Published(urn, post_url(urn))
        return None

    def _finder(self, *, count: int) -> str:
        # Rest.li 2.0: a URN inside a query parameter is URL-encoded whole.
        author = quote(self.author, safe="")
        return f"/rest/posts?author={author}&q=author&count={count}&sortBy=LAST_MODIFIED"

    # ---- HTTP with the token -----------------------------------------------------------------

    async def _api(
        self,
        t: Transcript,
        method: str,
        url: str,
        *,
        json: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        versioned: bool = True,
        ok: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        """One call with the current token; on a 401, refresh once and call again (a 401 means
        LinkedIn did nothing). `ok=()` returns any answer unchecked."""
        for attempt in (1, 2):
            token = self.tokens.access
            request = self.http.build_request(
                method,
                url,
                json=json,
                content=content,
                headers={**self._headers(token, versioned=versioned), **(headers or {})},
            )
            response = await self.send(t, request)
            if (
                response.status_code == 401
                and attempt == 1
                and await self.tokens.refresh(token, t, self)
            ):
                continue
            break
        return self.check(response, *ok) if ok else response

    def _headers(self, token: str, *, versioned: bool) -> dict[str, str]:
        headers = {"authorization": f"Bearer {token}"}
        if versioned:
            headers["linkedin-version"] = self.version
            headers["x-restli-protocol-version"] = RESTLI_PROTOCOL_VERSION
        return headers


def _is_duplicate(body: Mapping[str, object], message: str) -> bool:
    if "duplicate" in message.lower():
        return True
    details = body.get("errorDetails")
    errors = details.get("inputErrors") if isinstance(details, Mapping) else None
    return isinstance(errors, list) and any(
        isinstance(e, Mapping) and e.get("code") == "DUPLICATE_POST" for e in errors
    )
