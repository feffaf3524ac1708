"""Instagram content publishing (Graph API, "Instagram API with Facebook Login"): one JPEG image
with a caption per post.

Contract (https://developers.facebook.com/docs/instagram-platform/content-publishing,
.../reference/ig-user/media, .../ig-user/media_publish, .../ig-container,
.../ig-user/content_publishing_limit):

    GET  /{v}/{ig-user-id}/content_publishing_limit?fields=config,quota_usage[&since=unix]
         -> {"data": [{"quota_usage": 3, "config": {"quota_total": 100, "quota_duration": 86400}}]}
    POST /{v}/{ig-user-id}/media          image_url=..., caption=...   -> {"id": container-id}
    GET  /{v}/{container-id}?fields=status_code,status
         status_code: IN_PROGRESS | FINISHED | ERROR | EXPIRED | PUBLISHED
    POST /{v}/{ig-user-id}/media_publish  creation_id=container-id    -> {"id": media-id}
    GET  /{v}/{media-id}?fields=permalink
    GET  /{v}/{ig-user-id}/media?fields=id,caption,timestamp,permalink&since=...   (reconcile)

Credential `access_token`; options `ig_user_id` (required), `media_base_url`, `api_version`,
`container_poll_s`, `container_timeout_s`, `reconcile_window_s`.

Instagram downloads the image itself from `image_url`, so a post's media must be an https URL,
or a file name in the worker's --media-dir that is also served publicly under `media_base_url`
(then the worker checks the file is a JPEG before asking). Nothing else can work.

The publishing quota is read before anything is created. When it is used up the gate closes,
as a quota cap, until the first instant the rolling window (`config.quota_duration`) has room
again: that is when the oldest publish that still counts leaves the window, and the edge's
`since` parameter finds it (`quota_usage` counts the publishes after `since`), by bisection to
the second (at most ~17 reads of a small edge, once per cap). Never a hard-coded 25/50/100.

Reconcile: the container is the idempotency key. Its id is kept per job.platform_key in this
client (it lives as long as the worker). A retry looks first: a known container PUBLISHED means
the post exists (found in the account's recent media by caption); FINISHED (or still
IN_PROGRESS) means not published, and it is reused, never a second container; EXPIRED or ERROR
means a new one. With no known container (another worker made it, or this one was restarted)
the account's recent media are searched for the exact caption inside the reconcile window.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from datetime import UTC, datetime
from typing import ClassVar
from urllib.parse import quote

import httpx

from postroom.clock import sleep_for
from worker.accounts import AccountConfig, AccountsError
from worker.adapters.base import JobSpec, Prepared, Published
from worker.errors import AdapterError, AuthRequired, InvalidContent, RateLimited, Transient
from worker.platforms.base import PlatformContext, Transcript, json_of
from worker.platforms.graph import (
    FALLBACK_WAIT_S,
    GraphClient,
    float_option,
    graph_error_for,
    newest,
    parse_graph_error,
)

MAX_CAPTION_CHARS = 2_200
MAX_HASHTAGS = 30
MAX_MENTIONS = 20
DEFAULT_CONTAINER_POLL_S = 1.0
DEFAULT_CONTAINER_TIMEOUT_S = 120.0
# `since` must be no older than 24 hours; keep clear of that edge whatever the clocks say.
SINCE_MARGIN_S = 60
# Containers remembered per account (a job's stays until the worker restarts or this overflows).
MAX_REMEMBERED_CONTAINERS = 1_000
MEDIA_FIELDS = ("id", "caption", "timestamp", "permalink")
FALLBACK_URL = "https://www.instagram.com/"

IN_PROGRESS, FINISHED, ERROR, EXPIRED, PUBLISHED = (
    "IN_PROGRESS",
    "FINISHED",
    "ERROR",
    "EXPIRED",
    "PUBLISHED",
)
# Instagram's own codes (reference/error-codes): the media is not ready to publish yet; the
# image could not be fetched or is not one; the account's publishing quota; the spam filter;
# the professional account is checkpointed or restricted.
NOT_READY_CODE = 9007
NOT_FETCHED_CODE = 9004
QUOTA_CODE, QUOTA_SUBCODE = 9, 2207042
SPAM_SUBCODE = 2207051
RESTRICTED_SUBCODE = 2207050
_HASHTAG = re.compile(r"(?<!\w)#\w+")
_MENTION = re.compile(r"(?<!\w)@[\w.]+")


class InstagramClient(GraphClient):
    platform: ClassVar[str] = "instagram"
    token_name: ClassVar[str] = "access_token"
    node_option: ClassVar[str] = "ig_user_id"

    def __init__(self, account: AccountConfig, ctx: PlatformContext) -> None:
        base = account.options.get("media_base_url")
        if base is not None and not str(base).startswith(("https://", "http://")):
            raise AccountsError(
                f"account {account.label}: media_base_url must be the public https:// URL "
                "where this worker's --media-dir is served"
            )
        self.media_base_url = str(base).rstrip("/") if base is not None else None
        self.poll_s = float_option(account, "container_poll_s", DEFAULT_CONTAINER_POLL_S)
        self.timeout_s = float_option(account, "container_timeout_s", DEFAULT_CONTAINER_TIMEOUT_S)
        # platform_key -> container id: the one record that keeps a retry off a second container.
        self._containers: OrderedDict[str, str] = OrderedDict()
        super().__init__(account, ctx)

    # ---- the lifecycle --------------------------------------------------------------------

    async def prepare(self, job: JobSpec, t: Transcript) -> Prepared:
        image_url = await self._image_url(job)
        _check_caption(job.text)
        known = self._containers.get(job.platform_key)
        if known is not None:
            status = await self._status(known, t)
            if status == PUBLISHED:
                # An earlier attempt published it and did not hear so: commit finds the media.
                return Prepared(
                    payload={"creation_id": known, "published": True},
                    summary=f"container {known} is already PUBLISHED",
                )
            if status not in (IN_PROGRESS, FINISHED):
                t.note(f"container {known} is {status}: making a new one")
                self._forget(job.platform_key)
                known = None
        await self._check_quota(t)
        if known is None:
            known = await self._create_container(job, image_url, t)
        await self._wait_finished(job.platform_key, known, t)
        return Prepared(
            payload={"creation_id": known, "published": False},
            summary=f"container {known} FINISHED for {image_url}",
        )

    async def commit(self, job: JobSpec, prepared: Prepared, t: Transcript) -> Published:
        creation_id = str(prepared.payload["creation_id"])
        if prepared.payload.get("published"):
            found = await self._find_media(job.text, t)
            if found is None:
                raise Transient(
                    f"instagram: container {creation_id} is PUBLISHED but its media is not "
                    "listed yet; the next attempt looks again"
                )
            return found
        body = await self.call(
            t, "POST", self.node_id, "media_publish", data={"creation_id": creation_id}
        )
        media_id = body.get("id")
        if not isinstance(media_id, str) or not media_id:
            raise Transient(f"instagram: media_publish named no media id: {body}")
        return Published(media_id, await self._permalink(media_id, t))

    async def verify(self, job: JobSpec, t: Transcript) -> Published | None:
        known = self._containers.get(job.platform_key)
        if known is not None:
            status = await self._status(known, t)
            t.note(f"this worker's container {known} for the job is {status}")
            if status in (IN_PROGRESS, FINISHED):
                return None  # not published: prepare reuses it
            if status != PUBLISHED:
                self._forget(job.platform_key)
                return None
            found = await self._find_media(job.text, t)
            if found is None:
                raise Transient(
                    f"instagram: container {known} is PUBLISHED but its media is not listed yet"
                )
            return found
        return await self._find_media(job.text, t)

    def error_for(self, response: httpx.Response) -> AdapterError:
        now = self.clock.now()
        error = parse_graph_error(json_of(response))
        if error is not None:
            text = f"instagram: {error.describe(response.status_code)}"
            status = response.status_code
            if error.code == NOT_READY_CODE:
                return Transient(f"{text}: the media is not ready to publish", http_status=status)
            if error.code == NOT_FETCHED_CODE:
                return InvalidContent(
                    f"{text}: Instagram could not fetch a JPEG image from image_url; it must "
                    "be public (media_base_url) and a JPEG",
                    http_status=status,
                )
            if error.code == QUOTA_CODE and error.subcode == QUOTA_SUBCODE:
                # A race with another publisher; the next attempt reads the exact instant.
                return RateLimited(
                    f"{text}: publishing quota used up",
                    retry_at=now + FALLBACK_WAIT_S,
                    quota_cap=True,
                    http_status=status,
                )
            if error.subcode == SPAM_SUBCODE:
                return InvalidContent(f"{text}: refused as suspected spam", http_status=status)
            if error.subcode == RESTRICTED_SUBCODE:
                return AuthRequired(
                    f"{text}: sign in to the Instagram app and clear the account's checkpoint",
                    http_status=status,
                )
        return graph_error_for(response, platform=self.platform, now=now)

    # ---- steps ----------------------------------------------------------------------------

    async def _image_url(self, job: JobSpec) -> str:
        if not job.media:
            raise InvalidContent("instagram: a post needs an image (JPEG); this one has none")
        if len(job.media) > 1:
            raise InvalidContent(
                f"instagram: {len(job.media)} media; this adapter publishes one image per post"
            )
        reference = job.media[0]
        if reference.startswith("https://"):
            return reference  # Instagram fetches and checks it (9004 when it cannot)
        if reference.startswith("http://"):
            raise InvalidContent(
                f"instagram: media {reference!r}: Instagram fetches images from public https:// "
                "URLs only"
            )
        if self.media_base_url is None:
            raise InvalidContent(
                f"instagram: media {reference!r} is a file on the worker, but Instagram fetches "
                "the image itself from a public URL: give an https:// URL, or serve the "
                "worker's --media-dir publicly and set the account's media_base_url"
            )
        media = await self.ctx.media.load(reference)
        if media.content_type != "image/jpeg":
            raise InvalidContent(
                f"instagram: media {reference!r} is {media.content_type}; Instagram publishes "
                "JPEG images only"
            )
        name = reference.removeprefix("file:")
        return f"{self.media_base_url}/{quote(name, safe='/')}"

    async def _check_quota(self, t: Transcript) -> None:
        usage, total, duration = await self._limit(t)
        if total is None:
            # No config in the answer: publish, and let a 9/2207042 refusal say it is used up.
            t.note(f"publishing quota: {usage} used, total not given")
            return
        if usage < total:
            t.note(f"publishing quota: {usage} of {total} used")
            return
        now = self.clock.now()
        free_at = await self._frees_at(t, total, duration or 0.0, now)
        when = datetime.fromtimestamp(free_at, UTC).isoformat(timespec="seconds")
        raise RateLimited(
            f"instagram: content publishing limit used up ({usage} of {total} per "
            f"{duration or 0:.0f}s); room again at {when}",
            retry_at=free_at,
            quota_cap=True,
        )

    async def _limit(
        self, t: Transcript, since: int | None = None
    ) -> tuple[int, int | None, float | None]:
        params: dict[str, str | int] = {"fields": "config,quota_usage"}
        if since is not None:
            params["since"] = since
        body = await self.call(t, "GET", self.node_id, "content_publishing_limit", params=params)
        data = body.get("data")
        entry = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
        config = entry.get("config")
        config = config if isinstance(config, dict) else {}
        usage, total, duration = (
            entry.get("quota_usage"),
            config.get("quota_total"),
            config.get("quota_duration"),
        )
        return (
            usage if isinstance(usage, int) else 0,
            total if isinstance(total, int) else None,
            float(duration) if isinstance(duration, int | float) else None,
        )

    async def _frees_at(self, t: Transcript, total: int, duration: float, now: float) -> float:
        """The first instant fewer than `total` publishes lie in the window: the smallest
        `since` whose usage is under `total`, plus the window."""
        if total <= 0 or duration <= 0:
            return now + max(duration, FALLBACK_WAIT_S)
        lo = min(math.ceil(now - duration) + SINCE_MARGIN_S, math.floor(now))
        hi = math.ceil(now)
        if (await self._limit(t, since=lo))[0] < total:
            return lo + duration
        while hi - lo > 1:  # usage(lo) >= total > usage(hi)
            mid = (lo + hi) // 2
            if (await self._limit(t, since=mid))[0] >= total:
                lo = mid
            else:
                hi = mid
        return hi + duration

    async def _create_container(self, job: JobSpec, image_url: str, t: Transcript) -> str:
        body = await self.call(
            t, "POST", self.node_id, "media", data={"image_url": image_url, "caption": job.text}
        )
        container = body.get("id")
        if not isinstance(container, str) or not container:
            raise Transient(f"instagram: the container answer named no id: {body}")
        self._containers[job.platform_key] = container
        while len(self._containers) > MAX_REMEMBERED_CONTAINERS:
            self._containers.popitem(last=False)
        return container

    async def _status(self, container: str, t: Transcript) -> str:
        try:
            body = await self.call(t, "GET", container, params={"fields": "status_code,status"})
        except InvalidContent:
            return ERROR  # Graph no longer knows it (code 100): as good as failed
        t.note(f"container {container}: {body.get('status_code')} {body.get('status') or ''}")
        return str(body.get("status_code") or "")

    async def _wait_finished(self, key: str, container: str, t: Transcript) -> None:
        deadline = self.clock.now() + self.timeout_s
        while True:
            status = await self._status(container, t)
            if status == FINISHED:
                return
            if status == ERROR:
                self._forget(key)
                raise InvalidContent(f"instagram: container {container} failed (status ERROR)")
            if status != IN_PROGRESS:
                self._forget(key)
                raise Transient(f"instagram: container {container} is {status}; retry makes anew")
            if self.clock.now() >= deadline:
                raise Transient(
                    f"instagram: container {container} still IN_PROGRESS after "
                    f"{self.timeout_s:.0f}s; the next attempt reuses it"
                )
            await sleep_for(self.clock, self.poll_s)

    async def _find_media(self, caption: str, t: Transcript) -> Published | None:
        media = await self.recent(t, "media", MEDIA_FIELDS)
        found = newest(media, text_field="caption", time_field="timestamp", text=caption)
        if found is None or not isinstance(media_id := found.get("id"), str):
            return None
        permalink = found.get("permalink")
        t.note(f"found media {media_id} with the job's caption")
        return Published(media_id, permalink if isinstance(permalink, str) else FALLBACK_URL)

    async def _permalink(self, media_id: str, t: Transcript) -> str:
        try:
            body = await self.call(t, "GET", media_id, params={"fields": "permalink"})
        except AdapterError as exc:
            # Published already: a failed lookup of its address must not fail the job.
            t.note(f"permalink of {media_id} unknown ({exc.message})")
            return FALLBACK_URL
        permalink = body.get("permalink")
        return permalink if isinstance(permalink, str) else FALLBACK_URL

    def _forget(self, key: str) -> None:
        self._containers.pop(key, None)


def _check_caption(text: str) -> None:
    if len(text) > MAX_CAPTION_CHARS:
        raise InvalidContent(
            f"instagram: the caption is {len(text)} characters; Instagram takes {MAX_CAPTION_CHARS}"
        )
    if (tags := len(_HASHTAG.findall(text))) > MAX_HASHTAGS:
        raise InvalidContent(f"instagram: {tags} hashtags; Instagram takes {MAX_HASHTAGS}")
    if (mentions := len(_MENTION.findall(text))) > MAX_MENTIONS:
        raise InvalidContent(f"instagram: {mentions} @-mentions; Instagram takes {MAX_MENTIONS}")
