"""Serve the sandbox app over real HTTP with uvicorn: in-process (`serve`) or as a command (`main`).

`serve` binds the socket itself, so a port-0 caller learns the real port (from `task_status`, or
the ready file another process polls) and a busy port is a plain `OSError` rather than uvicorn's
`sys.exit`. It never touches process signals; `run_sandbox` maps SIGINT/SIGTERM to a clean stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import anyio
import uvicorn
from anyio.abc import TaskStatus

from postroom.address import is_loopback_host
from sandbox import ENV_ADMIN_TOKEN
from sandbox.app import Clock, create_app, sandbox_state

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
# Backstop only: hanging requests are released as soon as shutdown begins.
DEFAULT_GRACEFUL_SHUTDOWN_SECONDS = 2


@dataclass(frozen=True)
class SandboxAddress:
    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class _Server(uvicorn.Server):
    """uvicorn with a readiness event, no signal handling, and a hook when shutdown begins."""

    def __init__(self, config: uvicorn.Config, *, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self.startup_done = asyncio.Event()
        self._on_shutdown = on_shutdown

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # signals belong to whoever embeds the server

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.startup_done.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets=sockets)


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )[0]
    # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it every keep-alive request waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


def _write_ready_file(path: Path, port: int) -> None:
    # Write then rename, so a poller never reads a half-written port.
    partial_path = path.with_name(f"{path.name}.partial")
    partial_path.write_text(f"{port}\n")
    os.replace(partial_path, path)


async def serve(
    *,
    host: str = DEFAULT_HOST,
    port: int = 0,
    ready_file: Path | None = None,
    clock: Clock = time.time,
    admin_token: str = "",
    task_status: TaskStatus[SandboxAddress] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a fresh sandbox until cancelled; reports its `SandboxAddress` once accepting.
    With `admin_token`, the admin API needs it (`Authorization: Bearer`).

    Use as ``address = await task_group.start(partial(serve, port=0))``; cancel the task group
    to stop it. Requires the asyncio backend (uvicorn does).
    """
    app = create_app(clock=clock, admin_token=admin_token)
    sock = _bind(host, port)
    config = uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,
        log_config=None,  # leave the embedding process's logging alone
        timeout_graceful_shutdown=DEFAULT_GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = _Server(config, on_shutdown=sandbox_state(app).closing.set)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await server.startup_done.wait()
        if not server.started:
            await task  # surfaces the startup error
            raise OSError(f"sandbox could not start on {host}:{port}")
        address = SandboxAddress(host=host, port=sock.getsockname()[1])
        if ready_file is not None:
            _write_ready_file(ready_file, address.port)
        task_status.started(address)
        # asyncio.wait, unlike awaiting the task, leaves it running when we are cancelled.
        await asyncio.wait({task})
        task.result()
    finally:
        server.should_exit = True
        with anyio.CancelScope(shield=True):
            await asyncio.wait({task})
        sock.close()
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as lost


class _Announce:
    """The task status `run_sandbox` hands to `serve`: tells the person at the terminal."""

    def started(self, value: SandboxAddress | None = None) -> None:
        assert value is not None
        print(f"sandbox listening on {value.base_url}", flush=True)


async def _serve_until_signalled(
    *, host: str, port: int, ready_file: Path | None, admin_token: str
) -> None:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    # A cancel scope rather than a task group, so a bind error stays a plain OSError.
    with anyio.CancelScope() as scope:
        for signum in signals:
            loop.add_signal_handler(signum, scope.cancel)
        try:
            await serve(
                host=host,
                port=port,
                ready_file=ready_file,
                admin_token=admin_token,
                task_status=_Announce(),
            )
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)


def run_sandbox(*, host: str, port: int, ready_file: Path | None, admin_token: str = "") -> None:
    """Serve until SIGINT or SIGTERM, then drain and return. Raises OSError if it cannot bind."""
    asyncio.run(
        _serve_until_signalled(host=host, port=port, ready_file=ready_file, admin_token=admin_token)
    )


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:0`` for IPv6) into its parts."""
    host, sep, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port_text)


def _admin_token(path: Path | None) -> str:
    if path is None:
        return os.environ.get(ENV_ADMIN_TOKEN, "").strip()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"--admin-token-file {path}: {reason}") from None
    if not token:
        raise ValueError(f"--admin-token-file {path} is empty")
    return token


def main(argv: list[str], *, prog: str = "postroom sandbox") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Local stand-ins for social platforms, with fault injection.",
    )
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=(DEFAULT_HOST, DEFAULT_PORT),
        metavar="HOST:PORT",
        help=f"where to serve; port 0 picks a free one (default {DEFAULT_HOST}:{DEFAULT_PORT})",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help="once accepting connections, write the bound port to PATH",
    )
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        metavar="PATH",
        help=f"the admin API (/admin, _standin) then needs this file's token as a bearer token "
        f"(else env {ENV_ADMIN_TOKEN}; required when listening beyond loopback)",
    )
    parser.add_argument(
        "--insecure-no-admin-token",
        action="store_true",
        help="serve the admin API beyond loopback without a token",
    )
    args = parser.parse_args(argv)
    host, port = args.listen
    try:
        admin_token = _admin_token(args.admin_token_file)
    except ValueError as exc:
        parser.error(str(exc))
    if not admin_token and not is_loopback_host(host) and not args.insecure_no_admin_token:
        parser.error(
            f"--listen {host}:{port} is beyond loopback: give the admin API a token "
            f"(--admin-token-file PATH or {ENV_ADMIN_TOKEN}), or --insecure-no-admin-token"
        )
    logging.basicConfig(level=logging.WARNING, format="sandbox: %(levelname)s %(message)s")
    try:
        run_sandbox(host=host, port=port, ready_file=args.ready_file, admin_token=admin_token)
    except OSError as exc:
        print(f"sandbox: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0
