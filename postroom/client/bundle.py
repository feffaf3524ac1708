"""The escalation bundle of a job: one zip a person can attach to a report.

README.txt              what happened, in a few lines, and what is in the zip
job.json, post.json     the job and its post (protobuf JSON, proto field names)
device.json             the device of its latest run (when the coordinator knows it)
runs/<n>-<run>/run.json each run; logs.txt beside it, one step log line a line
screenshots/<run>/...   every screenshot of every run, as downloaded (sha256-checked)
audit.jsonl             the audit entries about the job, its post, its runs and device
"""

from __future__ import annotations

import datetime as dt
import json
import mimetypes
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from postroom.client.errors import NotFound, PostroomError
from postroom.v1 import types_pb2 as t

if TYPE_CHECKING:
    from postroom.client.sync import Client


def message_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def stamp(ts: Timestamp, unset: str = "-") -> str:
    """RFC 3339 in UTC (`2026-11-24T18:00:06Z`), as the CLI's JSON writes times."""
    return ts.ToJsonString() if ts.seconds or ts.nanos else unset


def event_dict(event: t.AuditEvent) -> dict[str, Any]:
    """One audit record; details become an object so `jq .details.retry_after_s` works."""
    details: Any = {}
    if event.details_json:
        try:
            details = json.loads(event.details_json)
        except ValueError:
            details = event.details_json  # keep what the server said rather than drop it
    return {
        "seq": event.seq,
        "at": stamp(event.at, ""),
        "action": event.action,
        "subject_id": event.subject_id,
        "actor": event.actor,
        "details": details,
        "execution_time_ms": event.execution_time_ms,
    }


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2) + "\n"


def _device(client: Client, job: t.Job) -> t.Device | None:
    wanted = job.device_id or (job.runs[-1].device_id if job.runs else "")
    if not wanted:
        return None
    return next((d for d in client.list_devices().devices if d.id == wanted), None)


def _audit(client: Client, subjects: list[str]) -> list[t.AuditEvent]:
    seen: dict[int, t.AuditEvent] = {}
    for subject in subjects:
        for event in client.audit_events(subject_id=subject):
            seen[event.seq] = event
    return [seen[seq] for seq in sorted(seen)]


def _log_text(run: t.Run) -> str:
    level = t.LogLevel.Name
    lines = [
        f"{stamp(line.at)} {level(line.level).removeprefix('LOG_LEVEL_'):<7} "
        f"{line.step}: {line.message}"
        for line in run.logs
    ]
    return "".join(line + "\n" for line in lines)


def _screenshot_name(shot: t.Screenshot, index: int) -> str:
    ext = mimetypes.guess_extension(shot.content_type or "") or ".bin"
    label = "".join(c if c.isalnum() or c in "-_" else "_" for c in shot.label)[:40]
    return f"{index:02d}-{label or 'screenshot'}{ext}"


def readme(job: t.Job, post: t.Post | None, device: t.Device | None, names: list[str]) -> str:
    status = t.JobStatus.Name(job.status).removeprefix("JOB_STATUS_")
    lines = [
        f"postroom escalation bundle for job {job.id}",
        f"written {dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()}",
        "",
        f"target:   {job.platform}:{job.account}",
        f"post:     {job.post_id}" + (f" ({post.text[:60]!r})" if post is not None else ""),
        f"status:   {status} after {job.attempt} attempt(s) of {job.max_attempts or '-'}",
    ]
    if job.last_error:
        error_class = t.ErrorClass.Name(job.last_error_class).removeprefix("ERROR_CLASS_")
        lines.append(f"error:    {error_class}: {job.last_error}")
    if job.result_url:
        lines.append(f"live at:  {job.result_url}")
    if job.resolved_by:
        lines.append(f"resolved by hand by {job.resolved_by}")
    lines.append(f"device:   {device.id if device is not None else job.device_id or '-'}")
    lines += ["", "runs:"]
    for run in job.runs:
        outcome = run.outcome or "running"
        failed = f", failed at {run.failed_step}" if run.failed_step else ""
        if run.error:
            error_class = t.ErrorClass.Name(run.error_class).removeprefix("ERROR_CLASS_")
            failed += f" ({error_class}: {run.error})"
        lines.append(
            f"  attempt {run.attempt} on {run.device_id or '-'}: {outcome}{failed};"
            f" {len(run.logs)} log lines, {len(run.screenshots)} screenshots"
        )
    lines += ["", "files:"] + [f"  {name}" for name in names]
    return "\n".join(lines) + "\n"


def write_bundle(client: Client, job_id: str, path: Path) -> list[str]:
    """Write the bundle of `job_id` to `path` (beside it first, renamed at the end); the names
    of the files in it, README.txt first."""
    job = client.get_job(job_id)
    try:
        post: t.Post | None = client.get_post(job.post_id)
    except NotFound:
        post = None  # deleted since: the job still says what happened
    device = _device(client, job)
    subjects = [job.id, job.post_id, *(run.id for run in job.runs)]
    if device is not None:
        subjects.append(device.id)
    events = _audit(client, subjects)
    entries: list[tuple[str, bytes]] = []

    def add(name: str, text: str) -> None:
        entries.append((name, text.encode("utf-8")))

    add("job.json", _json(message_dict(job)))
    if post is not None:
        add("post.json", _json(message_dict(post)))
    if device is not None:
        add("device.json", _json(message_dict(device)))
    part = path.with_name(f".{path.name}.part")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for run in job.runs:
                folder = f"{run.attempt}-{run.id}"
                add(f"runs/{folder}/run.json", _json(message_dict(run)))
                add(f"runs/{folder}/logs.txt", _log_text(run))
                for index, shot in enumerate(run.screenshots, start=1):
                    local = Path(tmp) / f"{run.id}-{index}"
                    client.download_screenshot(shot.asset_id, local)
                    name = f"screenshots/{folder}/{_screenshot_name(shot, index)}"
                    entries.append((name, local.read_bytes()))
        add("audit.jsonl", "".join(json.dumps(event_dict(e)) + "\n" for e in events))
        names = [name for name, _ in entries]
        # README.txt first: what a person opens the zip for.
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as bundle:
            bundle.writestr("README.txt", readme(job, post, device, ["README.txt", *names]))
            for name, data in entries:
                bundle.writestr(name, data)
        part.replace(path)
    except OSError as exc:
        raise PostroomError("IO", f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        part.unlink(missing_ok=True)
    return ["README.txt", *names]
