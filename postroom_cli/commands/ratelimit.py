"""`postroom ratelimit ...`: the rate-limit gates of each (platform, account)."""

from __future__ import annotations

import argparse

from postroom.v1 import types_pb2 as t
from postroom_cli.commands import Context, Subparsers, add_group, add_leaf, target_arg
from postroom_cli.render import fmt_target, gates_table, status_line


def register(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    _, sub = add_group(subparsers, "ratelimit", common, "rate-limit gates per platform account")

    p = add_leaf(sub, "list", _list, common, "every gate: open or closed, until when, why")
    p.add_argument("--closed", action="store_true", help="only closed gates")

    p = add_leaf(sub, "reopen", _reopen, common, "reopen a closed gate now (operator override)")
    p.add_argument("target", type=target_arg, metavar="PLATFORM:ACCOUNT")


def _list(args: argparse.Namespace, ctx: Context) -> int:
    response = ctx.client.list_rate_limits(closed_only=args.closed)
    gates = list(response.gates)
    if ctx.out.json_mode:
        ctx.out.json(gates)
    else:
        ctx.out.show(gates_table(gates, response.now))
    return 0


def _reopen(args: argparse.Namespace, ctx: Context) -> int:
    target: t.Target = args.target
    gate = ctx.client.reopen_rate_limit(target.platform, target.account, actor=ctx.actor)
    if ctx.out.json_mode:
        ctx.out.json(gate)
    else:
        state = "CLOSED" if gate.closed else "open"
        ctx.out.show(status_line("gate", fmt_target(target), state))
    return 0
