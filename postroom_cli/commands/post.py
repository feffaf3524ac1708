"""`postroom post ...`: create, edit, submit, approve, schedule, cancel, delete, show and list
posts."""

from __future__ import annotations

import argparse

from rich.text import Text

from postroom.v1 import publishing_pb2 as pb
from postroom.v1 import types_pb2 as t
from postroom_cli.client import CliError
from postroom_cli.commands import (
    Context,
    Subparsers,
    add_group,
    add_leaf,
    collect_pages,
    enum_arg,
    positive_int,
    target_arg,
    usage_error,
)
from postroom_cli.render import post_status, post_view, posts_table, status_line


def register(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    _, sub = add_group(subparsers, "post", common, "create, approve, schedule and follow posts")

    p = add_leaf(sub, "create", _create, common, "create a post in DRAFT and print its id")
    p.add_argument("--text", required=True, help="the post's text")
    _add_content_options(p, targets_required=True)
    p.add_argument("--max-attempts", type=positive_int, default=0, metavar="N")
    p.add_argument(
        "--require-confirm",
        action="store_true",
        help="stop every job before its irreversible step until `job confirm`",
    )
    p.add_argument("--submit", action="store_true", help="also submit it for approval")
    p.add_argument("--approve", action="store_true", help="also approve it, in the same call")
    p.add_argument("--schedule", action="store_true", help="also schedule it (with --approve)")

    p = add_leaf(
        sub, "update", _update, common, "edit a post (an approved post needs approval again)"
    )
    p.add_argument("post_id", metavar="POST_ID")
    p.add_argument("--text", default=None, help="new text")
    _add_content_options(p, targets_required=False)
    p.add_argument("--clear-media", action="store_true", help="remove every media reference")

    p = add_leaf(sub, "submit", _submit, common, "DRAFT -> PENDING_APPROVAL")
    p.add_argument("post_id", metavar="POST_ID")

    p = add_leaf(sub, "approve", _approve, common, "PENDING_APPROVAL -> APPROVED (use --as NAME)")
    p.add_argument("post_id", metavar="POST_ID")
    p.add_argument(
        "--content-hash",
        default="",
        metavar="HASH",
        help="the content hash you reviewed (`post show`); refused if the post changed since",
    )

    p = add_leaf(sub, "schedule", _schedule, common, "create one job per target")
    p.add_argument("post_id", metavar="POST_ID")
    p.add_argument("--at", default="", metavar="RFC3339", help="override the post's time")

    p = add_leaf(sub, "cancel", _cancel, common, "cancel a post and its unfinished jobs")
    p.add_argument("post_id", metavar="POST_ID")
    p.add_argument("--reason", default="")

    p = add_leaf(
        sub,
        "delete",
        _delete,
        common,
        "delete a post that never published (its open jobs are cancelled); refused, with the "
        "live URLs, when any target is published",
    )
    p.add_argument("post_id", metavar="POST_ID")
    p.add_argument("--reason", default="")

    p = add_leaf(sub, "show", _show, common, "a post with its warnings and per-target progress")
    p.add_argument("post_id", metavar="POST_ID")

    p = add_leaf(sub, "list", _list, common, "posts, newest first")
    p.add_argument("--status", type=enum_arg(t.PostStatus.DESCRIPTOR, "status"), default=0)
    p.add_argument("--limit", type=positive_int, default=100, metavar="N")


def _add_content_options(parser: argparse.ArgumentParser, *, targets_required: bool) -> None:
    parser.add_argument(
        "--media", action="extend", nargs="+", default=[], metavar="M", help="media URL or asset id"
    )
    parser.add_argument(
        "--target",
        dest="targets",
        action="append",
        type=target_arg,
        required=targets_required,
        default=[],
        metavar="PLATFORM:ACCOUNT",
        help="where to publish; repeat for more (on update: replaces the targets)",
    )
    parser.add_argument(
        "--at",
        default=None,
        metavar="RFC3339",
        help='when to publish, e.g. "2026-11-24T18:00:00Z"; empty: when scheduled',
    )


def _show_post(ctx: Context, post: t.Post) -> None:
    if ctx.out.json_mode:
        ctx.out.json(post)
    else:
        ctx.out.show(post_view(post))


def _show_status(ctx: Context, post: t.Post) -> None:
    if ctx.out.json_mode:
        ctx.out.json(post)
    else:
        ctx.out.show(status_line("post", post.id, post_status(post.status)))


def _create(args: argparse.Namespace, ctx: Context) -> int:
    if args.schedule and not args.approve:
        usage_error(args, "--schedule needs --approve: only an approved post can be scheduled")
    targets: list[t.Target] = args.targets
    request = pb.CreatePostRequest(
        text=args.text,
        media=args.media,
        targets=targets,
        scheduled_at=args.at or "",
        max_attempts=args.max_attempts,
        require_confirm=args.require_confirm,
        actor=ctx.actor,
        # One call, one commit: created, approved and scheduled, or nothing at all.
        approve=args.approve,
        schedule=args.schedule,
    )
    post = ctx.client.create_post(request)
    try:
        if args.submit and not args.approve:
            post = ctx.client.submit_post(post.id, actor=ctx.actor)
    except CliError as exc:
        state = post_status(post.status)
        note = f"{exc.message} (post {post.id} was created and is {state})"
        raise CliError(exc.code, note) from exc
    if ctx.out.json_mode:
        ctx.out.json(post)
    else:
        ctx.out.show(post.id)  # bare, so scripts can do POST=$(postroom post create ...)
    return 0


def _update(args: argparse.Namespace, ctx: Context) -> int:
    request = pb.UpdatePostRequest(post_id=args.post_id, actor=ctx.actor)
    if args.text is not None:
        request.text = args.text
    if args.media or args.clear_media:
        request.media.extend(args.media)
        request.replace_media = True
    request.targets.extend(args.targets)
    if args.at is not None:
        request.scheduled_at = args.at
    _show_post(ctx, ctx.client.update_post(request))
    return 0


def _submit(args: argparse.Namespace, ctx: Context) -> int:
    _show_status(ctx, ctx.client.submit_post(args.post_id, actor=ctx.actor))
    return 0


def _approve(args: argparse.Namespace, ctx: Context) -> int:
    post = ctx.client.approve_post(args.post_id, actor=ctx.actor, content_hash=args.content_hash)
    _show_status(ctx, post)
    return 0


def _schedule(args: argparse.Namespace, ctx: Context) -> int:
    _show_post(ctx, ctx.client.schedule_post(args.post_id, actor=ctx.actor, scheduled_at=args.at))
    return 0


def _cancel(args: argparse.Namespace, ctx: Context) -> int:
    post = ctx.client.cancel_post(args.post_id, actor=ctx.actor, reason=args.reason)
    _show_status(ctx, post)
    if not ctx.out.json_mode:
        for warning in post.warnings:  # e.g. the targets that are already live
            ctx.out.show(Text(f"warning: {warning}", style="yellow"))
    return 0


def _delete(args: argparse.Namespace, ctx: Context) -> int:
    deleted = ctx.client.delete_post(args.post_id, actor=ctx.actor, reason=args.reason)
    if ctx.out.json_mode:
        ctx.out.json(deleted)
        return 0
    ctx.out.show(f"post {deleted.post_id or args.post_id}: deleted")
    for job_id in deleted.cancelled_job_ids:
        ctx.out.show(f"job {job_id}: cancelled")
    return 0


def _show(args: argparse.Namespace, ctx: Context) -> int:
    _show_post(ctx, ctx.client.get_post(args.post_id))
    return 0


def _list(args: argparse.Namespace, ctx: Context) -> int:
    def fetch(page_size: int, token: str) -> tuple[list[t.Post], str]:
        request = pb.ListPostsRequest(status=args.status, page_size=page_size, page_token=token)
        response = ctx.client.list_posts(request)
        return list(response.posts), response.next_page_token

    posts = collect_pages(fetch, args.limit)
    if ctx.out.json_mode:
        ctx.out.json(posts)
    else:
        ctx.out.show(posts_table(posts))
    return 0
