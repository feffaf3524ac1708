"""`postroom device ...`: the connected workers, login checks, and enrollment (device tokens)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich import box
from rich.table import Table
from rich.text import Text

from postroom.v1 import access_pb2 as ac
from postroom.v1 import publishing_pb2 as pb
from postroom.v1 import types_pb2 as t
from postroom_cli.client import EXIT_FAILED, EXIT_NEEDS_PERSON, EXIT_OK
from postroom_cli.commands import Context, Subparsers, add_group, add_leaf, target_arg
from postroom_cli.render import (
    EMPTY,
    devices_table,
    fmt_target,
    fmt_time,
    is_set,
    login_state,
    message_dict,
    styled,
)


def register(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    _, sub = add_group(subparsers, "device", common, "workers that connected, and their logins")

    add_leaf(sub, "list", _list, common, "devices with liveness, slots and login badges")

    p = add_leaf(
        sub,
        "check-login",
        _check_login,
        common,
        "ask a device to check a login; on success its waiting jobs are requeued "
        "(exit 3 while the account is still logged out, 1 if the check could not run)",
    )
    p.add_argument("device_id", metavar="DEVICE")
    p.add_argument("--platform", required=True)
    p.add_argument("--account", required=True)

    p = add_leaf(
        sub,
        "enroll",
        _enroll,
        common,
        "enroll a worker (admin): prints its device token once, on stdout; the worker may then "
        "claim only these accounts",
    )
    p.add_argument("name", metavar="NAME", help="the worker's --device-id")
    p.add_argument(
        "--account",
        action="append",
        required=True,
        type=target_arg,
        dest="accounts",
        metavar="PLATFORM:ACCOUNT",
        help="an account it may publish to; PLATFORM:* for every account of a platform; repeat",
    )
    p.add_argument(
        "--rotate",
        action="store_true",
        help="replace the token (and accounts) of an enrolled device; its session ends",
    )

    p = add_leaf(
        sub, "revoke", _revoke, common, "revoke a device: its session ends at once, jobs recovered"
    )
    p.add_argument("name", metavar="NAME")

    p = add_leaf(sub, "enrollments", _enrollments, common, "enrolled devices and their accounts")
    p.add_argument("--all", action="store_true", help="also revoked devices")


def enrollments_table(enrollments: Sequence[ac.DeviceEnrollment]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("DEVICE", "ACCOUNTS", "ENROLLED", "BY", "REVOKED"):
        table.add_column(column, overflow="fold")
    for e in enrollments:
        revoked = fmt_time(e.revoked_at) if is_set(e.revoked_at) else EMPTY
        accounts = ", ".join(fmt_target(a) for a in e.accounts)
        table.add_row(e.name, accounts, fmt_time(e.created_at), e.created_by, revoked)
    return table


def _enroll(args: argparse.Namespace, ctx: Context) -> int:
    response = ctx.client.enroll_device(args.name, args.accounts, rotate=args.rotate)
    if ctx.out.json_mode:
        ctx.out.json({"enrollment": message_dict(response.enrollment), "secret": response.secret})
        return 0
    enrollment = response.enrollment
    accounts = ", ".join(fmt_target(a) for a in enrollment.accounts)
    print(
        f"device {enrollment.name} enrolled for {accounts}; its token is shown once: start the "
        f"worker with --device-id {enrollment.name} and the token in POSTROOM_DEVICE_TOKEN or "
        "--token-file PATH (chmod 600)",
        file=sys.stderr,
    )
    print(response.secret, flush=True)
    return 0


def _revoke(args: argparse.Namespace, ctx: Context) -> int:
    enrollment = ctx.client.revoke_device(args.name)
    if ctx.out.json_mode:
        ctx.out.json(enrollment)
    else:
        ctx.out.show(f"device {enrollment.name} revoked; its session (if any) has ended")
    return 0


def _enrollments(args: argparse.Namespace, ctx: Context) -> int:
    found = list(ctx.client.list_enrollments(include_revoked=args.all).enrollments)
    if ctx.out.json_mode:
        ctx.out.json(found)
    else:
        ctx.out.show(enrollments_table(found))
    return 0


def _list(args: argparse.Namespace, ctx: Context) -> int:
    devices = list(ctx.client.list_devices().devices)
    if ctx.out.json_mode:
        ctx.out.json(devices)
    else:
        ctx.out.show(devices_table(devices))
    return 0


def _check_login(args: argparse.Namespace, ctx: Context) -> int:
    request = pb.CheckLoginRequest(
        device_id=args.device_id, platform=args.platform, account=args.account, actor=ctx.actor
    )
    response = ctx.client.check_login(request)
    # Logged out: a person must log in (3). Unknown: the check itself did not complete (1).
    code = {
        t.LOGIN_STATE_LOGGED_IN: EXIT_OK,
        t.LOGIN_STATE_NEEDS_LOGIN: EXIT_NEEDS_PERSON,
    }.get(response.badge.state, EXIT_FAILED)
    if ctx.out.json_mode:
        ctx.out.json(message_dict(response))
        return code
    badge = response.badge
    line = Text.assemble(
        f"{args.platform}:{args.account} on {args.device_id}: ", styled(login_state(badge.state))
    )
    if badge.message:
        line.append(f" ({badge.message})")
    ctx.out.show(line)
    requeued = ", ".join(response.requeued_job_ids)
    ctx.out.show(f"requeued: {requeued}" if requeued else "no jobs requeued")
    if code == EXIT_NEEDS_PERSON:
        ctx.out.show(
            f"still not logged in: log {args.platform}:{args.account} in on {args.device_id} "
            "(browser workers: postroom browser-login), then check again"
        )
    return code
