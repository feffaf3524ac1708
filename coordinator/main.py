"""`postroom coordinator`: parse the command line once, build the parts, serve until SIGTERM."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NoOpTracer
from prometheus_client import CollectorRegistry

from coordinator import wire
from coordinator.access.bootstrap import BootstrapError, bootstrap_admin
from coordinator.access.interceptor import OperatorAuth
from coordinator.access.options import ExposureRefused
from coordinator.access.registry import Credentials
from coordinator.actor import Coordinator
from coordinator.assets import AssetStore
from coordinator.cluster.credentials import follow_credentials
from coordinator.cluster.fanout import FanOutWorkers, OwnerChannels
from coordinator.cluster.forward import ForwardToActive, peer_tls
from coordinator.cluster.member import ClusterConfig, ClusterMember
from coordinator.cluster.relay import RelayWorkersToActive
from coordinator.cluster.role import ClusterRole
from coordinator.cluster.route import RouteToOwner
from coordinator.cluster.serve import ClusterServing
from coordinator.cluster.tasks import PostTaskConsumer
from coordinator.dblock import DatabaseInUse, DatabaseLock
from coordinator.domain import KNOWN_PLATFORMS
from coordinator.errors import CoordinatorError
from coordinator.gateway import WorkerGatewayService
from coordinator.metrics import CoordinatorMetrics
from coordinator.options import ServerOptions, parse_args
from coordinator.publishing import PublishingService
from coordinator.reflection import enable_reflection
from coordinator.store import SqliteStore, Store, open_store
from coordinator.store.ownership import ShardOwnership
from coordinator.store.postgres import PostgresStore, redacted
from postroom.address import split_host_port
from postroom.clock import SystemClock
from postroom.logs import configure_logging
from postroom.metrics_http import MetricsServer, serve_metrics
from postroom.tls import TlsError, server_credentials
from postroom.tracing import exporters_from_env, make_tracer_provider
from postroom.v1 import publishing_pb2, worker_gateway_pb2

log = logging.getLogger("postroom.coordinator")

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
# What reflection lists; health reports on the first two (and on the server as a whole).
SERVICE_NAMES = (
    publishing_pb2.DESCRIPTOR.services_by_name["Publishing"].full_name,
    worker_gateway_pb2.DESCRIPTOR.services_by_name["WorkerGateway"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


class StartupError(Exception):
    """The coordinator cannot start; the message says what to change (no traceback)."""


def lock_database(db: str) -> DatabaseLock | None:
    """One coordinator per SQLite file: taken before the store is opened (dblock.py). None on
    PostgreSQL, where the others stand by (coordinator/cluster/), and for memory://."""
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


@dataclass(slots=True)
class _Parts:
    """What `_serve` builds before it listens, and closes when it stops."""

    store: Store
    registry: CollectorRegistry
    provider: TracerProvider
    coordinator: Coordinator
    tls: grpc.ServerCredentials | None = None
    member: ClusterMember | None = None  # several coordinators on one PostgreSQL


async def _serve(opts: ServerOptions) -> None:
    parts = await _load(opts)
    try:
        parts.tls = await _secure(opts, parts)
        opts.assets.mkdir(parents=True, exist_ok=True)
        server, health = _grpc_server(opts, parts, AssetStore(opts.assets))
        port = _bind(server, opts.listen, parts.tls)
        mhost, mport = split_host_port(opts.metrics_listen)
        try:
            metrics_server = serve_metrics(parts.registry, mhost, mport)
        except OSError as exc:
            raise StartupError(
                f"cannot serve metrics on {opts.metrics_listen} (--metrics-listen): "
                f"{exc.strerror or exc}; choose another port (127.0.0.1:0 picks a free one)"
            ) from exc
    except StartupError:
        await parts.store.close()
        raise
    try:
        await server.start()
        if parts.member is not None:  # a standby until it holds every shard
            parts.member.role.address = opts.advertise or _bound_address(opts.listen, port)
            _announce(opts, parts, port, metrics_server, ready=False)
            store = parts.store
            tasks = (
                PostTaskConsumer(store, parts.coordinator)
                if parts.member.spread and isinstance(store, PostgresStore)
                else None
            )
            await ClusterServing(
                parts.member,
                parts.coordinator,
                server,
                health.serving,
                lambda: _write_ready(opts, port, metrics_server.port),
                DEFAULT_DRAIN_GRACE_S,
                tasks=tasks,
                companions=_companions(parts),
            ).run_until_signal()
        else:
            await health.serving(True)
            _announce(opts, parts, port, metrics_server)
            await _run_until_signal(parts.coordinator, server, health)
    finally:
        with anyio.CancelScope(shield=True):
            await parts.store.close()
            metrics_server.close()
            parts.provider.shutdown()
    log.info("coordinator stopped")


async def _load(opts: ServerOptions) -> _Parts:
    """Open the store and load the coordinator's state from it."""
    try:
        store = open_store(opts.db)
        await store.open()
    except CoordinatorError as exc:  # a bad URL, a database that cannot be opened
        raise StartupError(f"--db {redacted(opts.db)}: {exc}") from exc
    registry = CollectorRegistry()
    provider = make_tracer_provider("postroom-coordinator")
    member = await _join(opts, store, registry) if isinstance(store, PostgresStore) else None
    config = opts.coordinator
    if member is not None and member.spread:  # the store derives it from every shard's jobs
        config = dataclasses.replace(config, derive_posts_in_store=True)
    coordinator = Coordinator(
        store=store,
        clock=SystemClock(),
        config=config,
        metrics=CoordinatorMetrics(registry, platforms=sorted(KNOWN_PLATFORMS)),
        # No exporter configured: no span objects per attempt (coordinator/observing.py).
        tracer=provider.get_tracer("postroom.coordinator")
        if exporters_from_env()
        else NoOpTracer(),
        credentials=Credentials(policy=opts.security.policy()),
        commit=member.commit if member is not None else None,
    )
    if member is not None and member.spread:  # shard 0's owner exports the totals
        role = member.role
        coordinator.counts_totals = lambda: role.owner_address(0) == role.address
    if member is None:
        await coordinator.load()
    else:  # loaded when it takes over (cluster/serve.py); the tokens now, for the checks
        for token in await store.list_operator_tokens():
            coordinator.credentials.put_token(token)
    return _Parts(store, registry, provider, coordinator, member=member)


async def _join(
    opts: ServerOptions, store: PostgresStore, registry: CollectorRegistry
) -> ClusterMember:
    """Cluster mode: the shard rows, and this coordinator's part in the ownership turns."""
    if opts.placement == "spread" and opts.security.tls_client_ca is not None:
        await store.close()
        raise StartupError(
            "--placement spread with mutual TLS (--tls-client-ca): a worker's stream reaches "
            "the shards of other coordinators through the one it dials, which cannot present "
            "the worker's client certificate to them; use --placement one (the default) under "
            "mutual TLS"
        )
    ownership = ShardOwnership(store)
    try:
        await ownership.open()
    except CoordinatorError as exc:
        await store.close()
        raise StartupError(f"--db {redacted(opts.db)}: {exc}") from exc
    name = opts.name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
    role = ClusterRole(name=name, address="")
    config = ClusterConfig(ttl_s=opts.ownership_ttl_s, placement=opts.resolved_placement())
    return ClusterMember(store, ownership, role, config, registry=registry)


def _bound_address(listen: str, port: int) -> str:
    """What the others tell workers to dial: the bound address, or this host's name for a
    wildcard one."""
    host = listen.rpartition(":")[0]
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = socket.gethostname()
    return f"{host}:{port}"


async def _secure(opts: ServerOptions, parts: _Parts) -> grpc.ServerCredentials | None:
    """The first admin token if asked for, the exposure check, and the TLS credentials."""
    security = opts.security
    credentials = parts.coordinator.credentials
    try:
        if security.bootstrap_admin_token_file is not None:
            path = security.bootstrap_admin_token_file
            await bootstrap_admin(parts.store, credentials, path, parts.coordinator.clock.now())
        security.check_auth(opts.listen, credentials)
        if security.tls_cert is None or security.tls_key is None:
            return None
        return server_credentials(
            cert=security.tls_cert, key=security.tls_key, client_ca=security.tls_client_ca
        )
    except (BootstrapError, ExposureRefused, TlsError) as exc:
        raise StartupError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class _Health:
    """The standard health service, for the whole server and each of its two services."""

    servicer: health_aio.HealthServicer

    async def serving(self, up: bool) -> None:
        status = health_pb2.HealthCheckResponse
        for name in ("", *SERVICE_NAMES[:2]):
            await self.servicer.set(name, status.SERVING if up else status.NOT_SERVING)


def _grpc_server(
    opts: ServerOptions, parts: _Parts, assets: AssetStore
) -> tuple[grpc.aio.Server, _Health]:
    """The services, their interceptors, health and reflection (not listening yet)."""
    # Every Publishing RPC: its bearer token, its least role (coordinator/access/).
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = [
        OperatorAuth(parts.coordinator.credentials)
    ]
    role = parts.member.role if parts.member is not None else None
    spread = parts.member is not None and parts.member.spread
    if spread and role is not None:  # before the tokens' check: the owner checks them
        interceptors.insert(0, _route(opts, parts, role))
        channels = OwnerChannels(peer_tls(opts.security))  # never mutual TLS: _join refuses it
        # A dead owner's shards are claimed by the others within twice the TTL: until then
        # the streams go on without it (fanout_owners.py).
        down_s = 2 * opts.ownership_ttl_s
        interceptors.insert(
            1, FanOutWorkers(role.owner_addresses, channels.channel, owner_down_s=down_s)
        )
    elif role is not None:  # before the tokens' check: a standby forwards to the active one
        forward = ForwardToActive(
            is_active=role.is_active,
            active_address=role.active_address,
            tls=peer_tls(opts.security),
        )
        interceptors.insert(0, forward)
        if opts.security.tls_client_ca is None:  # mutual TLS: the active checks the worker's cert
            interceptors.insert(1, RelayWorkersToActive(role, forward.channel))
    if exporters_from_env():  # tracing asked for: instrument the gRPC calls too
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        interceptors.append(aio_server_interceptor(tracer_provider=parts.provider))  # type: ignore[no-untyped-call]
    server = grpc.aio.server(options=GRPC_SERVER_OPTIONS, interceptors=interceptors)
    publishing = PublishingService(
        parts.coordinator, assets, text_limits=opts.text_limits, store_reads=spread
    )
    # Not the generated add_*_to_server: requests that do not parse get INVALID_ARGUMENT.
    wire.add_publishing(server, publishing)
    refusal = role.refusal if role is not None else None
    wire.add_worker_gateway(
        server, WorkerGatewayService(parts.coordinator, assets, refusal=refusal)
    )
    health = _Health(health_aio.HealthServicer())
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    enable_reflection(SERVICE_NAMES, server)
    return server, health


def _companions(parts: _Parts) -> list[Callable[[], Coroutine[Any, Any, None]]]:
    """What a cluster-mode coordinator runs beside its turns: every coordinator checks tokens
    (a standby's forwarded calls too), so each follows the credentials other ones change."""
    if not isinstance(parts.store, PostgresStore):
        return []
    return [partial(follow_credentials, parts.store, parts.coordinator)]


def _route(opts: ServerOptions, parts: _Parts, role: ClusterRole) -> RouteToOwner:
    assert parts.member is not None
    ownership = parts.member.ownership

    async def holder_address(shard: int) -> str | None:
        holder = await ownership.holder(shard)
        return holder.address if holder is not None else None

    return RouteToOwner(
        owners=role,
        store=parts.store,
        tls=peer_tls(opts.security),
        shard_count=opts.coordinator.shard_count,
        lookup=holder_address,
    )


def _bind(server: grpc.aio.Server, listen: str, tls: grpc.ServerCredentials | None) -> int:
    try:
        port = (
            server.add_secure_port(listen, tls)
            if tls is not None
            else server.add_insecure_port(listen)
        )
    except RuntimeError:  # grpcio raises where older versions returned 0
        port = 0
    if port == 0:
        raise StartupError(
            f"cannot listen on {listen} (--listen): the port is in use or the address is "
            "not this machine's; stop the other process or choose another port"
        )
    return port


def _announce(
    opts: ServerOptions, parts: _Parts, port: int, metrics: MetricsServer, *, ready: bool = True
) -> None:
    """The start-up lines, and the ready file scripts wait for (in a cluster: once active)."""
    host = opts.listen.rpartition(":")[0] or "127.0.0.1"
    print(
        f"coordinator listening on {host}:{port} (metrics {metrics.url}, db {redacted(opts.db)})",
        flush=True,
    )
    print(opts.security.describe(parts.coordinator.credentials), flush=True)
    if ready:
        _write_ready(opts, port, metrics.port)


def _write_ready(opts: ServerOptions, port: int, metrics_port: int) -> None:
    """The ready file scripts wait for, written whole, then renamed."""
    if opts.ready_file is not None:
        tmp = opts.ready_file.with_suffix(".tmp")
        tmp.write_text(f"{port} {metrics_port}\n")
        tmp.replace(opts.ready_file)


async def _run_until_signal(
    coordinator: Coordinator, server: grpc.aio.Server, health: _Health
) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(coordinator.run)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s: draining", signal.Signals(signum).name)
                break
        await health.serving(False)
        # Workers are told goodbye (they keep their jobs and resume them on reconnect);
        # commands in the mailbox are still processed and committed before the loop ends.
        await coordinator.stop()
        await server.stop(DEFAULT_DRAIN_GRACE_S)


EXIT_STARTUP = 2


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(fmt=opts.log_format, level=opts.log_level)
    # The actor keeps a large, long-lived heap (every open post's jobs) and allocates small
    # command and effect values per message: with the default threshold (700) young collections
    # run every few messages and walk what survived. Fewer, larger ones cost less in all. (Not
    # more: gen-0 at 50,000 with gc.freeze() after start-up measured no less CPU per job and
    # 90-260 ms pauses in dispatch latency, bench item 2.)
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
    try:
        anyio.run(serve, opts, backend_options=_loop_options())
    except StartupError as exc:
        print(f"postroom coordinator: error: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    return 0


def _loop_options() -> dict[str, Any]:
    """uvloop where it is installed: an idle session's heartbeat and its ack are mostly event-loop
    turns and gRPC completions, which uvloop runs for less (bench item 4, 1,000 idle sessions:
    coordinator CPU ~14 -> ~12 % of a core)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


if __name__ == "__main__":
    raise SystemExit(main())
