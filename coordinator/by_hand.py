"""`ResolveJob` and `DeletePost`: what a person did by hand, mixed into PublishingService.

ResolveJob records a post published by hand (the job becomes SUCCEEDED, audited with who, why and
where); DeletePost removes a post that never published. Both are refused while an attempt of
postroom's may be publishing (a live commit permit), saying what to wait for; both run inside the
actor, so nothing slips in between the check and the change.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import grpc

from coordinator import operator_commands as op
from coordinator.access.interceptor import actor_name
from coordinator.access.service import rpc
from coordinator.actor import Coordinator
from coordinator.convert import job_pb
from coordinator.errors import InvalidArgument
from coordinator.store.base import Store
from coordinator.validation import check_reason, require_id
from coordinator.worker_input import MAX_PLATFORM_POST_ID_CHARS, MAX_URL_CHARS
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb

Ctx = grpc.aio.ServicerContext[Any, Any]


def check_published_url(value: str) -> str:
    url = value.strip()
    if not url:
        raise InvalidArgument("published_url is required: where the post is, e.g. https://...")
    if len(url) > MAX_URL_CHARS:
        raise InvalidArgument(f"published_url is {len(url)} characters; at most {MAX_URL_CHARS}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidArgument(f"published_url is not a URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise InvalidArgument(
            f"published_url must be an http(s) URL with a host, e.g. https://...; got {url[:80]!r}"
        )
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidArgument("published_url contains spaces or control characters")
    return url


def check_platform_post_id(value: str) -> str:
    post_id = value.strip()
    if len(post_id) > MAX_PLATFORM_POST_ID_CHARS or not post_id.isprintable():
        raise InvalidArgument(
            f"platform_post_id must be printable and at most {MAX_PLATFORM_POST_ID_CHARS} "
            "characters"
        )
    return post_id


class ByHandRpcs:
    """Mixed into PublishingService, which sets `co` and `store`."""

    co: Coordinator
    store: Store

    @rpc
    async def ResolveJob(self, request: pub.ResolveJobRequest, context: Ctx) -> pb.Job:
        job_id = require_id(request.job_id, "job_id")
        url = check_published_url(request.published_url)
        post_id = check_platform_post_id(request.platform_post_id)
        reason = check_reason(request.reason)
        actor = actor_name(request.actor)
        await self.co.command(op.ResolveJob(job_id, url, post_id, actor, reason))
        job = await self.store.get_job(job_id)
        return job_pb(job, await self.store.get_runs(job_id))

    @rpc
    async def DeletePost(
        self, request: pub.DeletePostRequest, context: Ctx
    ) -> pub.DeletePostResponse:
        post_id = require_id(request.post_id, "post_id")
        reason = check_reason(request.reason)
        actor = actor_name(request.actor)
        cancelled = await self.co.command(op.DeletePost(post_id, reason, actor))
        return pub.DeletePostResponse(post_id=post_id, cancelled_job_ids=cancelled)
