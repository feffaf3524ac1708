"""Facebook Pages over the Graph API: a Page publishes text posts and photo posts.

Contract (https://developers.facebook.com/docs/pages-api/posts,
https://developers.facebook.com/docs/graph-api/reference/page/feed,
https://developers.facebook.com/docs/graph-api/reference/page/photos):

    POST /{v}/{page-id}/feed     message=...               -> {"id": "{page-id}_{post-id}"}
    POST /{v}/{page-id}/photos   multipart source=<file>, message -> {"id": photo, "post_id": ...}
                                 (or url=<image URL> when the media is a URL: Facebook fetches it)
    GET  /{v}/{page-id}/feed?fields=id,message,created_time&since=...          (reconcile)
    GET  /{v}/{page-id}/photos?type=uploaded&fields=id,name,created_time,...   (reconcile)
    GET  /{v}/{page-id}?fields=id                                               (login check)

Credential `page_access_token` (a Page token with pages_manage_posts and pages_read_engagement);
options `page_id` (required), `api_version`, `reconcile_window_s`. The post's public address is
https://www.facebook.com/{post id}.

Graph takes no idempotency key, so a job in doubt is reconciled by exact text: the Page's newest
feed posts (and uploaded photos, for a photo job) inside the reconcile window. Facebook itself
refuses the same message twice in a row with code 506 ("Duplicate status message"): that is a
`Duplicate`, and the runtime's verify finds the earlier post the same way.
"""

from __future__ import annotations

from typing import ClassVar

from worker.adapters.base import JobSpec, Prepared, Published
from worker.errors import InvalidContent, Transient
from worker.platforms.base import Transcript
from worker.platforms.graph import GraphClient, newest

# Page posts: https://www.facebook.com/help/ (the composer's limit, also enforced by Graph).
MAX_MESSAGE_CHARS = 63_206
# Page photos take JPEG, PNG, GIF (also BMP and TIFF, which the worker does not recognise).
PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/gif"})
POST_URL = "https://www.facebook.com/{post_id}"
FEED_FIELDS = ("id", "message", "created_time")
PHOTO_FIELDS = ("id", "name", "created_time", "page_story_id")


class FacebookClient(GraphClient):
    platform: ClassVar[str] = "facebook"
    token_name: ClassVar[str] = "page_access_token"
    node_option: ClassVar[str] = "page_id"

    async def prepare(self, job: JobSpec, t: Transcript) -> Prepared:
        text = job.text
        if len(text) > MAX_MESSAGE_CHARS:
            raise InvalidContent(
                f"facebook: the text is {len(text)} characters; a Page post takes "
                f"{MAX_MESSAGE_CHARS}"
            )
        if len(job.media) > 1:
            raise InvalidContent(
                f"facebook: {len(job.media)} media; this adapter publishes one photo per post"
            )
        if not job.media:
            if not text.strip():
                raise InvalidContent("facebook: the post has neither text nor a photo")
            return Prepared(
                payload={"edge": "feed", "message": text},
                summary=f"text post for Page {self.node_id} ({len(text)} characters)",
            )
        reference = job.media[0]
        if reference.startswith(("https://", "http://")):
            # Facebook downloads it itself; it refuses what is not an image (code 324 / 100).
            return Prepared(
                payload={"edge": "photos", "message": text, "url": reference},
                summary=f"photo post for Page {self.node_id} from {reference}",
            )
        media = await self.ctx.media.load(reference)
        if media.content_type not in PHOTO_TYPES:
            raise InvalidContent(
                f"facebook: media {reference!r} is {media.content_type}; a Page photo must be "
                "JPEG, PNG or GIF"
            )
        return Prepared(
            payload={
                "edge": "photos",
                "message": text,
                "file": (media.filename, media.data, media.content_type),
            },
            summary=f"photo post for Page {self.node_id} ({media.filename}, "
            f"{len(media.data)} bytes)",
        )

    async def commit(self, job: JobSpec, prepared: Prepared, t: Transcript) -> Published:
        payload = prepared.payload
        message = str(payload.get("message", ""))
        if payload.get("edge") == "feed":
            body = await self.call(t, "POST", self.node_id, "feed", data={"message": message})
            post_id = body.get("id")
        else:
            data = {"message": message}
            files = None
            file = payload.get("file")
            if isinstance(file, tuple):
                files = {"source": file}
            else:
                data["url"] = str(payload.get("url", ""))
            body = await self.call(t, "POST", self.node_id, "photos", data=data, files=files)
            # A published photo makes a Page post; its id is the one that has a permalink.
            post_id = body.get("post_id") or body.get("id")
        if not isinstance(post_id, str) or not post_id:
            # The call succeeded, so the post exists: the retry will find it by its text.
            raise Transient(f"facebook: the answer named no post id: {body}")
        return Published(post_id, POST_URL.format(post_id=post_id))

    async def verify(self, job: JobSpec, t: Transcript) -> Published | None:
        posts = await self.recent(t, "feed", FEED_FIELDS)
        found = newest(posts, text_field="message", time_field="created_time", text=job.text)
        if found is not None and isinstance(post_id := found.get("id"), str):
            t.note(f"found feed post {post_id} with the job's text")
            return Published(post_id, POST_URL.format(post_id=post_id))
        if job.media:
            photos = await self.recent(t, "photos", PHOTO_FIELDS, type="uploaded")
            photo = newest(photos, text_field="name", time_field="created_time", text=job.text)
            if photo is not None:
                post_id = photo.get("page_story_id") or photo.get("id")
                if isinstance(post_id, str) and post_id:
                    t.note(f"found photo post {post_id} with the job's text")
                    return Published(post_id, POST_URL.format(post_id=post_id))
        return None
