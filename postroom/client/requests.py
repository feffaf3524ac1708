"""Requests built from keyword arguments, shared by `Client` and `AsyncClient` so the two
cannot drift apart. Each builder takes a ready request instead, for callers that have one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias, TypeVar

from postroom.client.errors import InvalidArgument
from postroom.v1 import publishing_pb2 as pb
from postroom.v1 import types_pb2 as t

# A target as a message or as "PLATFORM:ACCOUNT" (split at the first colon).
TargetLike: TypeAlias = "t.Target | str"


def target(value: TargetLike) -> t.Target:
    if isinstance(value, t.Target):
        return value
    platform, sep, account = value.partition(":")
    if not sep or not platform.strip() or not account.strip():
        raise InvalidArgument(
            "INVALID_ARGUMENT",
            f"expected PLATFORM:ACCOUNT (e.g. mastodon:@news@example.social), got {value!r}",
        )
    return t.Target(platform=platform.strip(), account=account.strip())


def targets(values: Iterable[TargetLike]) -> list[t.Target]:
    if isinstance(values, str):  # one target given bare, not a list of characters
        values = [values]
    return [target(v) for v in values]


_Acted = TypeVar("_Acted", pb.CreatePostRequest, pb.UpdatePostRequest)


def _with_actor(request: _Acted, actor: str) -> _Acted:
    """A ready request, naming `actor` where it names no one."""
    if not request.actor:
        request.actor = actor
    return request


def create_post(
    request: pb.CreatePostRequest | None,
    *,
    text: str,
    targets_: Iterable[TargetLike],
    media: Iterable[str],
    scheduled_at: str,
    max_attempts: int,
    require_confirm: bool,
    actor: str,
    approve: bool = False,
    schedule: bool = False,
) -> pb.CreatePostRequest:
    if request is not None:
        return _with_actor(request, actor)
    return pb.CreatePostRequest(
        text=text,
        targets=targets(targets_),
        media=list(media),
        scheduled_at=scheduled_at,
        max_attempts=max_attempts,
        require_confirm=require_confirm,
        actor=actor,
        approve=approve,
        schedule=schedule,
    )


def create_posts(requests: Iterable[pb.CreatePostRequest], actor: str) -> pb.CreatePostsRequest:
    return pb.CreatePostsRequest(posts=[_with_actor(r, actor) for r in requests])


def update_post(
    request: pb.UpdatePostRequest | None,
    post_id: str,
    *,
    text: str | None,
    media: Iterable[str] | None,
    targets_: Iterable[TargetLike] | None,
    scheduled_at: str | None,
    actor: str,
) -> pb.UpdatePostRequest:
    if request is not None:
        return _with_actor(request, actor)
    built = pb.UpdatePostRequest(post_id=post_id, actor=actor)
    if text is not None:
        built.text = text
    if media is not None:  # a list replaces the media, [] removes them all
        built.media.extend(media)
        built.replace_media = True
    if targets_ is not None:
        built.targets.extend(targets(targets_))
    if scheduled_at is not None:
        built.scheduled_at = scheduled_at
    return built


def list_jobs(
    request: pb.ListJobsRequest | None,
    *,
    status: int,
    platform: str,
    account: str,
    post_id: str,
    device_id: str,
    page_size: int,
    page_token: str,
) -> pb.ListJobsRequest:
    if request is not None:
        return request
    return pb.ListJobsRequest(
        status=status,  # type: ignore[arg-type]
        platform=platform,
        account=account,
        post_id=post_id,
        device_id=device_id,
        page_size=page_size,
        page_token=page_token,
    )


def list_audit_events(
    request: pb.ListAuditEventsRequest | None,
    *,
    since: str,
    subject_id: str,
    action: str,
    after_seq: int,
    page_size: int,
) -> pb.ListAuditEventsRequest:
    if request is not None:
        return request
    return pb.ListAuditEventsRequest(
        since=since,
        subject_id=subject_id,
        action=action,
        after_seq=after_seq,
        page_size=page_size,
    )
