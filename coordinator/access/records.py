"""Credentials as plain values: operator tokens with a role, device enrollments, their secrets.

A secret is shown once, when it is made, and only its SHA-256 is stored: secrets are 256 random
bits, so a fast hash is enough (nothing to brute-force) and lets a token be found by its hash.
The prefixes (`prt_` operator, `prd_` device) make a leaked secret recognisable in a log or a
paste, and tell the two kinds apart in error messages.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass

from coordinator.domain import Target

OPERATOR_PREFIX = "prt_"
DEVICE_PREFIX = "prd_"
SECRET_BYTES = 32
# Names of operators and devices: what the audit log prints after "user:" / "device:".
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
ANY_ACCOUNT = "*"


class Role(enum.StrEnum):
    """Ordered: each role may do everything the roles before it may."""

    VIEWER = "viewer"
    AUTHOR = "author"
    APPROVER = "approver"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANKS = {role: n for n, role in enumerate(Role)}


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str, what: str) -> str | None:
    """None if `name` is a valid operator or device name, else what to fix."""
    if NAME_PATTERN.fullmatch(name):
        return None
    return (
        f"{what} {name[:80]!r} is not a valid name: 1-64 letters, digits, '.', '_', '@' or '-', "
        "starting with a letter or digit"
    )


@dataclass(frozen=True, slots=True)
class OperatorToken:
    id: str
    name: str
    role: Role
    token_hash: str
    created_at: float
    created_by: str
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def actor(self) -> str:
        return f"user:{self.name}"


@dataclass(frozen=True, slots=True)
class DeviceEnrollment:
    name: str
    accounts: tuple[Target, ...]
    token_hash: str
    created_at: float
    created_by: str
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def covers(self, capability: Target) -> bool:
        """May the device serve this Hello capability? An enrolled `platform:*` covers every
        account of the platform; a capability of `platform:*` needs exactly that enrollment."""
        return any(
            a.platform == capability.platform and a.account in (capability.account, ANY_ACCOUNT)
            for a in self.accounts
        )
