"""Entry point of the `postroom` command.

Operator commands (post, job, device, audit, ratelimit) are gRPC calls to a coordinator. The
process commands (coordinator, worker, sandbox, demo) belong to other packages: their argv is
handed over untouched, and their modules are imported only when asked for, so that
`postroom job list` never loads a server.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from postroom.tls import ClientTls
from postroom_cli import __version__
from postroom_cli.client import (
    DEFAULT_COORDINATOR,
    DEFAULT_TIMEOUT_S,
    CliError,
    PublishingClient,
    exit_code,
)
from postroom_cli.commands import (
    Context,
    Handler,
    audit,
    default_actor,
    device,
    job,
    post,
    ratelimit,
    token,
)
from postroom_cli.credentials import operator_token
from postroom_cli.render import Output

EXIT_INTERRUPTED = 130

# command -> (module, function, help); each function takes the remaining argv, returns an exit code.
DELEGATED: dict[str, tuple[str, str, str]] = {
    "coordinator": ("coordinator.main", "main", "run the coordinator (gRPC server, /metrics)"),
    "worker": ("worker.main", "main", "run a worker (--kind api|browser)"),
    "sandbox": ("sandbox.server", "main", "run the platform stand-ins with fault injection"),
    "demo": ("postroom_cli.demo", "main", "start everything locally and publish a few posts"),
    "console": ("postroom_cli.commands.console", "main", "serve the operators' web console"),
    "vault": ("postroom_vault.cli", "main", "Markdown vault workflow (draft, watch)"),
    "browser-login": (
        "postroom_cli.browser_login",
        "main",
        "log a browser account in, in its worker profile (opens Chromium)",
    ),
}
_GLOBAL_OPTIONS_WITH_VALUE = (
    "--coordinator",
    "--timeout",
    "--as",
    "--token-file",
    "--token",
    "--ca",
    "--tls-cert",
    "--tls-key",
)


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {value!r}")
    return seconds


def _global_options(*, suppress: bool) -> argparse.ArgumentParser:
    """The options every operator command takes, before or after its name.

    Subcommand parsers get a copy whose defaults are SUPPRESSed: otherwise a subparser's default
    would overwrite a value given before the subcommand (`postroom --json job list`).
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("global options")
    _add_call_options(group, default)
    _add_identity_options(group, default)
    _add_tls_options(group, default)
    return parser


_Default = Callable[[object], object]


def _add_call_options(group: argparse._ArgumentGroup, default: _Default) -> None:
    """Where the coordinator is, how long a call may take, how answers are printed."""
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=default(os.environ.get("POSTROOM_COORDINATOR") or DEFAULT_COORDINATOR),
        help=f"coordinator address (env POSTROOM_COORDINATOR; default {DEFAULT_COORDINATOR})",
    )
    group.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    group.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        default=default(DEFAULT_TIMEOUT_S),
        help=f"deadline per call (default {DEFAULT_TIMEOUT_S:g})",
    )


def _add_identity_options(group: argparse._ArgumentGroup, default: _Default) -> None:
    """Who is asking: the name for the audit log, the operator token."""
    group.add_argument(
        "--as",
        dest="actor",
        metavar="NAME",
        default=default(""),
        help="who the audit log names where the coordinator runs without tokens (env "
        "POSTROOM_ACTOR; default your login); with a token, the token's name is used",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        default=default(None),
        help="a file holding your operator token (else env POSTROOM_TOKEN or POSTROOM_TOKEN_FILE)",
    )
    # Refused with a pointer (a command line shows in `ps`); without it argparse would take
    # `--token X` as an abbreviation of --token-file.
    group.add_argument("--token", dest="token_flag", default=default(None), help=argparse.SUPPRESS)


def _add_tls_options(group: argparse._ArgumentGroup, default: _Default) -> None:
    def path(flag: str, text: str) -> None:
        group.add_argument(flag, type=Path, metavar="PATH", default=default(None), help=text)

    path("--ca", "CA certificate of a TLS coordinator (env POSTROOM_CA)")
    path(
        "--tls-cert",
        "client certificate, for a coordinator that requires one (env POSTROOM_TLS_CERT)",
    )
    path("--tls-key", "the client certificate's key (env POSTROOM_TLS_KEY)")
    group.add_argument(
        "--insecure-plaintext",
        action="store_true",
        default=default(False),
        help="talk plaintext to a coordinator beyond loopback (default: TLS there)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postroom",
        description="Publish social posts to many platforms through workers; never post twice.",
        parents=[_global_options(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"postroom {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    common = _global_options(suppress=True)
    for group in (post, job, device, audit, ratelimit, token):
        group.register(subparsers, common)
    for name, (_, _, help_text) in DELEGATED.items():
        # Listed for --help only: main() hands these over before argparse sees them.
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _find_delegated(argv: Sequence[str]) -> tuple[str, int] | None:
    """The process command named by argv, if any, and its index (after any global options)."""
    index = 0
    while index < len(argv):
        token = argv[index]
        if token in DELEGATED:
            return token, index
        if token in _GLOBAL_OPTIONS_WITH_VALUE:
            index += 2
        elif token.startswith("-"):
            index += 1
        else:
            return None
    return None


def _run_delegated(name: str, argv: list[str]) -> int:
    module_name, function_name, _ = DELEGATED[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only "that package is missing" is ours to report; a broken import inside it is a bug.
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise
        raise CliError("UNIMPLEMENTED", f"`postroom {name}` is not available here ({exc})") from exc
    entry = cast(Callable[[list[str]], int], getattr(module, function_name))
    return entry(argv)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)  # sys.exit("message"), as Python itself would
    return 1


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main(args_list)
    except CliError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `postroom audit export | head`: the reader left; stop quietly, and keep Python's own
        # flush at exit from failing on the same pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        delegated = _find_delegated(argv)
        if delegated is not None:
            name, index = delegated
            if index:
                parser.error(f"`{name}` takes its own options; put them after `postroom {name}`")
            return _run_delegated(name, argv[index + 1 :])
        args = parser.parse_args(argv)
        if args.token_flag is not None:
            parser.error(
                "--token is not taken (a command line shows in `ps`): put the operator token in "
                "POSTROOM_TOKEN, or in a file given with --token-file"
            )
        handler: Handler = args.handler
        out = Output(json_mode=args.json)
        tls = ClientTls.from_env(
            ca=args.ca,
            cert=args.tls_cert,
            key=args.tls_key,
            insecure_plaintext=args.insecure_plaintext,
        )
        token = operator_token(args.token_file)
        with PublishingClient(args.coordinator, timeout_s=args.timeout, token=token, tls=tls) as (
            client
        ):
            ctx = Context(client=client, out=out, actor=args.actor or default_actor())
            return handler(args, ctx)
    except SystemExit as exc:  # --help, --version and usage errors (argparse exits with 2)
        return _exit_code(exc)
