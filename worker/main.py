"""`postroom worker ...`: parse the command line once, wire the worker up, run it until SIGTERM.

    postroom worker --coordinator HOST:PORT --device-id ID [--token T] --kind api|browser
        --platform P[:ACCOUNT] ... --concurrency N --metrics-listen HOST:PORT --sandbox-url URL
        [--request-timeout-s 10] [--drain-timeout-s 60] [--log-format text|json]

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
from collections.abc import Sequence

import anyio
from anyio.abc import TaskGroup
from prometheus_client import CollectorRegistry

from worker.adapters.base import AdapterRegistry
from worker.adapters.noop import noop_factory
from worker.adapters.sandbox import sandbox_factory
from worker.clock import Clock, SystemClock
from worker.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_LOG_LEVEL,
    DEFAULT_METRICS_LISTEN,
    DEFAULT_REQUEST_TIMEOUT_S,
    Capability,
    WorkerConfig,
    split_host_port,
)
from worker.errors import SessionRefused
from worker.logs import configure_logging
from worker.metrics import WorkerMetrics, serve_metrics
from worker.shell import Worker
from worker.tracing import exporters_from_env, make_tracer_provider

log = logging.getLogger("postroom.worker")

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_USAGE = 2


def build_parser(prog: str = "postroom worker") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run a postroom worker.")
    p.add_argument("--coordinator", required=True, metavar="HOST:PORT")
    p.add_argument("--device-id", required=True, metavar="ID", help="stable worker identity")
    p.add_argument(
        "--token",
        default=os.environ.get("POSTROOM_WORKER_TOKEN", ""),
        help="the coordinator's worker token (env POSTROOM_WORKER_TOKEN)",
    )
    p.add_argument("--kind", choices=("api", "browser"), default="api")
    p.add_argument(
        "--platform",
        action="append",
        required=True,
        metavar="PLATFORM[:ACCOUNT]",
        help="a platform (any account) or platform:account this worker serves; repeatable",
    )
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N")
    p.add_argument("--metrics-listen", default=DEFAULT_METRICS_LISTEN, metavar="HOST:PORT")
    p.add_argument(
        "--sandbox-url", metavar="URL", help="route every platform to this sandbox server"
    )
    p.add_argument(
        "--noop",
        action="store_true",
        help="publish nowhere: every commit succeeds at once (benchmarks, dry runs)",
    )
    p.add_argument("--request-timeout-s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S)
    p.add_argument("--drain-timeout-s", type=float, default=DEFAULT_DRAIN_TIMEOUT_S)
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--log-level", default=DEFAULT_LOG_LEVEL)
    return p


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(
        coordinator=args.coordinator,
        device_id=args.device_id,
        token=args.token,
        kind=args.kind,
        capabilities=tuple(dict.fromkeys(Capability.parse(p) for p in args.platform)),
        concurrency=args.concurrency,
        metrics_listen=args.metrics_listen,
        sandbox_url=args.sandbox_url,
        noop=args.noop,
        request_timeout_s=args.request_timeout_s,
        drain_timeout_s=args.drain_timeout_s,
        log_format=args.log_format,
        log_level=args.log_level,
    )


def build_adapters(
    config: WorkerConfig, *, clock: Clock, metrics: WorkerMetrics | None
) -> AdapterRegistry:
    """Every platform of the command line -> its adapter. Only the sandbox adapter exists so
    far, so --sandbox-url is required and serves every platform (unless --noop)."""
    if config.noop:
        return AdapterRegistry({platform: noop_factory() for platform in config.platforms})
    if not config.sandbox_url:
        raise ValueError("--sandbox-url is required: the sandbox adapter is the only one so far")
    factory = sandbox_factory(
        base_url=config.sandbox_url,
        clock=clock,
        timeout_s=config.request_timeout_s,
        observe=metrics.platform_request if metrics is not None else _count_nothing,
    )
    return AdapterRegistry({platform: factory for platform in config.platforms})


def _count_nothing(platform: str, status: int | str) -> None:
    """No metrics."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        config = config_from_args(args)
        if not config.sandbox_url and not config.noop:
            raise ValueError("--sandbox-url (or --noop) is required: the sandbox adapter is "
                             "the only one so far")  # fmt: skip
        configure_logging(fmt=config.log_format, level=config.log_level)
        # One line per HTTP request drowns the step logs, which already say what was sent.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return anyio.run(_run, config)
    except SessionRefused as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE


async def _run(config: WorkerConfig) -> int:
    clock = SystemClock()
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    host, port = split_host_port(config.metrics_listen)
    server = serve_metrics(registry, host, port)
    provider = make_tracer_provider("postroom-worker")
    interceptors = []
    if exporters_from_env():  # tracing asked for: the gRPC stream gets a client span too
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        interceptors = aio_client_interceptors(tracer_provider=provider)  # type: ignore[no-untyped-call]
    worker = Worker(
        config=config,
        adapters=build_adapters(config, clock=clock, metrics=metrics),
        clock=clock,
        metrics=metrics,
        tracer=provider.get_tracer("postroom.worker"),
        interceptors=interceptors,
    )
    forced: list[bool] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_on_signals, worker, tg, forced)
            tg.start_soon(_announce, worker, server.url)
            try:
                await worker.run()
            finally:
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await server.aclose()
        provider.shutdown()
    log.info("worker %s stopped", config.device_id)
    return EXIT_FORCED if forced else EXIT_OK


async def _announce(worker: Worker, metrics_url: str) -> None:
    await worker.ready.wait()
    config = worker.config
    print(
        f"worker {config.device_id} ready (coordinator {config.coordinator}) metrics {metrics_url}",
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
