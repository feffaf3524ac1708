"""`postroom device ...`: the connected workers, and login checks."""

from __future__ import annotations

import argparse

from rich.text import Text

from postroom.v1 import publishing_pb2 as pb
from postroom.v1 import types_pb2 as t
from postroom_cli.client import EXIT_FAILED, EXIT_NEEDS_PERSON, EXIT_OK
from postroom_cli.commands import Context, Subparsers, add_group, add_leaf
from postroom_cli.render import devices_table, login_state, message_dict, styled


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
