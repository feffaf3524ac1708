"""Worker configuration: parsed once at the edge (worker/main.py), passed down frozen."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from postroom.address import split_host_port, split_targets
from postroom.tls import ClientTls
from postroom.v1 import types_pb2

WorkerKindName = Literal["api", "browser"]
LogFormat = Literal["text", "json"]

# An account of "*" in Hello capabilities means "any account on this platform".
ANY_ACCOUNT = "*"

DEFAULT_CONCURRENCY = 4
DEFAULT_METRICS_LISTEN = "127.0.0.1:0"
DEFAULT_REQUEST_TIMEOUT_S = 10.0
DEFAULT_DRAIN_TIMEOUT_S = 60.0
DEFAULT_LOG_FORMAT: LogFormat = "text"
DEFAULT_LOG_LEVEL = "INFO"

# Reconnect backoff: 0.2 s, 0.4 s, ... capped at 5 s, each scaled by a random factor in [0.5, 1].
DEFAULT_RECONNECT_INITIAL_S = 0.2
DEFAULT_RECONNECT_FACTOR = 2.0
DEFAULT_RECONNECT_MAX_S = 5.0

# Until Welcome says otherwise (design.md: H = 5 s, TTL = 3H).
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
DEFAULT_LEASE_TTL_S = 15.0
DEFAULT_WELCOME_TIMEOUT_S = 10.0
# A job stops by itself this long before an unrenewed lease deadline: max(1 s, 20 % of the TTL),
# but never more than half the TTL (a very short TTL would otherwise stop every job at once).
DEFAULT_LEASE_MARGIN_MIN_S = 1.0
DEFAULT_LEASE_MARGIN_TTL_FRACTION = 0.2
DEFAULT_LEASE_MARGIN_MAX_TTL_FRACTION = 0.5
# After our half-close, how long to wait for the coordinator to end the stream.
DEFAULT_CLOSE_TIMEOUT_S = 5.0
DEFAULT_LOGIN_CHECK_TIMEOUT_S = 30.0

DEFAULT_OUTBOX_MESSAGES = 256
# toolchain.md: a message over 4 MiB kills the stream; 256 KiB chunks are plenty.
DEFAULT_MAX_CHUNK_BYTES = 256 * 1024

KINDS: dict[WorkerKindName, types_pb2.WorkerKind.ValueType] = {
    "api": types_pb2.WORKER_KIND_API,
    "browser": types_pb2.WORKER_KIND_BROWSER,
}


@dataclass(frozen=True, slots=True)
class Capability:
    """A (platform, account) pair this worker can publish to; account "*" means any."""

    platform: str
    account: str = ANY_ACCOUNT

    @classmethod
    def parse(cls, text: str) -> Capability:
        """`sandbox:acme` -> (sandbox, acme); `sandbox` -> (sandbox, *)."""
        platform, _, account = text.partition(":")
        platform, account = platform.strip(), account.strip()
        if not platform:
            raise ValueError(f"bad --platform {text!r}: expected PLATFORM or PLATFORM:ACCOUNT")
        return cls(platform=platform, account=account or ANY_ACCOUNT)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffPolicy:
    initial_s: float = DEFAULT_RECONNECT_INITIAL_S
    factor: float = DEFAULT_RECONNECT_FACTOR
    max_s: float = DEFAULT_RECONNECT_MAX_S

    def delay_s(self, attempt: int, jitter: float) -> float:
        """Delay before reconnect number `attempt` (0-based); `jitter` is uniform in [0, 1)."""
        base = min(self.max_s, self.initial_s * self.factor ** min(attempt, 32))
        return base * (0.5 + 0.5 * jitter)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    # One or several coordinators, comma-separated (`coordinators` has them apart): the worker
    # dials them in turn until one answers, and moves on when its stream breaks.
    coordinator: str
    device_id: str
    capabilities: tuple[Capability, ...]
    # The device token (`postroom device enroll`), from POSTROOM_DEVICE_TOKEN or --token-file.
    token: str = field(default="", repr=False)
    # How to dial the coordinator: plaintext to loopback, TLS (--ca, client certificate) beyond.
    tls: ClientTls = field(default_factory=ClientTls)
    kind: WorkerKindName = "api"
    # Jobs one account may run at once here (Hello.per_account_slots): 1 on a browser worker
    # (one profile types one post at a time), 0 = no per-account limit (API workers).
    per_account_slots: int = 0
    concurrency: int = DEFAULT_CONCURRENCY
    metrics_listen: str = DEFAULT_METRICS_LISTEN
    sandbox_url: str | None = None
    # Publish nowhere (benchmarks, dry runs): every platform gets the no-op adapter.
    noop: bool = False
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    log_format: LogFormat = DEFAULT_LOG_FORMAT
    log_level: str = DEFAULT_LOG_LEVEL
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    welcome_timeout_s: float = DEFAULT_WELCOME_TIMEOUT_S
    close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S
    reconnect: BackoffPolicy = BackoffPolicy()
    version: str = "0.1.0"

    def __post_init__(self) -> None:
        if not self.device_id:
            raise ValueError("device id must not be empty")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if not self.capabilities:
            raise ValueError("at least one --platform is needed")
        if self.request_timeout_s <= 0:
            raise ValueError("request timeout must be > 0")
        split_targets(self.coordinator)
        split_host_port(self.metrics_listen)

    @property
    def coordinators(self) -> tuple[str, ...]:
        return split_targets(self.coordinator)

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.platform for c in self.capabilities))


def lease_margin_s(lease_ttl_s: float) -> float:
    """How long before an unrenewed deadline a job stops by itself."""
    margin = max(DEFAULT_LEASE_MARGIN_MIN_S, DEFAULT_LEASE_MARGIN_TTL_FRACTION * lease_ttl_s)
    return min(margin, DEFAULT_LEASE_MARGIN_MAX_TTL_FRACTION * lease_ttl_s)
