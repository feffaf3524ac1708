"""The body of a vault file: the bridge owns the status lines under the title and the
`Execution Results` and `Next Steps` sections; everything else (the Content, a person's own
notes and sections) is kept as the person wrote it."""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from postroom_vault.document import parse_time

TITLE = "# Social Media Post Draft"
_OWNED_LINES = ("**Status**:", "**Created**:", "**Platforms**:")
_OWNED_SECTIONS = ("Execution Results", "Next Steps")

STATUS_LABELS = {
    "pending_approval": "📝 Pending Approval",
    "approved": "👍 Approved",
    "scheduled": "🗓️ Scheduled",
    "publishing": "🔄 Publishing",
    "retry_now": "🔁 Retrying now",
    "partial_failure": "⚠️ Partial Failure",
    "completed": "✅ Completed",
    "failed": "❌ Failed",
    "cancelled": "🚫 Cancelled",
}


def platform_label(name: str) -> str:
    return {"x": "X", "linkedin": "LinkedIn"}.get(name, name.capitalize())


def human_duration(seconds: float) -> str:
    if seconds >= 90:
        minutes = math.ceil(seconds / 60)
        return f"{minutes} minutes" if minutes != 1 else "1 minute"
    whole = max(1, math.ceil(seconds))
    return f"{whole} seconds" if whole != 1 else "1 second"


def _created_line(created_at: object) -> str:
    when = parse_time(created_at)
    if when is None:
        return str(created_at or "")
    hour = when.hour % 12 or 12
    return f"{when:%Y-%m-%d} {hour}:{when:%M} {'AM' if when.hour < 12 else 'PM'}"


def _mark(result: Any) -> str:
    if not isinstance(result, dict) or "success" not in result:
        return "⏳"
    return "✅" if result.get("success") else "❌"


def _platform_items(front: dict[str, Any]) -> list[tuple[str, Any]]:
    platforms = front.get("platforms")
    if isinstance(platforms, dict):
        return list(platforms.items())
    if isinstance(platforms, list):
        return [(str(p), None) for p in platforms]
    return []


def status_lines(front: dict[str, Any]) -> list[str]:
    status = str(front.get("status", ""))
    marks = ", ".join(f"{platform_label(p)} {_mark(r)}" for p, r in _platform_items(front))
    return [
        f"**Status**: {STATUS_LABELS.get(status, status)}",
        f"**Created**: {_created_line(front.get('created_at'))}",
        f"**Platforms**: {marks}",
    ]


def results_section(front: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, result in _platform_items(front):
        out.append(f"### {platform_label(name)} {_mark(result)}")
        if not isinstance(result, dict) or "success" not in result:
            out.append("- **Status**: Waiting")
        elif result.get("success"):
            out.append("- **Status**: Success")
            out.append(f"- **Post ID**: {result.get('post_id', '')}")
            out.append(f"- **URL**: {result.get('url', '')}")
        else:
            out.append("- **Status**: Failed")
            out.append(f"- **Error**: {result.get('error', '')}")
            if "error_code" in result:
                out.append(f"- **Error Code**: {result['error_code']}")
            if "retry_after" in result:
                out.append(f"- **Retry After**: {human_duration(float(result['retry_after']))}")
        if isinstance(result, dict) and "retry_attempt" in result:
            out.append(f"- **Attempt**: {result['retry_attempt']}")
        out.append("")
    return out[:-1] if out else ["Not run yet."]


def next_steps(
    front: dict[str, Any], *, note: str = "", now: dt.datetime | None = None
) -> list[str]:
    status = str(front.get("status", ""))
    failed = [
        platform_label(p)
        for p, r in _platform_items(front)
        if isinstance(r, dict) and r.get("success") is False
    ]
    waiting = " and ".join(failed) or "the failed platforms"
    out: list[str] = []
    if status == "partial_failure":
        retry_at = parse_time(front.get("next_retry_at"))
        if retry_at is not None:
            seconds = (retry_at - (now or dt.datetime.now(dt.UTC))).total_seconds()
            out.append(
                f"The system will automatically retry posting to {waiting} in "
                f"{human_duration(max(seconds, 1))}."
            )
        else:
            out.append(f"Posting to {waiting} failed and will not be retried by itself.")
        out += [
            "",
            "**Manual Retry**: If you want to retry immediately, change "
            "`status: partial_failure` to `status: retry_now` and save.",
            "",
            "**Cancel Retry**: To cancel the retry, change `status: partial_failure` to "
            "`status: cancelled` and save.",
        ]
    elif status == "failed":
        out.append(
            f"Posting to {waiting} failed for good. Edit the content if the platform refused it, "
            "then change `status: failed` to `status: retry_now` and save."
        )
    elif status == "completed":
        out.append("Nothing to do: every platform has the post. This file moved to Done/.")
    elif status == "cancelled":
        out.append("Cancelled: nothing more is published. Platforms marked ✅ keep their post.")
    elif status in ("approved", "scheduled", "publishing", "retry_now"):
        out.append("Publishing. This file is updated as each platform answers.")
        out.append("")
        out.append("**Cancel**: change the status line to `status: cancelled` and save.")
    else:
        out.append("Move this file into Approved/ to publish it.")
    if note:
        out = [f"**Note**: {note}", "", *out]
    return out


def content_of(body: str) -> str:
    """The text of the `## Content` section (the post's text), stripped."""
    sections = _split(body)
    for title, lines in sections[1:]:
        if title == "Content":
            return "\n".join(lines).strip()
    return ""


def _split(body: str) -> list[tuple[str, list[str]]]:
    """(title, lines) per `## ` section; the first entry is the preamble, title ""."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in body.split("\n"):
        match = re.match(r"^## (.+?)\s*$", line)
        if match:
            sections.append((match.group(1), []))
        else:
            sections[-1][1].append(line)
    return sections


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def new_body(front: dict[str, Any], content: str) -> str:
    """A draft's body."""
    return "\n".join(
        [
            "",
            TITLE,
            "",
            *status_lines(front),
            "",
            "## Content",
            "",
            content.strip(),
            "",
            "## Next Steps",
            "",
            *next_steps(front),
            "",
        ]
    )


def rewrite(
    body: str, front: dict[str, Any], *, note: str = "", now: dt.datetime | None = None
) -> str:
    """`body` with the bridge's parts brought up to date and every other line kept."""
    sections = _split(body)
    preamble = [line for line in sections[0][1] if not line.startswith(_OWNED_LINES)]
    preamble = _trim(preamble) or [TITLE]
    head = ["", *preamble, "", *status_lines(front), ""]
    kept = [(t, _trim(lines)) for t, lines in sections[1:] if t not in _OWNED_SECTIONS]
    owned = {
        "Execution Results": results_section(front)
        if isinstance(front.get("platforms"), dict)
        else None,
        "Next Steps": next_steps(front, note=note, now=now),
    }
    out = head
    for title, lines in kept:
        out += [f"## {title}", "", *lines, ""]
    for title in _OWNED_SECTIONS:
        section = owned[title]
        if section is not None:
            out += [f"## {title}", "", *section, ""]
    return "\n".join(out)
