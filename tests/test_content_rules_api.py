"""Content rules over real gRPC: CreatePost and UpdatePost answer INVALID_ARGUMENT naming the
target and the rule; a refused update leaves the post exactly as it was; `--text-limit` (parsed
by the coordinator's command line) changes what a platform or account accepts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from conftest import coordinator_server, publish

from coordinator.content_rules import TextLimits
from coordinator.options import parse_args
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb

if TYPE_CHECKING:  # the async stub type exists only in the .pyi
    Stub = publishing_pb2_grpc.PublishingAsyncStub

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@asynccontextmanager
async def api(tmp_path: Path, text_limits: TextLimits | None = None) -> AsyncIterator[Stub]:
    async with (
        coordinator_server(tmp_path, text_limits=text_limits) as env,
        grpc.aio.insecure_channel(env.address) as channel,
    ):
        yield publishing_pb2_grpc.PublishingStub(channel)


def targets(*specs: str) -> list[pb.Target]:
    return [pb.Target(platform=s.split(":")[0], account=s.split(":", 1)[1]) for s in specs]


async def create(stub: Stub, text: str, *specs: str, media: tuple[str, ...] = ()) -> pb.Post:
    post: pb.Post = await stub.CreatePost(
        pub.CreatePostRequest(text=text, targets=targets(*specs), media=list(media))
    )
    return post


async def refused(call: Any) -> str:
    """The INVALID_ARGUMENT message of an awaited call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    assert failed.value.code() == INVALID, failed.value.details()
    return failed.value.details() or ""


@pytest.mark.anyio
async def test_create_with_an_over_long_x_text_is_refused_and_nothing_is_created(
    tmp_path: Path,
) -> None:
    async with api(tmp_path) as stub:
        message = await refused(
            create(stub, "a" * 270 + " https://example.com/" + "b" * 80, "x:acme")
        )
        assert message == (
            "x:acme: text is 294 weighted characters; X allows 280 (each URL counts 23; CJK "
            "characters and emoji count 2): shorten it by 14"
        )
        listed = await stub.ListPosts(pub.ListPostsRequest())
        assert list(listed.posts) == []
        # The same text is fine on Mastodon (500) and the sandbox: the rule is X's, not global.
        ok = await create(stub, "a" * 270 + " https://example.com/" + "b" * 80, "mastodon:acme")
        assert ok.status == pb.POST_STATUS_DRAFT


@pytest.mark.anyio
async def test_every_target_s_problems_come_back_in_one_answer(tmp_path: Path) -> None:
    async with api(tmp_path) as stub:
        message = await refused(
            create(
                stub, "日本語" * 100, "x:acme", "instagram:shop", "sandbox:acme", media=("a.png",)
            )
        )
        lines = message.splitlines()
        assert lines == [
            "2 content rules broken:",
            "x:acme: text is 600 weighted characters; X allows 280 (each URL counts 23; CJK "
            "characters and emoji count 2): shorten it by 320",
            "instagram:shop: media 'a.png' is PNG; Instagram takes JPEG only: convert it",
        ]


@pytest.mark.anyio
async def test_update_that_breaks_a_rule_is_refused_and_the_post_is_unchanged(
    tmp_path: Path,
) -> None:
    async with api(tmp_path) as stub:
        scheduled = await publish(stub, text="short and sweet", targets=[("bluesky", "acme")])
        assert scheduled.status == pb.POST_STATUS_SCHEDULED and scheduled.approved_hash
        before = await stub.GetPost(pub.GetPostRequest(post_id=scheduled.id))

        message = await refused(
            stub.UpdatePost(pub.UpdatePostRequest(post_id=scheduled.id, text="é" * 301))
        )
        assert message.startswith("bluesky:acme: text is 301 graphemes; Bluesky allows 300")

        after = await stub.GetPost(pub.GetPostRequest(post_id=scheduled.id))
        assert after == before  # text, hash, approval, status, jobs: all as they were
        audit = await stub.ListAuditEvents(
            pub.ListAuditEventsRequest(subject_id=scheduled.id, action="POST_UPDATED")
        )
        assert list(audit.events) == []


@pytest.mark.anyio
async def test_update_is_judged_on_the_post_as_it_will_be(tmp_path: Path) -> None:
    async with api(tmp_path) as stub:
        post = await create(stub, "a" * 400, "mastodon:acme", media=("photo.jpg",))
        # Only targets change, but the post's current text is too long for X.
        message = await refused(
            stub.UpdatePost(pub.UpdatePostRequest(post_id=post.id, targets=targets("x:acme")))
        )
        assert message.startswith("x:acme: text is 400 weighted characters")
        # Only media change, and the post's current target (Mastodon) takes one video alone.
        message = await refused(
            stub.UpdatePost(
                pub.UpdatePostRequest(
                    post_id=post.id, media=["clip.mp4", "photo.jpg"], replace_media=True
                )
            )
        )
        assert message.startswith("mastodon:acme: a video with other media")
        # Adding Instagram keeps the current JPEG, so it passes; dropping the media then fails.
        updated = await stub.UpdatePost(
            pub.UpdatePostRequest(post_id=post.id, targets=targets("mastodon:acme", "instagram:s"))
        )
        assert [t.platform for t in updated.targets] == ["mastodon", "instagram"]
        message = await refused(
            stub.UpdatePost(pub.UpdatePostRequest(post_id=post.id, replace_media=True))
        )
        assert message == "instagram:s: Instagram needs an image: add exactly 1 JPEG image"
        kept = await stub.GetPost(pub.GetPostRequest(post_id=post.id))
        assert list(kept.media) == ["photo.jpg"]


@pytest.mark.anyio
async def test_text_limit_flag_lets_a_longer_mastodon_post_through(tmp_path: Path) -> None:
    opts = parse_args(["--text-limit", "mastodon=1000", "--text-limit", "mastodon:tiny=100"])
    async with api(tmp_path, opts.text_limits) as stub:
        post = await create(stub, "a" * 700, "mastodon:acme")
        assert post.status == pb.POST_STATUS_DRAFT and len(post.text) == 700
        message = await refused(create(stub, "a" * 1001, "mastodon:acme"))
        assert message.startswith(
            "mastodon:acme: text is 1001 characters; Mastodon allows 1000 (--text-limit)"
        )
        message = await refused(create(stub, "a" * 101, "mastodon:tiny"))  # the account's own
        assert "Mastodon allows 100 (--text-limit)" in message
        # Other platforms keep their defaults.
        assert (await refused(create(stub, "a" * 700, "x:acme"))).startswith("x:acme: text is 700")


@pytest.mark.anyio
async def test_without_the_flag_a_700_character_mastodon_post_is_refused(tmp_path: Path) -> None:
    async with api(tmp_path) as stub:
        message = await refused(create(stub, "a" * 700, "mastodon:acme"))
        assert message == (
            "mastodon:acme: text is 700 characters; Mastodon allows 500 (each http(s) URL counts "
            "23; a mention counts only its @username): shorten it by 200, or if the instance "
            "allows more, set --text-limit mastodon:acme=N"
        )
