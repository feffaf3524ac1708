"""`postroom audit export`: the append-only audit log as JSON Lines, paged by sequence number."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO, Any

from postroom.v1 import publishing_pb2 as pb
from postroom.v1 import types_pb2 as t
from postroom_cli.client import CliError
from postroom_cli.commands import Context, Subparsers, add_group, add_leaf
from postroom_cli.render import rfc3339

PAGE_SIZE = 1000


def register(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    _, sub = add_group(subparsers, "audit", common, "the audit log")
    p = add_leaf(sub, "export", _export, common, "write audit events as JSON Lines, oldest first")
    p.add_argument("--since", default="", metavar="RFC3339", help="only events at or after this")
    p.add_argument("--subject", default="", metavar="ID", help="only events about this id")
    p.add_argument("--action", default="", metavar="A", help="only this action, e.g. GATE_CLOSED")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="FILE")


def event_dict(event: t.AuditEvent) -> dict[str, Any]:
    """One JSON Lines record; details become an object so `jq .details.retry_after_s` works."""
    details: Any = {}
    if event.details_json:
        try:
            details = json.loads(event.details_json)
        except ValueError:
            details = event.details_json  # keep what the server said rather than drop it
    return {
        "seq": event.seq,
        "at": rfc3339(event.at),
        "action": event.action,
        "subject_id": event.subject_id,
        "actor": event.actor,
        "details": details,
        "execution_time_ms": event.execution_time_ms,
    }


def _export(args: argparse.Namespace, ctx: Context) -> int:
    path: Path | None = args.output
    if path is None:
        _write_events(args, ctx, sys.stdout)
        return 0
    # Write beside the target and rename at the end: a failed export leaves no half file.
    part = path.with_name(f".{path.name}.part")
    try:
        with part.open("w", encoding="utf-8") as stream:
            count = _write_events(args, ctx, stream)
        part.replace(path)
    except OSError as exc:
        raise CliError("IO", f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        part.unlink(missing_ok=True)
    print(f"exported {count} events to {path}", file=sys.stderr)
    return 0


def _write_events(args: argparse.Namespace, ctx: Context, stream: IO[str]) -> int:
    after_seq = 0
    count = 0
    while True:
        request = pb.ListAuditEventsRequest(
            since=args.since,
            subject_id=args.subject,
            action=args.action,
            after_seq=after_seq,
            page_size=PAGE_SIZE,
        )
        response = ctx.client.list_audit_events(request)
        for event in response.events:
            stream.write(json.dumps(event_dict(event), ensure_ascii=False) + "\n")
        count += len(response.events)
        if not response.events or response.next_after_seq == 0:
            return count
        if response.next_after_seq <= after_seq:  # a server bug would otherwise loop forever
            raise CliError(
                "INTERNAL", f"audit paging did not advance past seq {after_seq}; export incomplete"
            )
        after_seq = response.next_after_seq
