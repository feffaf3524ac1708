"""`postroom console`: serve the operators' web console (postroom_console) over HTTP.

It listens on loopback only: it serves plain HTTP and signed-in sessions, so reaching it from
elsewhere goes through a TLS proxy on the same host. People sign in with their operator tokens;
`--token-file` (or `--single-user` with POSTROOM_TOKEN) makes a single-user console that uses
one token for every request and asks nobody to sign in.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import sys
from pathlib import Path

import uvicorn

from postroom.address import is_loopback_host, split_host_port
from postroom.client.errors import PostroomError
from postroom.client.settings import coordinator_address
from postroom.tls import ClientTls, TlsError
from postroom_cli.credentials import operator_token
from postroom_console import ConsoleConfig, create_app

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_BACKLOG = 128


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="postroom console",
        description="Serve the operators' web console: posts, jobs, gates, devices, audit.",
    )
    p.add_argument("--coordinator", default=None, help="ADDRESS (env POSTROOM_COORDINATOR)")
    p.add_argument(
        "--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT on loopback (default {DEFAULT_LISTEN})"
    )
    p.add_argument("--token-file", type=Path, help="single-user: every request uses this token")
    p.add_argument(
        "--single-user", action="store_true", help="single-user with the token in POSTROOM_TOKEN"
    )
    p.add_argument("--token", dest="token_flag", help=argparse.SUPPRESS)
    p.add_argument("--ready-file", type=Path, help="write the port here once serving")
    p.add_argument("--ca", type=Path, help="CA bundle of the coordinator (env POSTROOM_CA)")
    p.add_argument("--tls-cert", type=Path, help="client certificate (env POSTROOM_TLS_CERT)")
    p.add_argument("--tls-key", type=Path, help="the certificate's key (env POSTROOM_TLS_KEY)")
    p.add_argument(
        "--insecure-plaintext",
        action="store_true",
        help="talk plaintext to a coordinator beyond loopback",
    )
    return p


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ConsoleConfig:
    if args.token_flag is not None:
        parser.error(
            "--token is not taken (a command line shows in `ps`): use --token-file, or "
            "POSTROOM_TOKEN with --single-user"
        )
    token = None
    if args.token_file is not None or args.single_user:
        try:
            token = operator_token(args.token_file)
        except PostroomError as exc:
            parser.error(exc.message)
    try:
        tls = ClientTls.from_env(
            ca=args.ca,
            cert=args.tls_cert,
            key=args.tls_key,
            insecure_plaintext=args.insecure_plaintext,
        )
    except TlsError as exc:
        parser.error(str(exc))
    return ConsoleConfig(
        coordinator=args.coordinator or coordinator_address(), token=token, tls=tls
    )


def _bind(listen: str, parser: argparse.ArgumentParser) -> socket.socket:
    try:
        host, port = split_host_port(listen)
    except ValueError as exc:
        parser.error(f"--listen: {exc}")
    if not is_loopback_host(host):
        parser.error(
            f"--listen {listen}: the console serves plain HTTP, so it listens on loopback only "
            "(127.0.0.1 or ::1); put a TLS proxy in front to reach it from elsewhere"
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(DEFAULT_BACKLOG)  # connections wait in the backlog until uvicorn serves
    except OSError as exc:
        sock.close()
        parser.error(f"--listen {listen}: {exc.strerror}")
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    base = _config(args, parser)  # refusals first: nothing is bound for a bad command line
    sock = _bind(args.listen, parser)
    host, port = sock.getsockname()[:2]

    def ready() -> None:
        if args.ready_file is not None:
            args.ready_file.write_text(f"{port}\n")

    config = dataclasses.replace(base, on_ready=ready)
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), log_level="warning", lifespan="on", access_log=False)
    )
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    print(f"postroom console: {url} (coordinator {config.coordinator})", flush=True)

    asyncio.run(server.serve(sockets=[sock]))
    # A failed start-up (the coordinator refused the single-user token...) is in uvicorn's log.
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
