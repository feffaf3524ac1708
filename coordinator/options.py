"""`postroom coordinator`'s command line, checked and parsed once into a frozen ServerOptions.

Each group of flags is added by one function and read back by one; a usage error exits 2 with
argparse's message, naming the flag to fix.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, TypeVar

from coordinator.access.options import SecurityOptions, add_flags
from coordinator.actor import CoordinatorConfig
from coordinator.cluster.member import DEFAULT_OWNERSHIP_TTL_S, PLACEMENTS, Placement
from coordinator.content_rules import TextLimits, parse_text_limit
from coordinator.domain import KNOWN_PLATFORMS
from coordinator.gates import Quota, parse_quota
from coordinator.leasing.core import (
    DEFAULT_CLAIM_TIMEOUT_S,
    DEFAULT_CONFIRM_TIMEOUT_S,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_RUN_TIMEOUT_S,
    LeaseConfig,
)
from coordinator.retry import RetryPolicies, RetryPolicy, parse_policy
from postroom.address import split_host_port

T = TypeVar("T")

DESCRIPTION = (
    "`postroom coordinator`: parse the command line once, build the parts, serve until SIGTERM."
)
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DB = "sqlite:///postroom.db"
DEFAULT_ASSETS = "postroom-assets"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"


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
    # Several coordinators on one PostgreSQL (coordinator/cluster/): this one's id (None: made
    # up at start), the address the others name to workers (None: the bound gRPC address), how
    # long a shard lease holds without renewal, and how the shards are placed among them.
    name: str | None = None
    advertise: str | None = None
    ownership_ttl_s: float = DEFAULT_OWNERSHIP_TTL_S
    # None: spread, or one under mutual TLS (resolved_placement).
    placement: Placement | None = None

    def resolved_placement(self) -> Placement:
        """The placement asked for; by default spread (every coordinator serves its share),
        except under mutual TLS, where a worker's stream cannot be fanned out to the other
        coordinators (they would need its client certificate): one."""
        if self.placement is not None:
            return self.placement
        return "one" if self.security.tls_client_ca is not None else "spread"


def parse_args(argv: list[str]) -> ServerOptions:
    """The command line, checked and parsed once into ServerOptions (usage errors exit 2)."""
    p = argparse.ArgumentParser(prog="postroom coordinator", description=DESCRIPTION)
    _add_address_flags(p)
    _add_lease_flags(p)
    _add_retry_flags(p)
    _add_limit_flags(p)
    _add_process_flags(p)
    _add_cluster_flags(p)
    add_flags(p)
    a = p.parse_args(argv)
    # Checked in this order, so the first usage error named is the same whatever else is wrong.
    addresses = [("--listen", a.listen), ("--metrics-listen", a.metrics_listen)]
    if a.advertise is not None:
        addresses.append(("--advertise", a.advertise))
    for flag, value in addresses:
        try:
            split_host_port(value)
        except ValueError as exc:
            p.error(f"{flag}: {exc}")
    if a.ownership_ttl <= 0:
        p.error(f"--ownership-ttl: must be more than 0 seconds, not {a.ownership_ttl:g}")
    quotas = _quotas(p, a.quota)
    text_limits = _text_limits(p, a.text_limit)
    lease = _lease_config(p, a)
    retry = _retry_policies(p, a)
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
        name=a.name,
        advertise=a.advertise,
        ownership_ttl_s=a.ownership_ttl,
        placement=a.placement,
    )


def _add_address_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default=DEFAULT_LISTEN, help="gRPC address (default %(default)s)")
    p.add_argument(
        "--db",
        default=os.environ.get("POSTROOM_DB", DEFAULT_DB),
        help="sqlite:///PATH, memory://, or postgresql://USER@HOST:PORT/DBNAME (several "
        "coordinators may share one PostgreSQL database) (default %(default)s)",
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


def _add_lease_flags(p: argparse.ArgumentParser) -> None:
    _seconds(
        p,
        "--heartbeat-interval",
        DEFAULT_HEARTBEAT_INTERVAL_S,
        "worker heartbeat interval (default %(default)s)",
    )
    _seconds(
        p,
        "--lease-ttl",
        None,
        "lease lifetime without a heartbeat (default 3 x heartbeat interval)",
    )
    _seconds(
        p,
        "--claim-timeout",
        DEFAULT_CLAIM_TIMEOUT_S,
        "recover a job claimed but not started after this",
    )
    _seconds(p, "--run-timeout", DEFAULT_RUN_TIMEOUT_S, "recover a job running longer than this")
    _seconds(
        p,
        "--confirm-timeout-s",
        DEFAULT_CONFIRM_TIMEOUT_S,
        "release a job nobody confirmed within this (FAILED, nothing posted; default %(default)g)",
    )


def _add_retry_flags(p: argparse.ArgumentParser) -> None:
    default = RetryPolicy()
    _seconds(
        p,
        "--retry-initial",
        default.initial_interval_s,
        "first transient-retry delay (doubles each time)",
    )
    _seconds(p, "--retry-max", default.max_interval_s, "longest transient-retry delay")
    _repeatable(
        p,
        "--retry-policy",
        "PLATFORM:KEY=VALUE,...",
        "per-platform retries: initial, factor, max (seconds), jitter (0-1), rate_limited (cap), "
        "e.g. x:initial=30,max=900",
    )


def _seconds(p: argparse.ArgumentParser, flag: str, default: float | None, text: str) -> None:
    p.add_argument(flag, type=float, default=default, metavar="SECONDS", help=text)


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    _repeatable(
        p,
        "--quota",
        "PLATFORM[:ACCOUNT]=N/SECONDS",
        "close the gate before a platform limit, e.g. sandbox=2/3600",
    )
    _repeatable(
        p,
        "--text-limit",
        "PLATFORM[:ACCOUNT]=N",
        "a platform's (or one account's) text limit instead of the platform default, e.g. "
        "mastodon=1000 or mastodon:big-instance=5000 (repeatable)",
    )


def _repeatable(p: argparse.ArgumentParser, flag: str, metavar: str, text: str) -> None:
    p.add_argument(flag, action="append", default=[], metavar=metavar, help=text)


def _add_process_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="write 'GRPC_PORT METRICS_PORT' here once serving (for scripts)",
    )
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--log-level", default=os.environ.get("POSTROOM_LOG_LEVEL", "INFO"))


def _add_cluster_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several coordinators on one PostgreSQL (--db postgresql://...)")
    g.add_argument(
        "--name",
        default=None,
        help="this coordinator's id among the others (default HOSTNAME-PID-RANDOM)",
    )
    g.add_argument(
        "--advertise",
        default=None,
        metavar="HOST:PORT",
        help="the address the other coordinators give workers and operators for this one "
        "(default the bound --listen address)",
    )
    g.add_argument(
        "--ownership-ttl",
        type=float,
        default=DEFAULT_OWNERSHIP_TTL_S,
        metavar="SECONDS",
        help="how long the active coordinator's shard leases hold without renewal; a standby "
        "takes over a dead active within about 1.25x this (default %(default)gs; keep it well "
        "under --lease-ttl)",
    )
    g.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default=None,
        help="spread: every coordinator holds a fair share of the shards and serves those; one: "
        "one coordinator holds every shard and serves, the others stand by (default: spread, "
        "or one under mutual TLS; every coordinator on one database must use the same)",
    )


def _each(
    p: argparse.ArgumentParser, specs: list[str], parse: Callable[[str], tuple[str, T]]
) -> dict[str, T]:
    """Each repeated spec parsed into its key and value; a bad one is a usage error saying why."""
    parsed: dict[str, T] = {}
    for spec in specs:
        try:
            key, value = parse(spec)
        except ValueError as exc:
            p.error(str(exc))
        parsed[key] = value
    return parsed


def _quotas(p: argparse.ArgumentParser, specs: list[str]) -> dict[str, Quota]:
    def parse(spec: str) -> tuple[str, Quota]:
        key, quota = parse_quota(spec)
        if key.split(":")[0] not in KNOWN_PLATFORMS:
            raise ValueError(f"--quota {spec!r}: unknown platform")
        return key, quota

    return _each(p, specs, parse)


def _text_limits(p: argparse.ArgumentParser, specs: list[str]) -> dict[str, int]:
    return _each(p, specs, parse_text_limit)


def _lease_config(p: argparse.ArgumentParser, a: argparse.Namespace) -> LeaseConfig:
    if a.heartbeat_interval <= 0:
        p.error("--heartbeat-interval must be positive")
    if a.confirm_timeout_s <= 0:
        p.error("--confirm-timeout-s must be positive (seconds a job waits for `job confirm`)")
    ttl = a.lease_ttl if a.lease_ttl is not None else 3 * a.heartbeat_interval
    if ttl <= a.heartbeat_interval:
        p.error("--lease-ttl must be longer than --heartbeat-interval")
    return LeaseConfig(
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


def _retry_policies(p: argparse.ArgumentParser, a: argparse.Namespace) -> RetryPolicies:
    default_policy = RetryPolicy(initial_interval_s=a.retry_initial, max_interval_s=a.retry_max)

    def parse(spec: str) -> tuple[str, RetryPolicy]:
        platform, policy = parse_policy(spec, default_policy)
        if platform not in KNOWN_PLATFORMS:
            raise ValueError(f"--retry-policy {spec!r}: unknown platform {platform!r}")
        return platform, policy

    per_platform = _each(p, a.retry_policy, parse)
    return RetryPolicies(default=default_policy, per_platform=per_platform)
