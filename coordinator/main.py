"""`postroom coordinator`: parse the command line once, build the parts, serve until SIGTERM."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import anyio
import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from coordinator import wire
from coordinator.access.bootstrap import BootstrapError, bootstrap_admin
from coordinator.access.interceptor import OperatorAuth
from coordinator.access.options import ExposureRefused, SecurityOptions, add_flags
from coordinator.access.registry import Credentials
from coordinator.actor import Coordinator, CoordinatorConfig
from coordinator.assets import AssetStore
from coordinator.content_rules import TextLimits, parse_text_limit
from coordinator.dblock import DatabaseInUse, DatabaseLock
from coordinator.domain import KNOWN_PLATFORMS
from coordinator.errors import CoordinatorError
from coordinator.gates import Quota, parse_quota
from coordinator.gateway import WorkerGatewayService
from coordinator.leasing.core import (
    DEFAULT_CLAIM_TIMEOUT_S,
    DEFAULT_CONFIRM_TIMEOUT_S,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_RUN_TIMEOUT_S,
    LeaseConfig,
)
from coordinator.metrics import CoordinatorMetrics
from coordinator.publishing import PublishingService
from coordinator.reflection import enable_reflection
from coordinator.retry import RetryPolicies, RetryPolicy, parse_policy
from coordinator.store import SqliteStore, open_store
from postroom.address import split_host_port
from postroom.clock import SystemClock
from postroom.logs import configure_logging
from postroom.metrics_http import serve_metrics
from postroom.tls import TlsError, server_credentials
from postroom.tracing import exporters_from_env, make_tracer_provider
from postroom.v1 import publishing_pb2, worker_gateway_pb2

log = logging.getLogger("postroom.coordinator")

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DB = "sqlite:///postroom.db"
DEFAULT_ASSETS = "postroom-assets"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
DEFAULT_DRAIN_GRACE_S = 5.0
GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections (CPython: 700)
# Transport backstop under the application heartbeats (toolchain.md): allow workers' pings.
GRPC_SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", 1024 * 1024),
    # gRPC sets SO_REUSEPORT by default, so a second coordinator on the same port would start
    # and share the traffic: refuse the port instead.
    ("grpc.so_reuseport", 0),
    # Memory per stream: gRPC grows a stream's receive window with its bandwidth estimate (BDP
    # probing), and four fast 16 MiB screenshot uploads then sit ~30 MiB deep in its buffers.
    # A fixed 1 MiB window bounds that to ~1 MiB a stream (still ~10 MB/s at 100 ms RTT).
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 1024 * 1024),
]


class StartupError(Exception):
    """The coordinator cannot start; the message says what to change (no traceback)."""


@dataclass(frozen=True, slots=True)
class ServerOptions:
    listen: str
    db: str
    assets: Path
    metrics_listen: str
    ready_file: Path | None
    log_format: Literal["text", "json"]
    log_level: str
    coordinator: CoordinatorConfig
    text_limits: TextLimits = field(default_factory=TextLimits)
    security: SecurityOptions = field(default_factory=SecurityOptions)


def parse_args(argv: list[str]) -> ServerOptions:
    p = argparse.ArgumentParser(prog="postroom coordinator", description=__doc__)
    p.add_argument("--listen", default=DEFAULT_LISTEN, help="gRPC address (default %(default)s)")
    p.add_argument(
        "--db",
        default=os.environ.get("POSTROOM_DB", DEFAULT_DB),
        help="sqlite:///PATH (default %(default)s)",
    )
    p.add_argument(
        "--assets",
        default=DEFAULT_ASSETS,
        type=Path,
        help="screenshot directory (default %(default)s)",
    )
    p.add_argument(
        "--metrics-listen",
        default=DEFAULT_METRICS_LISTEN,
        help="Prometheus /metrics address (default %(default)s)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=DEFAULT_HEARTBEAT_INTERVAL_S,
        metavar="SECONDS",
        help="worker heartbeat interval (default %(default)s)",
    )
    p.add_argument(
        "--lease-ttl",
        type=float,
        default=None,
        metavar="SECONDS",
        help="lease lifetime without a heartbeat (default 3 x heartbeat interval)",
    )
    p.add_argument(
        "--claim-timeout",
        type=float,
        default=DEFAULT_CLAIM_TIMEOUT_S,
        metavar="SECONDS",
        help="recover a job claimed but not started after this",
    )
    p.add_argument(
        "--run-timeout",
        type=float,
        default=DEFAULT_RUN_TIMEOUT_S,
        metavar="SECONDS",
        help="recover a job running longer than this",
    )
    p.add_argument(
        "--confirm-timeout-s",
        type=float,
        default=DEFAULT_CONFIRM_TIMEOUT_S,
        metavar="SECONDS",
        help="release a job nobody confirmed within this (FAILED, nothing posted; default "
        "%(default)g)",
    )
    p.add_argument(
        "--retry-initial",
        type=float,
        default=RetryPolicy().initial_interval_s,
        metavar="SECONDS",
        help="first transient-retry delay (doubles each time)",
    )
    p.add_argument(
        "--retry-max",
        type=float,
        default=RetryPolicy().max_interval_s,
        metavar="SECONDS",
        help="longest transient-retry delay",
    )
    p.add_argument(
        "--retry-policy",
        action="append",
        default=[],
        metavar="PLATFORM:KEY=VALUE,...",
        help="per-platform retries: initial, factor, max (seconds), jitter (0-1), rate_limited "
        "(cap), e.g. x:initial=30,max=900",
    )
    p.add_argument(
        "--quota",
        action="append",
        default=[],
        metavar="PLATFORM[:ACCOUNT]=N/SECONDS",
        help="close the gate before a platform limit, e.g. sandbox=2/3600",
    )
    p.add_argument(
        "--text-limit",
        action="append",
        default=[],
        metavar="PLATFORM[:ACCOUNT]=N",
        help="a platform's (or one account's) text limit instead of the platform default, e.g. "
        "mastodon=1000 or mastodon:big-instance=5000 (repeatable)",
    )
    p.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="write 'GRPC_PORT METRICS_PORT' here once serving (for scripts)",
    )
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--log-level", default=os.environ.get("POSTROOM_LOG_LEVEL", "INFO"))
    add_flags(p)
    a = p.parse_args(argv)
    for flag, value in (("--listen", a.listen), ("--metrics-listen", a.metrics_listen)):
        try:
            split_host_port(value)
        except ValueError as exc:
            p.error(f"{flag}: {exc}")
    quotas: dict[str, Quota] = {}
    for spec in a.quota:
        try:
            key, quota = parse_quota(spec)
        except ValueError as exc:
            p.error(str(exc))
        if key.split(":")[0] not in KNOWN_PLATFORMS:
            p.error(f"--quota {spec!r}: unknown platform")
        quotas[key] = quota
    text_limits: dict[str, int] = {}
    for spec in a.text_limit:
        try:
            key, limit = parse_text_limit(spec)
        except ValueError as exc:
            p.error(str(exc))
        text_limits[key] = limit
    if a.heartbeat_interval <= 0:
        p.error("--heartbeat-interval must be positive")
    if a.confirm_timeout_s <= 0:
        p.error("--confirm-timeout-s must be positive (seconds a job waits for `job confirm`)")
    ttl = a.lease_ttl if a.lease_ttl is not None else 3 * a.heartbeat_interval
    if ttl <= a.heartbeat_interval:
        p.error("--lease-ttl must be longer than --heartbeat-interval")
    lease = LeaseConfig(
        heartbeat_interval_s=a.heartbeat_interval,
        lease_ttl_s=ttl,
        restart_grace_s=ttl,
        # At least the worker's own margin (max(1 s, 20 % of the TTL)) plus a little: a permit
        # granted with less left would be abandoned by the worker, wasting an attempt.
        commit_min_left_s=min(ttl / 2, max(1.0, 0.2 * ttl) + 0.5),
        claim_timeout_s=a.claim_timeout,
        run_timeout_s=a.run_timeout,
        confirm_timeout_s=a.confirm_timeout_s,
    )
    default_policy = RetryPolicy(initial_interval_s=a.retry_initial, max_interval_s=a.retry_max)
    per_platform: dict[str, RetryPolicy] = {}
    for spec in a.retry_policy:
        try:
            platform, policy = parse_policy(spec, default_policy)
        except ValueError as exc:
            p.error(str(exc))
        if platform not in KNOWN_PLATFORMS:
            p.error(f"--retry-policy {spec!r}: unknown platform {platform!r}")
        per_platform[platform] = policy
    retry = RetryPolicies(default=default_policy, per_platform=per_platform)
    try:
        security = SecurityOptions.from_args(a, a.listen)
    except ValueError as exc:
        p.error(str(exc))
    return ServerOptions(
        listen=a.listen,
        db=a.db,
        assets=a.assets,
        metrics_listen=a.metrics_listen,
        ready_file=a.ready_file,
        log_format=a.log_format,
        log_level=a.log_level,
        coordinator=CoordinatorConfig(lease=lease, retry=retry, quotas=quotas),
        text_limits=TextLimits(MappingProxyType(text_limits)),
        security=security,
    )


def lock_database(db: str) -> DatabaseLock | None:
    """One coordinator per database: taken before the store is opened (dblock.py)."""
    try:
        store = open_store(db)
    except CoordinatorError as exc:  # a bad URL
        raise StartupError(f"--db {db}: {exc}") from exc
    if not isinstance(store, SqliteStore) or store.path == ":memory:":
        return None
    try:
        return DatabaseLock.acquire(store.path)
    except DatabaseInUse as exc:
        raise StartupError(str(exc)) from exc
    except OSError as exc:
        raise StartupError(f"--db {db}: cannot lock it: {exc.strerror or exc}") from exc


async def serve(opts: ServerOptions) -> None:
    try:
        opts.security.check_transport(opts.listen)
    except ExposureRefused as exc:
        raise StartupError(str(exc)) from exc
    lock = lock_database(opts.db)
    try:
        await _serve(opts)
    finally:
        if lock is not None:
            lock.release()


async def _serve(opts: ServerOptions) -> None:
    try:
        store = open_store(opts.db)
        await store.open()
    except CoordinatorError as exc:  # a bad URL, a database that cannot be opened
        raise StartupError(f"--db {opts.db}: {exc}") from exc
    registry = CollectorRegistry()
    metrics = CoordinatorMetrics(registry, platforms=sorted(KNOWN_PLATFORMS))
    provider = make_tracer_provider("postroom-coordinator")
    clock = SystemClock()
    coordinator = Coordinator(
        store=store,
        clock=clock,
        config=opts.coordinator,
        metrics=metrics,
        tracer=provider.get_tracer("postroom.coordinator"),
        credentials=Credentials(policy=opts.security.policy()),
    )
    await coordinator.load()
    security = opts.security
    try:
        if security.bootstrap_admin_token_file is not None:
            path = security.bootstrap_admin_token_file
            await bootstrap_admin(store, coordinator.credentials, path, clock.now())
        security.check_auth(opts.listen, coordinator.credentials)
        tls = (
            server_credentials(
                cert=security.tls_cert, key=security.tls_key, client_ca=security.tls_client_ca
            )
            if security.tls_cert is not None and security.tls_key is not None
            else None
        )
    except (BootstrapError, ExposureRefused, TlsError) as exc:
        await store.close()
        raise StartupError(str(exc)) from exc
    opts.assets.mkdir(parents=True, exist_ok=True)
    assets = AssetStore(opts.assets)

    # Every Publishing RPC: its bearer token, its least role (coordinator/access/).
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = [
        OperatorAuth(coordinator.credentials)
    ]
    if exporters_from_env():  # tracing asked for: instrument the gRPC calls too
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        interceptors.append(aio_server_interceptor(tracer_provider=provider))  # type: ignore[no-untyped-call]
    server = grpc.aio.server(options=GRPC_SERVER_OPTIONS, interceptors=interceptors)
    publishing = PublishingService(coordinator, assets, text_limits=opts.text_limits)
    # Not the generated add_*_to_server: requests that do not parse get INVALID_ARGUMENT.
    wire.add_publishing(server, publishing)
    wire.add_worker_gateway(server, WorkerGatewayService(coordinator, assets))
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = (
        publishing_pb2.DESCRIPTOR.services_by_name["Publishing"].full_name,
        worker_gateway_pb2.DESCRIPTOR.services_by_name["WorkerGateway"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    enable_reflection(service_names, server)
    try:
        port = (
            server.add_secure_port(opts.listen, tls)
            if tls is not None
            else server.add_insecure_port(opts.listen)
        )
    except RuntimeError:  # grpcio raises where older versions returned 0
        port = 0
    if port == 0:
        await store.close()
        raise StartupError(
            f"cannot listen on {opts.listen} (--listen): the port is in use or the address is "
            "not this machine's; stop the other process or choose another port"
        )
    mhost, mport = split_host_port(opts.metrics_listen)
    try:
        metrics_server = serve_metrics(registry, mhost, mport)
    except OSError as exc:
        await store.close()
        raise StartupError(
            f"cannot serve metrics on {opts.metrics_listen} (--metrics-listen): "
            f"{exc.strerror or exc}; choose another port (127.0.0.1:0 picks a free one)"
        ) from exc
    await server.start()
    for name in ("", *service_names[:2]):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    host = opts.listen.rpartition(":")[0] or "127.0.0.1"
    print(
        f"coordinator listening on {host}:{port} (metrics {metrics_server.url}, db {opts.db})",
        flush=True,
    )
    print(security.describe(coordinator.credentials), flush=True)
    if opts.ready_file is not None:
        tmp = opts.ready_file.with_suffix(".tmp")
        tmp.write_text(f"{port} {metrics_server.port}\n")
        tmp.replace(opts.ready_file)

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(coordinator.run)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("received %s: draining", signal.Signals(signum).name)
                    break
            for name in ("", *service_names[:2]):
                await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            # Workers are told goodbye (they keep their jobs and resume them on reconnect);
            # commands in the mailbox are still processed and committed before the loop ends.
            await coordinator.stop()
            await server.stop(DEFAULT_DRAIN_GRACE_S)
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()
            metrics_server.close()
            provider.shutdown()
    log.info("coordinator stopped")


EXIT_STARTUP = 2


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(fmt=opts.log_format, level=opts.log_level)
    # The actor keeps a large, long-lived heap (every open post's jobs) and allocates small
    # command and effect values per message: with the default threshold (700) young collections
    # run every few messages and walk what survived. Fewer, larger ones cost less in all.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
    try:
        anyio.run(serve, opts)
    except StartupError as exc:
        print(f"postroom coordinator: error: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
