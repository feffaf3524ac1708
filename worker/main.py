"""`postroom worker ...`: parse the command line once, wire the worker up, run it until SIGTERM.

    postroom worker --coordinator HOST:PORT[,HOST:PORT...] --device-id ID [--token-file PATH]
        --kind api|browser
        [--ca PATH] [--tls-cert PATH --tls-key PATH]
        [--accounts FILE] [--media-dir DIR ...] [--platform P[:ACCOUNT] ... --sandbox-url URL]
        [--profiles-dir DIR] [--headed]
        --concurrency N --metrics-listen HOST:PORT
        [--request-timeout-s 10] [--drain-timeout-s 60] [--log-format text|json]

The device token (`postroom device enroll`) comes from POSTROOM_DEVICE_TOKEN or --token-file,
never from a flag value: a command line shows in `ps`.

`--accounts` names the real accounts this worker publishes to (worker/accounts.py: TOML with
credentials as env:/file: references); `--platform` names sandbox platforms served by
`--sandbox-url`. A worker may have both. An account with a `playbook` is a browser account
(worker/browser/): it needs `--kind browser`, publishes through Chromium, and keeps its login in
`--profiles-dir` (put there by `postroom browser-login`).

Several coordinators (`--coordinator a:50051,b:50051`, or a DNS name with several addresses):
the worker dials them in turn and, when its stream breaks, moves on to the next one, telling
it in Hello which jobs it still holds (worker/dialing.py).

Prints `worker ID ready (coordinator HOST:PORT) metrics http://HOST:PORT/metrics` on stdout once
the first Welcome arrives. Exit status: 0 after a drain (SIGTERM/SIGINT; a second signal stops at
once), 2 for a bad command line or a coordinator that refuses the worker.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from anyio.abc import TaskGroup
from opentelemetry.trace import NoOpTracer, Tracer
from prometheus_client import CollectorRegistry

from postroom.address import split_host_port
from postroom.clock import Clock, SystemClock
from postroom.logs import configure_logging
from postroom.metrics_http import MetricsServer, serve_metrics
from postroom.tls import ENV_CA, ENV_CLIENT_CERT, ENV_CLIENT_KEY, ClientTls, TlsError
from postroom.tracing import exporters_from_env, make_tracer_provider
from worker.accounts import AccountConfig, AccountsError, load_accounts
from worker.adapters.base import AdapterRegistry
from worker.adapters.noop import noop_factory
from worker.adapters.sandbox import sandbox_factory
from worker.browser.adapter import browser_adapters
from worker.browser.host import (
    DEFAULT_PROFILES_DIR,
    BrowserAccount,
    BrowserHost,
    browser_account,
    is_browser_account,
)
from worker.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_LOG_LEVEL,
    DEFAULT_METRICS_LISTEN,
    DEFAULT_REQUEST_TIMEOUT_S,
    Capability,
    WorkerConfig,
)
from worker.errors import SessionRefused, Transient
from worker.media import MediaLoader
from worker.metrics import WorkerMetrics
from worker.platforms.base import AccountHost, PlatformContext, load_job_adapter
from worker.redact import RedactingFilter, Redactor
from worker.shell import Worker

log = logging.getLogger("postroom.worker")

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_USAGE = 2
ENV_DEVICE_TOKEN = "POSTROOM_DEVICE_TOKEN"


def build_parser(prog: str = "postroom worker") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run a postroom worker.")
    _coordinator_options(p.add_argument_group("the coordinator"))
    _account_options(p.add_argument_group("what it publishes to"))
    run = p.add_argument_group("how it runs")
    run.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N")
    run.add_argument("--metrics-listen", default=DEFAULT_METRICS_LISTEN, metavar="HOST:PORT")
    run.add_argument("--request-timeout-s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S)
    run.add_argument("--drain-timeout-s", type=float, default=DEFAULT_DRAIN_TIMEOUT_S)
    run.add_argument("--log-format", choices=("text", "json"), default="text")
    run.add_argument("--log-level", default=DEFAULT_LOG_LEVEL)
    return p


def _coordinator_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--coordinator",
        required=True,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="the coordinator, or several separated by commas (tried in turn; a name may also "
        "have several DNS addresses, e.g. dns:///coordinators.example:50051)",
    )
    g.add_argument("--device-id", required=True, metavar="ID", help="stable worker identity")
    g.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help=f"a file holding this device's token (else env {ENV_DEVICE_TOKEN})",
    )
    # Refused with a pointer: a secret on the command line shows in `ps` and shell history.
    g.add_argument("--token", help=argparse.SUPPRESS)
    g.add_argument(
        "--ca",
        type=Path,
        metavar="PATH",
        help=f"CA certificate of a TLS coordinator (env {ENV_CA})",
    )
    g.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PATH",
        help=f"this worker's certificate, for mutual TLS (env {ENV_CLIENT_CERT})",
    )
    g.add_argument(
        "--tls-key", type=Path, metavar="PATH", help=f"the certificate's key (env {ENV_CLIENT_KEY})"
    )
    g.add_argument(
        "--insecure-plaintext",
        action="store_true",
        help="dial a coordinator beyond loopback without TLS",
    )


def _account_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--kind", choices=("api", "browser"), default="api")
    g.add_argument(
        "--accounts",
        type=Path,
        metavar="FILE",
        help="TOML file of real platform accounts and their credential references",
    )
    g.add_argument(
        "--media-dir",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="folder that media file names in posts are looked up in; repeatable",
    )
    g.add_argument(
        "--allow-inline-credentials",
        action="store_true",
        help="accept credential values written into the accounts file (local test servers only)",
    )
    g.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="PLATFORM[:ACCOUNT]",
        help="a sandbox platform (any account) or platform:account to serve; repeatable",
    )
    g.add_argument(
        "--sandbox-url", metavar="URL", help="route every platform to this sandbox server"
    )
    g.add_argument(
        "--noop",
        action="store_true",
        help="publish nowhere: every commit succeeds at once (benchmarks, dry runs)",
    )
    g.add_argument(
        "--profiles-dir",
        type=Path,
        default=DEFAULT_PROFILES_DIR,
        metavar="DIR",
        help="browser accounts' logins, one folder per platform/account (postroom browser-login)",
    )
    g.add_argument(
        "--headed",
        action="store_true",
        help="show the browser window (needs a display); default headless",
    )


def config_from_args(
    args: argparse.Namespace, accounts: tuple[AccountConfig, ...] = ()
) -> WorkerConfig:
    sandboxed = tuple(dict.fromkeys(Capability.parse(p) for p in args.platform))
    real = {a.platform for a in accounts}
    for cap in sandboxed:
        if cap.platform in real:
            raise ValueError(
                f"--platform {cap.platform} is also in --accounts; a platform is served either "
                "by its real accounts or by the sandbox, not both"
            )
    plugged = {cap.platform for cap in sandboxed if load_job_adapter(cap.platform) is not None}
    if any(cap.platform not in plugged for cap in sandboxed) and not (
        args.sandbox_url or args.noop
    ):
        raise ValueError(
            "--platform needs --sandbox-url (or --noop); real accounts go in --accounts"
        )
    return WorkerConfig(
        coordinator=args.coordinator,
        device_id=args.device_id,
        token=device_token(args),
        tls=ClientTls.from_env(
            ca=args.ca,
            cert=args.tls_cert,
            key=args.tls_key,
            insecure_plaintext=args.insecure_plaintext,
        ),
        kind=args.kind,
        per_account_slots=1 if args.kind == "browser" else 0,
        capabilities=sandboxed + tuple(Capability(a.platform, a.account) for a in accounts),
        concurrency=args.concurrency,
        metrics_listen=args.metrics_listen,
        sandbox_url=args.sandbox_url,
        noop=args.noop,
        request_timeout_s=args.request_timeout_s,
        drain_timeout_s=args.drain_timeout_s,
        log_format=args.log_format,
        log_level=args.log_level,
    )


def device_token(args: argparse.Namespace) -> str:
    """--token-file, else POSTROOM_DEVICE_TOKEN; "" for a coordinator without device tokens."""
    if args.token is not None:
        raise ValueError(
            f"--token is not taken (a command line shows in `ps`): put the device token in "
            f"{ENV_DEVICE_TOKEN} or a file given with --token-file"
        )
    if args.token_file is None:
        return os.environ.get(ENV_DEVICE_TOKEN, "").strip()
    try:
        text = args.token_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"--token-file {args.token_file}: {reason}") from None
    token = str(text).strip()
    if not token or "\n" in token:
        raise ValueError(f"--token-file {args.token_file}: expected one line holding the token")
    return token


def build_adapters(
    config: WorkerConfig,
    *,
    clock: Clock,
    metrics: WorkerMetrics | None,
    host: AccountHost | None = None,
    browser_host: BrowserHost | None = None,
) -> AdapterRegistry:
    """Every platform this worker serves -> its adapter: the real accounts' platforms through
    the account host, a platform another package adds through its plug-in, the rest through
    the sandbox (or nowhere, with --noop)."""
    if config.noop:
        return AdapterRegistry({platform: noop_factory() for platform in config.platforms})
    registry = AdapterRegistry()
    real: set[str] = set()
    if host is not None:
        for platform in host.platforms():
            registry.register(platform, host.factory())
    if browser_host is not None:
        for platform in browser_host.platforms():
            registry.register(platform, browser_adapters(browser_host))
    real.update(registry.platforms())
    for platform in config.platforms:
        plugin = None if platform in real else load_job_adapter(platform)
        if plugin is not None:  # another package's adapter (README: Add a platform)
            log.info("platform %s: served by the plug-in %r", platform, plugin)
            registry.register(platform, plugin)
            real.add(platform)
    sandboxed = [p for p in config.platforms if p not in real]
    if sandboxed:
        if not config.sandbox_url:
            raise ValueError(f"--sandbox-url is required for {', '.join(sandboxed)}")
        factory = sandbox_factory(
            base_url=config.sandbox_url,
            clock=clock,
            timeout_s=config.request_timeout_s,
            observe=metrics.platform_request if metrics is not None else _count_nothing,
        )
        for platform in sandboxed:
            registry.register(platform, factory)
    return registry


def _count_nothing(platform: str, status: int | str) -> None:
    """No metrics."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    redactor = Redactor()
    try:
        accounts: tuple[AccountConfig, ...] = ()
        if args.accounts is not None:
            accounts = load_accounts(
                args.accounts, redactor=redactor, allow_inline=args.allow_inline_credentials
            )
        if not accounts and not args.platform:
            raise ValueError("nothing to serve: give --accounts FILE and/or --platform")
        config = config_from_args(args, accounts)
        browser = browser_accounts(args, accounts)
        redactor.add(config.token)  # never in a log line, whatever prints it
        try:
            for target in config.coordinators:  # unreadable files: now, not per dial
                config.tls.credentials(target)
        except TlsError as exc:
            raise ValueError(str(exc)) from None
        handler = configure_logging(fmt=config.log_format, level=config.log_level)
        handler.addFilter(RedactingFilter(redactor))
        # One line per HTTP request drowns the step logs, which already say what was sent.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {redactor(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    try:
        api = tuple(a for a in accounts if not is_browser_account(a))
        return anyio.run(
            _run, config, api, browser, _browser_options(args), tuple(args.media_dir), redactor
        )
    except (SessionRefused, BaseExceptionGroup) as exc:
        # Refused (a wrong or revoked token, accounts it may not serve, replaced by a twin):
        # one line and exit 2, also when it surfaces through the task groups.
        refused = _refusal(exc)
        if refused is None:
            raise
        print(f"{parser.prog}: {redactor(str(refused))}", file=sys.stderr)
        return EXIT_USAGE


def _refusal(exc: BaseException) -> SessionRefused | None:
    if isinstance(exc, SessionRefused):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _refusal(inner)) is not None:
                return found
    return None


def browser_accounts(
    args: argparse.Namespace, accounts: tuple[AccountConfig, ...]
) -> tuple[BrowserAccount, ...]:
    """The accounts with a playbook, each checked; ValueError naming what to fix."""
    browser = tuple(
        browser_account(a, relative_to=args.accounts.parent if args.accounts else None)
        for a in accounts
        if is_browser_account(a)
    )
    if browser and args.kind != "browser":
        raise ValueError(
            f"account {browser[0].label} names a playbook: it is a browser account; "
            "run it on a worker started with --kind browser"
        )
    both = {a.platform for a in browser} & {
        a.platform for a in accounts if not is_browser_account(a)
    }
    if both:
        raise ValueError(
            f"platform {sorted(both)[0]} has browser and API accounts here; serve them from "
            "two workers"
        )
    return browser


def _browser_options(args: argparse.Namespace) -> tuple[Path, bool]:
    return args.profiles_dir, not args.headed


class _SetupError(Exception):
    """A set-up problem found while starting: one line on stderr, exit 2."""


async def _run(
    config: WorkerConfig,
    accounts: tuple[AccountConfig, ...],
    browser: tuple[BrowserAccount, ...],
    browser_options: tuple[Path, bool],
    media_dirs: tuple[Path, ...],
    redactor: Redactor,
) -> int:
    clock = SystemClock()
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, platforms=config.platforms)
    media = MediaLoader(media_dirs=media_dirs, timeout_s=config.request_timeout_s)
    provider = make_tracer_provider("postroom-worker")
    async with AsyncExitStack() as opened:  # closed last to first, also when set-up fails
        opened.callback(provider.shutdown)
        try:
            browser_host = await _open_browser(opened, browser, browser_options, media, clock)
            account_host = _open_accounts(opened, config, accounts, media, clock, metrics, redactor)
            server = await _open_metrics(opened, registry, config.metrics_listen)
        except _SetupError as exc:
            print(f"postroom worker: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        interceptors = []
        # Without an exporter nobody sees the worker's spans: recording them cost a fifth of a
        # no-op job's CPU. Logs keep the job's trace id (the Assign's traceparent) either way.
        tracer: Tracer = NoOpTracer()
        if exporters_from_env():  # tracing asked for: the gRPC stream gets a client span too
            tracer = provider.get_tracer("postroom.worker")
            from opentelemetry.instrumentation.grpc import aio_client_interceptors

            interceptors = aio_client_interceptors(tracer_provider=provider)  # type: ignore[no-untyped-call]
        worker = Worker(
            config=config,
            adapters=build_adapters(
                config, clock=clock, metrics=metrics, host=account_host, browser_host=browser_host
            ),
            clock=clock,
            metrics=metrics,
            tracer=tracer,
            interceptors=interceptors,
        )
        forced = await _serve(worker, server.url)
    log.info("worker %s stopped", config.device_id)
    return EXIT_FORCED if forced else EXIT_OK


def _close_shielded(opened: AsyncExitStack, aclose: Callable[[], Awaitable[None]]) -> None:
    """Close at the end even when the run was cancelled (a second signal)."""

    async def close() -> None:
        with anyio.CancelScope(shield=True):
            await aclose()

    opened.push_async_callback(close)


async def _open_browser(
    opened: AsyncExitStack,
    browser: tuple[BrowserAccount, ...],
    options: tuple[Path, bool],
    media: MediaLoader,
    clock: Clock,
) -> BrowserHost | None:
    if not browser:
        return None
    profiles_dir, headless = options
    host = BrowserHost(
        browser, profiles_dir=profiles_dir, media=media, clock=clock, headless=headless
    )
    _close_shielded(opened, host.aclose)
    try:  # now, not at the first job: a browser that cannot start is a set-up problem
        await host.browser()
    except Transient as exc:
        hint = " (--headed needs a display)" if not headless else ""
        raise _SetupError(f"{exc.message}{hint}") from None
    return host


def _open_accounts(
    opened: AsyncExitStack,
    config: WorkerConfig,
    accounts: tuple[AccountConfig, ...],
    media: MediaLoader,
    clock: Clock,
    metrics: WorkerMetrics,
    redactor: Redactor,
) -> AccountHost | None:
    if not accounts:
        return None
    context = PlatformContext(
        clock=clock,
        media=media,
        redactor=redactor,
        observe=metrics.platform_request,
        timeout_s=config.request_timeout_s,
    )
    try:
        host = AccountHost(accounts, context)
    except AccountsError as exc:
        raise _SetupError(redactor(str(exc))) from None
    _close_shielded(opened, host.aclose)
    return host


async def _open_metrics(
    opened: AsyncExitStack, registry: CollectorRegistry, listen: str
) -> MetricsServer:
    host, port = split_host_port(listen)
    try:
        server = serve_metrics(registry, host, port)
    except OSError as exc:
        raise _SetupError(
            f"cannot serve metrics on {listen} (--metrics-listen): {exc.strerror or exc}; "
            "127.0.0.1:0 picks a free port"
        ) from None
    _close_shielded(opened, server.aclose)
    return server


async def _serve(worker: Worker, metrics_url: str) -> bool:
    """Run the worker until it stops; True when a second signal forced it."""
    forced: list[bool] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(_on_signals, worker, tg, forced)
        tg.start_soon(_announce, worker, metrics_url)
        try:
            await worker.run()
        finally:
            tg.cancel_scope.cancel()
    return bool(forced)


async def _announce(worker: Worker, metrics_url: str) -> None:
    await worker.ready.wait()
    print(
        f"worker {worker.config.device_id} ready (coordinator {worker.coordinator}) "
        f"metrics {metrics_url}",
        flush=True,
    )


async def _on_signals(worker: Worker, tg: TaskGroup, forced: list[bool]) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not worker.stopping:
                log.info("%s: draining (send it again to stop at once)", name)
                worker.stop(f"{name}: worker shutting down")
                continue
            log.warning("%s again: stopping now", name)
            forced.append(True)
            tg.cancel_scope.cancel()
            return


if __name__ == "__main__":
    sys.exit(main())
