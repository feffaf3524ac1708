"""`postroom audit export`: the append-only audit log as JSON Lines, paged by sequence number."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO

from postroom.client.bundle import event_dict
from postroom_cli.client import CliError
from postroom_cli.commands import Context, Subparsers, add_group, add_leaf


def register(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    _, sub = add_group(subparsers, "audit", common, "the audit log")
    p = add_leaf(sub, "export", _export, common, "write audit events as JSON Lines, oldest first")
    p.add_argument("--since", default="", metavar="RFC3339", help="only events at or after this")
    p.add_argument("--subject", default="", metavar="ID", help="only events about this id")
    p.add_argument("--action", default="", metavar="A", help="only this action, e.g. GATE_CLOSED")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="FILE")


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
    count = 0
    events = ctx.client.audit_events(since=args.since, subject_id=args.subject, action=args.action)
    for event in events:
        stream.write(json.dumps(event_dict(event), ensure_ascii=False) + "\n")
        count += 1
    return count
