"""What the Meta stand-in remembers: Pages and IG users (with their tokens), every post, photo,
IG container and IG media it accepted, the publishing-quota history, hosted images, faults.

Synchronous methods only, called from the app's handlers: each read-modify-write runs without an
await in between, so it is atomic on the event loop. Times are Unix seconds from the injected
clock. Graph ids are numeric strings, as Meta's are (a Page post is `{page-id}_{n}`).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox.standins.meta_errors import NO_SUBCODE, FaultBook, graph_fail

Clock = Callable[[], float]

DEFAULT_DUPLICATE_WINDOW_S = 24 * 3600.0
DEFAULT_QUOTA_TOTAL = 100  # Instagram's current default, as content_publishing_limit says it
DEFAULT_QUOTA_DURATION_S = 86_400
DEFAULT_POLLS_TO_FINISH = 1
DEFAULT_CONTAINER_TTL_S = 24 * 3600.0  # containers not published within 24 hours expire


def graph_time(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


@dataclass
class Page:
    id: str
    token: str
    name: str = ""
    token_expired: bool = False
    duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S


@dataclass
class IgUser:
    id: str
    token: str
    username: str = ""
    token_expired: bool = False
    quota_total: int = DEFAULT_QUOTA_TOTAL
    quota_duration: int = DEFAULT_QUOTA_DURATION_S
    polls_to_finish: int = DEFAULT_POLLS_TO_FINISH
    container_ttl_s: float = DEFAULT_CONTAINER_TTL_S
    # Instants of publishes through the API (the quota history; the admin may preload it).
    publishes: list[float] = field(default_factory=list)


@dataclass
class Image:
    sha256: str
    size: int
    content_type: str

    @classmethod
    def of(cls, data: bytes, content_type: str) -> Image:
        return cls(hashlib.sha256(data).hexdigest(), len(data), content_type)


@dataclass
class FbPost:
    id: str
    page_id: str
    message: str
    created: float
    kind: str  # "status" or "photo"
    link: str = ""
    photo_id: str | None = None

    def fields(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "message": self.message,
            "created_time": graph_time(self.created),
            "permalink_url": f"https://www.facebook.com/{self.id}",
        }


@dataclass
class Photo:
    id: str
    page_id: str
    name: str
    created: float
    image: Image
    page_story_id: str | None
    source: str  # "upload" or the URL it was fetched from

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "created_time": graph_time(self.created),
            "link": f"https://www.facebook.com/photo.php?fbid={self.id}",
        }
        if self.page_story_id is not None:
            out["page_story_id"] = self.page_story_id
        return out


@dataclass
class Container:
    id: str
    ig_user_id: str
    image_url: str
    caption: str
    created: float
    image: Image
    polls: int = 0
    media_id: str | None = None


@dataclass
class IgMedia:
    id: str
    ig_user_id: str
    caption: str
    created: float
    container_id: str
    shortcode: str

    def fields(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "caption": self.caption,
            "timestamp": graph_time(self.created),
            "permalink": f"https://www.instagram.com/p/{self.shortcode}/",
            "media_type": "IMAGE",
            "shortcode": self.shortcode,
        }


class MetaState:
    def __init__(self, *, clock: Clock) -> None:
        self.clock = clock
        self.faults = FaultBook()
        self.pages: dict[str, Page] = {}
        self.ig_users: dict[str, IgUser] = {}
        self.posts: list[FbPost] = []
        self.photos: list[Photo] = []
        self.containers: dict[str, Container] = {}
        self.media: list[IgMedia] = []
        self.hosted: dict[str, tuple[bytes, str]] = {}
        self._seq = 0

    def next_id(self, prefix: str = "1789") -> str:
        self._seq += 1
        return f"{prefix}{self._seq:011d}"

    # ---- who owns a node, and whether a token may touch it -------------------------------

    def kind_of(self, node_id: str) -> str | None:
        if node_id in self.pages:
            return "page"
        if node_id in self.ig_users:
            return "ig_user"
        if node_id in self.containers:
            return "container"
        if any(m.id == node_id for m in self.media):
            return "media"
        if any(p.id == node_id for p in self.posts):
            return "post"
        if any(p.id == node_id for p in self.photos):
            return "photo"
        return None

    def owner_of(self, node_id: str, kind: str) -> str:
        if kind in ("page", "ig_user"):
            return node_id
        if kind == "container":
            return self.containers[node_id].ig_user_id
        if kind == "media":
            return next(m.ig_user_id for m in self.media if m.id == node_id)
        if kind == "post":
            return next(p.page_id for p in self.posts if p.id == node_id)
        return next(p.page_id for p in self.photos if p.id == node_id)

    def authorise(self, owner: str, token: str | None) -> None:
        if not token:
            raise graph_fail(
                104, "An access token is required to request this resource.", status=400
            )
        holder: Page | IgUser | None = self.pages.get(owner) or self.ig_users.get(owner)
        if holder is None or holder.token != token:
            raise graph_fail(
                190, "Invalid OAuth access token - Cannot parse access token", subcode=NO_SUBCODE
            )
        if holder.token_expired:
            raise graph_fail(190)

    def expire_token(self, owner: str) -> None:
        holder = self.pages.get(owner) or self.ig_users.get(owner)
        if holder is not None:
            holder.token_expired = True

    # ---- Facebook Pages -----------------------------------------------------------------

    def create_feed_post(self, page: Page, message: str, link: str) -> FbPost:
        now = self.clock()
        for post in reversed(self.posts):
            if post.page_id != page.id or now - post.created > page.duplicate_window_s:
                continue
            if post.kind == "status" and post.message == message and post.link == link:
                raise graph_fail(506)
        post = FbPost(self.next_page_post_id(page), page.id, message, now, "status", link)
        self.posts.append(post)
        return post

    def next_page_post_id(self, page: Page) -> str:
        return f"{page.id}_{self.next_id('1220')}"

    def create_photo(
        self, page: Page, name: str, image: Image, *, source: str, story: bool
    ) -> Photo:
        now = self.clock()
        story_id = self.next_page_post_id(page) if story else None
        photo = Photo(self.next_id("1230"), page.id, name, now, image, story_id, source)
        self.photos.append(photo)
        if story_id is not None:
            self.posts.append(FbPost(story_id, page.id, name, now, "photo", photo_id=photo.id))
        return photo

    # ---- Instagram ----------------------------------------------------------------------

    def create_container(self, user: IgUser, image_url: str, caption: str, image: Image) -> str:
        container = Container(
            self.next_id("1790"), user.id, image_url, caption, self.clock(), image
        )
        self.containers[container.id] = container
        return container.id

    def status_of(self, container: Container, *, poll: bool) -> str:
        user = self.ig_users[container.ig_user_id]
        if container.media_id is not None:
            return "PUBLISHED"
        if self.clock() - container.created > user.container_ttl_s:
            return "EXPIRED"
        if container.polls < user.polls_to_finish:
            if poll:
                container.polls += 1
            return "IN_PROGRESS"
        return "FINISHED"

    def quota_usage(self, user: IgUser, since: float | None = None) -> int:
        start = self.clock() - user.quota_duration
        if since is not None:
            start = max(start, since)
        return sum(1 for t in user.publishes if t > start)

    def publish(self, user: IgUser, container: Container) -> IgMedia:
        status = self.status_of(container, poll=False)
        if status == "IN_PROGRESS":
            raise graph_fail(9007)
        if status == "EXPIRED":
            raise graph_fail(
                -2,
                "The media you are trying to access has expired. Please try to upload again.",
                subcode=2207020,
            )
        if status == "PUBLISHED":
            # A container publishes once (the stand-in's answer to a second media_publish).
            raise graph_fail(9007)
        if self.quota_usage(user) >= user.quota_total:
            raise graph_fail(
                9,
                "Application request limit reached",
                subcode=2207042,
            )
        now = self.clock()
        media_id = self.next_id("1795")
        shortcode = base64.urlsafe_b64encode(media_id.encode()).decode().rstrip("=")[:11]
        media = IgMedia(media_id, user.id, container.caption, now, container.id, shortcode)
        self.media.append(media)
        container.media_id = media_id
        user.publishes.append(now)
        return media

    # ---- the admin's record -------------------------------------------------------------

    def record(self, target: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for post in self.posts:
            out.append(
                {
                    "platform": "facebook",
                    "kind": post.kind,
                    "target": post.page_id,
                    "id": post.id,
                    "text": post.message,
                    "created": post.created,
                    "photo_id": post.photo_id,
                }
            )
        for photo in self.photos:
            if photo.page_story_id is None:  # an unpublished photo is no post
                out.append(
                    {
                        "platform": "facebook",
                        "kind": "unpublished_photo",
                        "target": photo.page_id,
                        "id": photo.id,
                        "text": photo.name,
                        "created": photo.created,
                    }
                )
        for media in self.media:
            container = self.containers[media.container_id]
            out.append(
                {
                    "platform": "instagram",
                    "kind": "media",
                    "target": media.ig_user_id,
                    "id": media.id,
                    "text": media.caption,
                    "created": media.created,
                    "container_id": media.container_id,
                    "image_url": container.image_url,
                    "image_sha256": container.image.sha256,
                }
            )
        return [item for item in out if target is None or item["target"] == target]

    def container_record(self, target: str | None = None) -> list[dict[str, Any]]:
        return [
            {
                "id": c.id,
                "target": c.ig_user_id,
                "caption": c.caption,
                "image_url": c.image_url,
                "status_code": self.status_of(c, poll=False),
                "media_id": c.media_id,
                "polls": c.polls,
                "created": c.created,
            }
            for c in self.containers.values()
            if target is None or c.ig_user_id == target
        ]
