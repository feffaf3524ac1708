"""Human and JSON output of the CLI.

Human output is `rich` tables and lines: enum names without their prefix (`QUEUED`), times as
readable UTC (`2026-11-24 18:00:05Z`). `--json` output is the protobuf JSON mapping with proto field
names: one object, an array for lists, JSON Lines for streams.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Any

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from postroom.v1 import publishing_pb2 as pb
from postroom.v1 import types_pb2 as t

# Piped output keeps one row per line so `grep` works; a terminal gets its own width.
PIPE_WIDTH_CHARS = 200
EMPTY = "-"

_GOOD = {"SUCCEEDED", "PUBLISHED", "LOGGED_IN", "ONLINE", "OPEN"}
_BAD = {"FAILED", "CANCELLED", "NEEDS_LOGIN", "OFFLINE", "CLOSED", "ERROR", "LEASE_LOST"}


class Output:
    """Where a command writes: a rich console on stdout, or JSON when `--json` is set."""

    def __init__(self, *, json_mode: bool) -> None:
        self.json_mode = json_mode
        # markup/emoji off: post text and log messages are data, "[INFO]" or ":x:" must survive.
        self.console = Console(
            width=None if sys.stdout.isatty() else PIPE_WIDTH_CHARS,
            markup=False,
            emoji=False,
            highlight=False,
        )

    def show(self, renderable: RenderableType) -> None:
        soft_wrap = isinstance(renderable, (str, Text))
        if self.console.is_terminal:
            self.console.print(renderable, soft_wrap=soft_wrap)
            return
        # Piped: drop the padding rich adds to every cell so `grep`/`awk` see clean lines.
        with self.console.capture() as captured:
            self.console.print(renderable, soft_wrap=soft_wrap)
        lines = (line.rstrip() for line in captured.get().splitlines())
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()

    def json(self, value: Message | Sequence[Message] | dict[str, Any]) -> None:
        """One object, or a JSON array for a sequence of messages."""
        if isinstance(value, Message):
            data: Any = message_dict(value)
        elif isinstance(value, dict):
            data = value
        else:
            data = [message_dict(m) for m in value]
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    def json_line(self, value: Message | dict[str, Any]) -> None:
        data = message_dict(value) if isinstance(value, Message) else value
        sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
        sys.stdout.flush()  # a watcher piping into jq wants each event as it happens


def message_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def enum_label(descriptor: EnumDescriptor, value: int) -> str:
    """`JOB_STATUS_QUEUED` -> `QUEUED`; UNSPECIFIED -> `-`; a value newer than us -> its number."""
    entry = descriptor.values_by_number.get(value)
    if entry is None:
        return str(value)
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", descriptor.name).upper() + "_"
    name = entry.name.removeprefix(prefix)
    return EMPTY if name == "UNSPECIFIED" else name


def enum_names(descriptor: EnumDescriptor) -> list[str]:
    """The user-facing names of an enum, without UNSPECIFIED."""
    return [n for n in (enum_label(descriptor, v.number) for v in descriptor.values) if n != EMPTY]


def job_status(value: int) -> str:
    return enum_label(t.JobStatus.DESCRIPTOR, value)


def post_status(value: int) -> str:
    return enum_label(t.PostStatus.DESCRIPTOR, value)


def error_class(value: int) -> str:
    return enum_label(t.ErrorClass.DESCRIPTOR, value)


def is_set(ts: Timestamp) -> bool:
    return bool(ts.seconds or ts.nanos)


def fmt_time(ts: Timestamp) -> str:
    if not is_set(ts):
        return EMPTY
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def rfc3339(ts: Timestamp) -> str:
    return ts.ToJsonString() if is_set(ts) else ""


def fmt_size(size_bytes: int) -> str:
    if size_bytes < 1024:
        return f"{size_bytes} B"
    if size_bytes < 1024 * 1024:
        return f"{size_bytes / 1024:.1f} KiB"
    return f"{size_bytes / 1024 / 1024:.1f} MiB"


def fmt_target(target: t.Target) -> str:
    return f"{target.platform}:{target.account}"


def fmt_error(error_class_value: int, message: str, *, limit: int = 0) -> str:
    if not message and not error_class_value:
        return EMPTY
    text = f"{error_class(error_class_value)}: {message}" if error_class_value else message
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def styled(label: str) -> Text:
    key = label.strip().upper()
    style = "green" if key in _GOOD else "red" if key in _BAD else "yellow"
    return Text(label, style=style if label != EMPTY else "")


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _fields(rows: Iterable[tuple[str, str | Text]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value)
    return grid


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# Posts


def post_view(post: t.Post) -> Group:
    approved = EMPTY
    if post.approved_hash:
        current = "current" if post.approved_hash == post.content_hash else "OUTDATED"
        approved = f"by {post.approved_by or '?'} ({current} content)"
    rows: list[tuple[str, str | Text]] = [
        ("post", post.id),
        ("status", styled(post_status(post.status))),
        ("text", post.text),
        ("media", ", ".join(post.media) or EMPTY),
        ("targets", ", ".join(fmt_target(x) for x in post.targets) or EMPTY),
        (
            "scheduled",
            fmt_time(post.scheduled_at) if is_set(post.scheduled_at) else "when scheduled",
        ),
        ("content hash", post.content_hash or EMPTY),
        ("approved", approved),
        ("max attempts", str(post.max_attempts) if post.max_attempts else "default"),
        ("confirm", "required before publishing" if post.require_confirm else "no"),
        ("created", fmt_time(post.created_at)),
        ("updated", fmt_time(post.updated_at)),
    ]
    parts: list[RenderableType] = [_fields(rows)]
    parts += [Text(f"warning: {w}", style="yellow") for w in post.warnings]
    if post.target_states:
        table = _table("TARGET", "JOB", "STATUS", "ATTEMPT", "NEXT TRY", "LAST ERROR", "URL")
        for ts in post.target_states:
            table.add_row(
                fmt_target(ts.target),
                ts.job_id,
                styled(job_status(ts.job_status)),
                str(ts.attempt),
                fmt_time(ts.not_before),
                fmt_error(ts.last_error_class, ts.last_error),
                ts.result_url or EMPTY,
            )
        parts += [Text(""), table]
    return Group(*parts)


def posts_table(posts: Sequence[t.Post]) -> Table:
    table = _table("POST", "STATUS", "SCHEDULED", "TARGETS", "TEXT")
    for post in posts:
        table.add_row(
            post.id,
            styled(post_status(post.status)),
            fmt_time(post.scheduled_at),
            ", ".join(fmt_target(x) for x in post.targets),
            _one_line(post.text, 48),
        )
    return table


def status_line(kind: str, ident: str, status: str) -> Text:
    return Text.assemble(f"{kind} {ident}: ", styled(status))


# Jobs


def jobs_table(jobs: Sequence[t.Job]) -> Table:
    table = _table("JOB", "POST", "TARGET", "STATUS", "ATTEMPT", "NEXT TRY", "DEVICE", "LAST ERROR")
    for job in jobs:
        table.add_row(
            job.id,
            job.post_id,
            f"{job.platform}:{job.account}",
            styled(job_status(job.status)),
            fmt_attempt(job),
            fmt_time(job.not_before) if job.status == t.JOB_STATUS_QUEUED else EMPTY,
            job.device_id or EMPTY,
            fmt_error(job.last_error_class, job.last_error, limit=60),
        )
    return table


def fmt_attempt(job: t.Job) -> str:
    """`2/3`, `2/3 (+1 rate-limited)`, or `verify-only look 1 after 3/3 attempts`: attempts
    past the maximum only look for a post that may exist; they are never shown as 4/3. Looks
    whose lease was lost before they looked do not count either: `(+2 lost before looking)`."""
    rate_limited = job.rate_limited_count
    counted = job.attempt - rate_limited - job.lost_looks
    if job.max_attempts and counted > job.max_attempts:
        text = (
            f"verify-only look {counted - job.max_attempts} after "
            f"{job.max_attempts}/{job.max_attempts} attempts"
        )
    else:
        text = f"{counted}/{job.max_attempts}" if job.max_attempts else str(counted)
    if rate_limited:  # those do not use up max_attempts, so say so
        text += f" (+{rate_limited} rate-limited)"
    if job.lost_looks:
        text += f" (+{job.lost_looks} lost before looking)"
    return text


def job_view(job: t.Job) -> Group:
    lease = EMPTY
    if job.device_id and is_set(job.lease_expires_at):
        lease = (
            f"{job.device_id}, epoch {job.lease_epoch}, expires {fmt_time(job.lease_expires_at)}"
        )
    elif job.device_id:
        lease = f"none (last ran on {job.device_id}, epoch {job.lease_epoch})"
    waiting = job.status == t.JOB_STATUS_QUEUED
    result = " ".join(x for x in (job.result_post_id, job.result_url) if x) or EMPTY
    attempt = fmt_attempt(job)
    rows: list[tuple[str, str | Text]] = [
        ("job", job.id),
        ("post", job.post_id),
        ("target", f"{job.platform}:{job.account}"),
        ("status", styled(job_status(job.status))),
        ("attempt", attempt),
        ("next try", fmt_time(job.not_before) if waiting else EMPTY),
        ("lease", lease),
        ("verify first", "yes" if job.verify_first else "no"),
        ("last error", fmt_error(job.last_error_class, job.last_error)),
        ("result", result),
        ("published by hand", f"yes, recorded by {job.resolved_by}" if job.resolved_by else "no"),
        ("idempotency key", job.idempotency_key or EMPTY),
        ("platform key", job.platform_key or EMPTY),
        ("content hash", job.content_hash or EMPTY),
        ("scheduled", fmt_time(job.scheduled_at)),
        ("created", fmt_time(job.created_at)),
        ("updated", fmt_time(job.updated_at)),
    ]
    parts: list[RenderableType] = [_fields(rows)]
    for run in job.runs:
        parts.extend(_run_parts(run))
    return Group(*parts)


def _run_parts(run: t.Run) -> list[RenderableType]:
    head = Text.assemble(
        ("\n" + f"run {run.id}", "bold"),
        f"  attempt {run.attempt}  device {run.device_id or EMPTY}  epoch {run.lease_epoch}  ",
        "outcome ",
        styled(run.outcome or EMPTY),
        f"  committed {'yes' if run.committed else 'no'}",
        f"  {fmt_time(run.started_at)} → {fmt_time(run.ended_at)}",
    )
    parts: list[RenderableType] = [head]
    if run.error or run.error_class:
        failed = f" (step {run.failed_step})" if run.failed_step else ""
        parts.append(Text(f"error: {fmt_error(run.error_class, run.error)}{failed}", style="red"))
    if run.logs:
        logs = _table("TIME", "STEP", "LEVEL", "MESSAGE")
        for log in run.logs:
            level = enum_label(t.LogLevel.DESCRIPTOR, log.level)
            logs.add_row(fmt_time(log.at), log.step, styled(level), log.message)
        parts.append(logs)
    if run.screenshots:
        shots = _table("SCREENSHOT", "ASSET", "SIZE")
        for shot in run.screenshots:
            shots.add_row(shot.label, shot.asset_id, fmt_size(shot.size_bytes))
        parts.append(shots)
    return parts


def job_change_line(job: t.Job) -> Text:
    """One line of `job watch` for a status change."""
    extra = f"attempt {fmt_attempt(job)}"
    if job.device_id:
        extra += f", device {job.device_id}"
    if is_set(job.not_before) and job.status == t.JOB_STATUS_QUEUED:
        extra += f", next try {fmt_time(job.not_before)}"
    if job.last_error:
        extra += f", {fmt_error(job.last_error_class, job.last_error)}"
    if job.result_url:
        extra += f", {job.result_url}"
    return Text.assemble(
        f"{fmt_time(job.updated_at)}  job {job.id} ", styled(job_status(job.status)), f" ({extra})"
    )


def log_line(event: pb.StepLogEvent) -> Text:
    level = enum_label(t.LogLevel.DESCRIPTOR, event.log.level)
    return Text.assemble(
        f"{fmt_time(event.log.at)}  #{event.attempt} ",
        styled(f"{level:<7}"),
        f" {event.log.step}: {event.log.message}",
    )


# Devices and gates


def devices_table(devices: Sequence[t.Device]) -> Table:
    table = _table("DEVICE", "KIND", "STATE", "SLOTS", "LAST SEEN", "CAPABILITIES", "LOGINS")
    for device in devices:
        logins = Text(", ").join(
            Text.assemble(f"{fmt_target(b.target)} ", styled(login_state(b.state)))
            for b in device.logins
        )
        table.add_row(
            device.id,
            enum_label(t.WorkerKind.DESCRIPTOR, device.kind),
            styled(enum_label(t.DeviceState.DESCRIPTOR, device.state)),
            f"{device.free_slots}/{device.slots} free"
            + (f", {device.per_account_slots}/account" if device.per_account_slots else ""),
            fmt_time(device.last_seen_at),
            ", ".join(fmt_target(c) for c in device.capabilities) or EMPTY,
            logins if device.logins else EMPTY,
        )
    return table


def login_state(value: int) -> str:
    return enum_label(t.LoginState.DESCRIPTOR, value)


def gates_table(gates: Sequence[t.RateLimitGate], now: Timestamp) -> Table:
    table = _table("TARGET", "STATE", "UNTIL", "REASON", "HITS", "QUOTA")
    for gate in gates:
        until = fmt_time(gate.closed_until)
        if is_set(gate.closed_until) and is_set(now):
            left_s = gate.closed_until.seconds - now.seconds
            until += f" (in {left_s}s)" if left_s > 0 else ""
        quota = EMPTY
        if gate.quota_limit:
            quota = f"{gate.quota_used}/{gate.quota_limit} per {gate.quota_window_seconds}s"
        table.add_row(
            fmt_target(gate.target),
            styled("CLOSED" if gate.closed else "open"),
            until if gate.closed else EMPTY,
            gate.reason or EMPTY,
            str(gate.hits),
            quota,
        )
    return table
