"""`postroom job ...`: list, show, watch, cancel, retry, confirm and resolve jobs; download
screenshots; export a job's escalation bundle."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from postroom.v1 import publishing_pb2 as pb
from postroom.v1 import types_pb2 as t
from postroom_cli.client import EXIT_FAILED, EXIT_OK, CliError, NeedsPerson
from postroom_cli.commands import (
    Context,
    Subparsers,
    add_group,
    add_leaf,
    collect_pages,
    enum_arg,
    positive_int,
    usage_error,
)
from postroom_cli.render import (
    fmt_size,
    fmt_time,
    job_change_line,
    job_status,
    job_view,
    jobs_table,
    log_line,
    status_line,
)


def register(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    _, sub = add_group(subparsers, "job", common, "follow and steer the jobs of scheduled posts")
    _register_reads(sub, common)
    _register_steering(sub, common)
    _register_downloads(sub, common)


def _register_reads(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = add_leaf(sub, "list", _list, common, "jobs, filtered")
    p.add_argument("--status", type=enum_arg(t.JobStatus.DESCRIPTOR, "status"), default=0)
    p.add_argument("--platform", default="")
    p.add_argument("--account", default="")
    p.add_argument("--post", dest="post_id", default="", metavar="POST_ID")
    p.add_argument("--device", dest="device_id", default="", metavar="DEVICE")
    p.add_argument("--limit", type=positive_int, default=100, metavar="N")

    p = add_leaf(sub, "show", _show, common, "a job with its runs, step logs and screenshots")
    p.add_argument("job_id", metavar="JOB_ID")

    p = add_leaf(
        sub,
        "watch",
        _watch,
        common,
        "follow a job live (its step logs so far first); exit 0 when it succeeds, 1 when it "
        "fails or is cancelled, 3 when it needs a login",
    )
    p.add_argument("job_id", metavar="JOB_ID")


def _register_steering(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = add_leaf(sub, "cancel", _cancel, common, "cancel a job that has not finished")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--reason", default="")

    p = add_leaf(sub, "retry", _retry, common, "retry a FAILED, NEEDS_LOGIN or waiting job now")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--force", action="store_true", help="even through a closed rate-limit gate")

    p = add_leaf(sub, "confirm", _confirm, common, "let an AWAITING_CONFIRM job publish")
    p.add_argument("job_id", metavar="JOB_ID")

    p = add_leaf(
        sub,
        "resolve",
        _resolve,
        common,
        "record a publication a person made by hand: the job becomes SUCCEEDED, audited "
        "(refused while an attempt of postroom's may still be committing)",
    )
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--published-url", required=True, metavar="URL", help="where it is live")
    p.add_argument("--post-id", default="", metavar="ID", help="the platform's id of the post")
    p.add_argument("--reason", default="", help="why it was posted by hand (for the audit log)")


def _register_downloads(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = add_leaf(
        sub,
        "export",
        _export,
        common,
        "write a job's escalation bundle (zip: job, post, runs and step logs, screenshots, "
        "device, audit entries, README.txt)",
    )
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="FILE.zip")

    p = add_leaf(sub, "screenshot", _screenshot, common, "download a proof screenshot")
    p.add_argument("asset_id", metavar="ASSET_ID")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="FILE")


def _list(args: argparse.Namespace, ctx: Context) -> int:
    def fetch(page_size: int, token: str) -> tuple[list[t.Job], str]:
        request = pb.ListJobsRequest(
            status=args.status,
            platform=args.platform,
            account=args.account,
            post_id=args.post_id,
            device_id=args.device_id,
            page_size=page_size,
            page_token=token,
        )
        response = ctx.client.list_jobs(request)
        return list(response.jobs), response.next_page_token

    jobs = collect_pages(fetch, args.limit)
    if ctx.out.json_mode:
        ctx.out.json(jobs)
    else:
        ctx.out.show(jobs_table(jobs))
    return 0


def _show(args: argparse.Namespace, ctx: Context) -> int:
    job = ctx.client.get_job(args.job_id)
    if ctx.out.json_mode:
        ctx.out.json(job)
    else:
        ctx.out.show(job_view(job))
    return 0


def _show_status(ctx: Context, job: t.Job) -> None:
    if ctx.out.json_mode:
        ctx.out.json(job)
    else:
        ctx.out.show(status_line("job", job.id, job_status(job.status)))


def _cancel(args: argparse.Namespace, ctx: Context) -> int:
    _show_status(ctx, ctx.client.cancel_job(args.job_id, actor=ctx.actor, reason=args.reason))
    return 0


def _retry(args: argparse.Namespace, ctx: Context) -> int:
    job = ctx.client.retry_job(args.job_id, actor=ctx.actor, force=args.force)
    _show_status(ctx, job)
    waits = job.status == t.JOB_STATUS_QUEUED and job.not_before.ToSeconds() > time.time() + 1
    if waits and not ctx.out.json_mode:
        # Without --force a retry still waits for the account's rate-limit gate.
        ctx.out.show(
            f"next try {fmt_time(job.not_before)}, when the rate-limit gate of "
            f"{job.platform}:{job.account} opens; add --force to try now, through the gate"
        )
    return 0


def _confirm(args: argparse.Namespace, ctx: Context) -> int:
    _show_status(ctx, ctx.client.confirm_job(args.job_id, actor=ctx.actor))
    return 0


def _resolve(args: argparse.Namespace, ctx: Context) -> int:
    url: str = args.published_url.strip()
    if not url.startswith(("https://", "http://")):
        usage_error(args, f"--published-url must be the post's http(s) URL, got {url!r}")
    job = ctx.client.resolve_job(
        args.job_id,
        published_url=url,
        platform_post_id=args.post_id,
        reason=args.reason,
        actor=ctx.actor,
    )
    _show_status(ctx, job)
    if not ctx.out.json_mode:
        ctx.out.show(f"recorded as published by hand by {job.resolved_by or ctx.actor}: {url}")
    return 0


def _export(args: argparse.Namespace, ctx: Context) -> int:
    path: Path = args.output
    names = ctx.client.export_job(args.job_id, path)
    if ctx.out.json_mode:
        ctx.out.json({"job_id": args.job_id, "path": str(path), "files": names})
    else:
        ctx.out.show(f"wrote {len(names)} files for job {args.job_id} to {path}")
    return 0


def _watch(args: argparse.Namespace, ctx: Context) -> int:
    last: t.Job | None = None
    device = ""  # the device of the latest run: where a login would have to happen
    shown: set[tuple[str, str, int, str]] = set()  # (run, step, time, message) already printed

    def show_log(event: pb.StepLogEvent) -> None:
        key = (event.run_id, event.log.step, _ms(event.log.at), event.log.message)
        if key not in shown:
            shown.add(key)
            ctx.out.show(log_line(event))

    for event in ctx.client.watch_job(args.job_id):
        kind = event.WhichOneof("event")
        if ctx.out.json_mode:
            ctx.out.json_line(event)
        elif kind == "log":
            show_log(event.log)
        elif kind == "job":
            # The first event holds the runs so far: their logs come before anything live.
            for run in event.job.runs:
                for line in run.logs:
                    show_log(pb.StepLogEvent(run_id=run.id, attempt=run.attempt, log=line))
            if last is None or event.job.status != last.status:
                # The server also resends the job on lease/attempt changes; only status is news.
                ctx.out.show(job_change_line(event.job))
        if kind == "job":
            last = event.job
            device = last.device_id or (last.runs[-1].device_id if last.runs else "") or device
            if last.status == t.JOB_STATUS_NEEDS_LOGIN:
                # No automatic retry follows: a person must log in first.
                raise NeedsPerson(needs_login_advice(last, device))
    if last is not None and last.status == t.JOB_STATUS_SUCCEEDED:
        return EXIT_OK
    if last is not None and last.status in (t.JOB_STATUS_FAILED, t.JOB_STATUS_CANCELLED):
        return EXIT_FAILED
    state = job_status(last.status) if last is not None else "unknown"
    raise CliError(
        "INCOMPLETE",
        f"the coordinator ended the watch while job {args.job_id} was {state}; watch it again",
    )


def needs_login_advice(job: t.Job, device: str) -> str:
    device = device or "DEVICE"
    return (
        f"job {job.id} needs a login on {job.platform}:{job.account}: log the account in on "
        f"{device}, then run: postroom device check-login {device} "
        f"--platform {job.platform} --account {job.account}"
    )


def _ms(stamp: Timestamp) -> int:
    return stamp.seconds * 1000 + stamp.nanos // 1_000_000


def _screenshot(args: argparse.Namespace, ctx: Context) -> int:
    asset_id: str = args.asset_id
    path: Path = args.output
    info = ctx.client.download_screenshot(asset_id, path)
    size, content_type = info.total_size, info.content_type
    if ctx.out.json_mode:
        info_dict = {"asset_id": asset_id, "path": str(path), "size_bytes": size}
        ctx.out.json({**info_dict, "content_type": content_type})
    else:
        ctx.out.show(f"wrote {fmt_size(size)} ({content_type or 'unknown type'}) to {path}")
    return 0
