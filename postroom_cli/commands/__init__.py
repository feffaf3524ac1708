"""Command groups of `postroom`: each module has `register(subparsers, common)`.

A leaf parser stores its handler as `handler`; `main` calls `handler(args, ctx)` and prints any
`CliError` it raises. Argument types here turn bad input into argparse usage errors (exit 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, TypeAlias, TypeVar

from google.protobuf.descriptor import EnumDescriptor

from postroom.client.settings import default_actor as default_actor  # used by main
from postroom.v1 import types_pb2
from postroom_cli.client import PublishingClient
from postroom_cli.render import Output, enum_label, enum_names


@dataclass(frozen=True)
class Context:
    client: PublishingClient
    out: Output
    # Who the audit log names for this invocation's changes.
    actor: str


_Item = TypeVar("_Item")
Handler = Callable[[argparse.Namespace, Context], int]
# A string: argparse's class is generic only in typeshed, not at runtime.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def target_arg(value: str) -> types_pb2.Target:
    """PLATFORM:ACCOUNT, split at the first colon (account handles may contain '@' and '.')."""
    platform, sep, account = value.partition(":")
    if not sep or not platform.strip() or not account.strip():
        raise argparse.ArgumentTypeError(
            f"expected PLATFORM:ACCOUNT (e.g. mastodon:@news@example.social), got {value!r}"
        )
    return types_pb2.Target(platform=platform.strip(), account=account.strip())


def enum_arg(descriptor: EnumDescriptor, what: str) -> Callable[[str], int]:
    """An argparse type accepting `queued`, `QUEUED` or `JOB_STATUS_QUEUED`."""

    def parse(value: str) -> int:
        wanted = value.strip().upper()
        for entry in descriptor.values:
            if entry.number and wanted in (entry.name, enum_label(descriptor, entry.number)):
                return int(entry.number)
        choices = ", ".join(enum_names(descriptor))
        raise argparse.ArgumentTypeError(f"unknown {what} {value!r}; one of: {choices}")

    return parse


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value!r}")
    return number


def add_leaf(
    subparsers: Subparsers,
    name: str,
    handler: Handler,
    common: argparse.ArgumentParser,
    help_text: str,
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, parents=[common], help=help_text, description=help_text)
    parser.set_defaults(handler=handler, leaf_parser=parser)
    return parser


def add_group(
    subparsers: Subparsers, name: str, common: argparse.ArgumentParser, help_text: str
) -> tuple[argparse.ArgumentParser, Subparsers]:
    parser = subparsers.add_parser(name, parents=[common], help=help_text, description=help_text)
    children = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    return parser, children


def usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """A usage error found after parsing (flag combinations): argparse's message, exit 2."""
    parser: argparse.ArgumentParser = args.leaf_parser
    parser.error(message)


MAX_PAGE_SIZE = 1000


def collect_pages(
    fetch: Callable[[int, str], tuple[Sequence[_Item], str]], limit: int
) -> list[_Item]:
    """Follow page tokens until `limit` items or the last page; `fetch(page_size, token)`."""
    items: list[_Item] = []
    token = ""
    while len(items) < limit:
        page, token = fetch(min(limit - len(items), MAX_PAGE_SIZE), token)
        items.extend(page)
        if not token or not page:
            break
    return items[:limit]
