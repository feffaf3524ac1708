"""`postroom token ...`: operator tokens (admin only), and who you are."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich import box
from rich.table import Table

from postroom.v1 import access_pb2 as ac
from postroom_cli.commands import Context, Subparsers, add_group, add_leaf, enum_arg
from postroom_cli.render import EMPTY, enum_label, fmt_time, is_set, message_dict


def register(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    _, sub = add_group(subparsers, "token", common, "operator tokens: who may use the coordinator")

    p = add_leaf(
        sub,
        "create",
        _create,
        common,
        "make an operator token (admin; the first one on an open coordinator turns "
        "authentication on); prints the secret once, on stdout",
    )
    p.add_argument("--name", required=True, help="who it speaks for: the audit log's user:NAME")
    p.add_argument(
        "--role",
        required=True,
        type=enum_arg(ac.Role.DESCRIPTOR, "role"),
        help="viewer, author, approver or admin",
    )

    p = add_leaf(sub, "list", _list, common, "operator tokens (never their secrets)")
    p.add_argument("--all", action="store_true", help="also revoked tokens")

    p = add_leaf(
        sub, "revoke", _revoke, common, "revoke a token by id (t-…), or every token of a name"
    )
    p.add_argument("token", metavar="ID_OR_NAME")

    add_leaf(sub, "whoami", _whoami, common, "the identity and role your token gives you")


def role_label(value: int) -> str:
    return enum_label(ac.Role.DESCRIPTOR, value).lower()


def tokens_table(tokens: Sequence[ac.OperatorToken]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("ID", "NAME", "ROLE", "CREATED", "BY", "REVOKED"):
        table.add_column(column, overflow="fold")
    for t in tokens:
        revoked = fmt_time(t.revoked_at) if is_set(t.revoked_at) else EMPTY
        table.add_row(
            t.id, t.name, role_label(t.role), fmt_time(t.created_at), t.created_by, revoked
        )
    return table


def _create(args: argparse.Namespace, ctx: Context) -> int:
    response = ctx.client.create_token(args.name, args.role)
    if ctx.out.json_mode:
        ctx.out.json({"token": message_dict(response.token), "secret": response.secret})
        return 0
    token = response.token
    print(
        f"token {token.id} for {token.name} ({role_label(token.role)}); shown once, keep it "
        "in a file only you can read (chmod 600) and use it with POSTROOM_TOKEN or --token-file",
        file=sys.stderr,
    )
    print(response.secret, flush=True)
    return 0


def _list(args: argparse.Namespace, ctx: Context) -> int:
    tokens = list(ctx.client.list_tokens(include_revoked=args.all).tokens)
    if ctx.out.json_mode:
        ctx.out.json(tokens)
    else:
        ctx.out.show(tokens_table(tokens))
    return 0


def _revoke(args: argparse.Namespace, ctx: Context) -> int:
    revoked = list(ctx.client.revoke_token(args.token).revoked)
    if ctx.out.json_mode:
        ctx.out.json(revoked)
    else:
        for t in revoked:
            ctx.out.show(f"revoked {t.id} ({t.name}, {role_label(t.role)})")
    return 0


def _whoami(args: argparse.Namespace, ctx: Context) -> int:
    me = ctx.client.who_am_i()
    if ctx.out.json_mode:
        ctx.out.json(me)
    elif me.authenticated:
        ctx.out.show(f"{me.actor} ({role_label(me.role)})")
    else:
        ctx.out.show("no authentication: this coordinator runs open (loopback, no tokens yet)")
    return 0
