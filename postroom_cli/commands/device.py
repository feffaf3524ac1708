"""`postroom device ...`: the connected workers, and login checks."""

from __future__ import annotations

import argparse

from rich.text import Text

from postroom.v1 import publishing_pb2 as pb
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
        "ask a device to check a login; on success its waiting jobs are requeued",
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
    if ctx.out.json_mode:
        ctx.out.json(message_dict(response))
        return 0
    badge = response.badge
    line = Text.assemble(
        f"{args.platform}:{args.account} on {args.device_id}: ", styled(login_state(badge.state))
    )
    if badge.message:
        line.append(f" ({badge.message})")
    ctx.out.show(line)
    requeued = ", ".join(response.requeued_job_ids)
    ctx.out.show(f"requeued: {requeued}" if requeued else "no jobs requeued")
    return 0
