"""The bridge's settings, parsed once at the edge (the CLI) and passed down frozen."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from postroom.v1 import types_pb2 as pb
from postroom_vault import VaultError

DEFAULT_RESCAN_S = 2.0
DEFAULT_PARALLEL = 8
DEFAULT_ACTOR = "postroom_vault"
# The field's names for platforms that postroom names differently.
PLATFORM_ALIASES = {"twitter": "x"}


def parse_account(spec: str) -> tuple[str, pb.Target]:
    """`NAME=ACCOUNT` (postroom platform from NAME, twitter → x) or `NAME=PLATFORM:ACCOUNT`."""
    name, sep, where = spec.partition("=")
    name, where = name.strip().lower(), where.strip()
    if not sep or not name or not where:
        raise VaultError(f"--account {spec!r}: write NAME=ACCOUNT or NAME=PLATFORM:ACCOUNT")
    platform, colon, account = where.partition(":")
    if not colon:
        platform, account = PLATFORM_ALIASES.get(name, name), where
    if not platform or not account:
        raise VaultError(f"--account {spec!r}: the platform and the account must not be empty")
    return name, pb.Target(platform=platform, account=account)


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    vault: Path
    # The vault's platform name (facebook, instagram, twitter, …) → where postroom publishes it.
    accounts: dict[str, pb.Target] = field(default_factory=dict)
    rescan_s: float = DEFAULT_RESCAN_S
    parallel: int = DEFAULT_PARALLEL
    actor: str = DEFAULT_ACTOR
    force_polling: bool = False
