"""Who may talk to the coordinator: the operator tokens and device enrollments, in memory.

One `Credentials` per coordinator, loaded from the store at start-up. It is changed inside the
actor (the access commands, coordinator/access/changes.py), in the same step that writes the
rows and their audit events, and read by the gRPC edge (the operator interceptor, the
WorkerGateway's Hello check). With several coordinators (cluster mode) the others' changes
arrive by `merge` (coordinator/cluster/credentials.py): rows read from the store, merged so that
the order of the two never matters (a revocation is never undone, a device's newer token wins),
in one synchronous step, so it may run beside the actor, and on a coordinator whose actor does
not run (a standby still checks operators' tokens).

Authentication is on when the deployment asks for it (listening beyond loopback, a bootstrap
admin token file, `--require-auth`) or as soon as the store holds an operator token: creating the
first one on an open loopback coordinator turns it on for good (revoking every token does not
open the door again).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from coordinator.access.records import (
    DEVICE_PREFIX,
    OPERATOR_PREFIX,
    DeviceEnrollment,
    OperatorToken,
    Role,
    hash_secret,
)
from coordinator.domain import Target
from coordinator.errors import PermissionDenied, Unauthenticated

ENROLL_HINT = (
    "enroll it with `postroom device enroll NAME --account PLATFORM:ACCOUNT` and start the "
    "worker with the printed token in POSTROOM_DEVICE_TOKEN or --token-file PATH"
)
OPERATOR_HINT = (
    "set POSTROOM_TOKEN to an operator token (an admin makes one with `postroom token create`), "
    "or send the metadata 'authorization: Bearer TOKEN'"
)


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """What the deployment asked for, parsed once from the command line."""

    # Tokens are required even before the store holds any (exposed, bootstrap, --require-auth).
    require_auth: bool = False
    # An operator may approve a post they created or edited.
    allow_self_approval: bool = False
    # Mutual TLS: a worker's client certificate must name its device id (CN or a SAN).
    bind_client_cert: bool = False


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one Publishing RPC."""

    role: Role
    # The token's identity ("user:alice"); empty when the coordinator runs open.
    actor: str = ""
    token_id: str = ""

    @property
    def authenticated(self) -> bool:
        return bool(self.actor)


OPEN = Principal(Role.ADMIN)  # an open (loopback, no tokens yet) coordinator trusts every caller


@dataclass(frozen=True, slots=True)
class Merged:
    """What a merge of the store's credentials changed here."""

    # Tokens new here or newly revoked (ids).
    tokens: tuple[str, ...] = ()
    # Devices whose sessions must end: name -> why ("device revoked", "device token replaced").
    ended: dict[str, str] = field(default_factory=dict)
    # New enrollments of devices not known here (names).
    enrolled: tuple[str, ...] = ()
    # The first token turned authentication on: sessions opened while open proved nothing.
    turned_auth_on: bool = False

    def __bool__(self) -> bool:
        return bool(self.tokens or self.ended or self.enrolled or self.turned_auth_on)


class Credentials:
    def __init__(
        self,
        *,
        policy: AccessPolicy | None = None,
        tokens: Iterable[OperatorToken] = (),
        enrollments: Iterable[DeviceEnrollment] = (),
    ) -> None:
        self.policy = policy or AccessPolicy()
        self._tokens: dict[str, OperatorToken] = {}
        self._token_ids_by_hash: dict[str, str] = {}
        self._enrollments: dict[str, DeviceEnrollment] = {}
        self._enrolled_by_hash: dict[str, str] = {}
        for token in tokens:
            self.put_token(token)
        for enrollment in enrollments:
            self.put_enrollment(enrollment)

    @property
    def auth_on(self) -> bool:
        return self.policy.require_auth or bool(self._tokens)

    # ---- operators -----------------------------------------------------------------------

    def tokens(self) -> list[OperatorToken]:
        return sorted(self._tokens.values(), key=lambda t: (t.created_at, t.id))

    def token(self, token_id: str) -> OperatorToken | None:
        return self._tokens.get(token_id)

    def has_active_admin(self) -> bool:
        return any(t.active and t.role is Role.ADMIN for t in self._tokens.values())

    def put_token(self, token: OperatorToken) -> None:
        """Inside the actor only (or at load)."""
        self._tokens[token.id] = token
        self._token_ids_by_hash[token.token_hash] = token.id

    def operator(self, authorization: str | None) -> Principal:
        """The principal for an `authorization` metadata value; raises Unauthenticated."""
        if not self.auth_on:
            return OPEN
        if not authorization:
            raise Unauthenticated(f"this coordinator requires an operator token: {OPERATOR_HINT}")
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise Unauthenticated("the authorization metadata must be 'Bearer TOKEN'")
        if secret.startswith(DEVICE_PREFIX):
            raise Unauthenticated(
                "that is a device token (prd_…): workers present it; operators need an operator "
                "token (prt_…)"
            )
        token_id = self._token_ids_by_hash.get(hash_secret(secret))
        token = self._tokens.get(token_id or "")
        if token is None:
            raise Unauthenticated(f"operator token unknown: {OPERATOR_HINT}")
        if not token.active:
            raise Unauthenticated(
                f"operator token {token.id} ({token.name}) was revoked; ask an admin for a new one"
            )
        return Principal(token.role, actor=token.actor, token_id=token.id)

    # ---- devices -------------------------------------------------------------------------

    def enrollments(self) -> list[DeviceEnrollment]:
        return sorted(self._enrollments.values(), key=lambda e: e.name)

    def enrollment(self, name: str) -> DeviceEnrollment | None:
        return self._enrollments.get(name)

    def put_enrollment(self, enrollment: DeviceEnrollment) -> None:
        """Inside the actor only (or at load). Replaces the device's previous token, if any."""
        old = self._enrollments.get(enrollment.name)
        if old is not None:
            self._enrolled_by_hash.pop(old.token_hash, None)
        self._enrollments[enrollment.name] = enrollment
        self._enrolled_by_hash[enrollment.token_hash] = enrollment.name

    def device(
        self, device_id: str, secret: str, capabilities: Sequence[Target]
    ) -> DeviceEnrollment | None:
        """Check a Hello: the enrollment it proves (None on an open coordinator). Raises
        Unauthenticated (no, unknown or revoked token) or PermissionDenied (another device's
        token, or an account the device is not enrolled for)."""
        if not self.auth_on:
            return None
        if not secret:
            raise Unauthenticated(f"this coordinator requires a device token: {ENROLL_HINT}")
        if secret.startswith(OPERATOR_PREFIX):
            raise Unauthenticated(
                "that is an operator token (prt_…), not a device token: " + ENROLL_HINT
            )
        name = self._enrolled_by_hash.get(hash_secret(secret))
        enrollment = self._enrollments.get(name or "")
        if enrollment is None:
            raise Unauthenticated(
                f"device token unknown (never issued, replaced or revoked): {ENROLL_HINT}"
            )
        if not enrollment.active:
            raise Unauthenticated(
                f"device {enrollment.name} was revoked; enroll it again for a new token"
            )
        if enrollment.name != device_id:
            raise PermissionDenied(
                f"this token belongs to device {enrollment.name!r}, not {device_id[:80]!r}: "
                f"start the worker with --device-id {enrollment.name}"
            )
        refused = [c for c in capabilities if not enrollment.covers(c)]
        if refused:
            enrolled = ", ".join(str(a) for a in enrollment.accounts)
            raise PermissionDenied(
                f"device {device_id} is not enrolled for {', '.join(str(c) for c in refused[:5])}"
                f" (enrolled: {enrolled}); serve only those, or re-enroll it with "
                "`postroom device enroll NAME --rotate --account ...`"
            )
        return enrollment

    # ---- several coordinators ------------------------------------------------------------

    def merge(
        self, tokens: Iterable[OperatorToken], enrollments: Iterable[DeviceEnrollment]
    ) -> Merged:
        """Take in the credentials as the store has them (another coordinator may have changed
        them). Monotonic, so rows read before one of this coordinator's own changes committed
        never undo it: a token is only ever added or revoked; a device's enrollment is replaced
        by a newer one (created later: a rotation or a new enrollment, the clocks of
        coordinators sharing a database agreeing to well under the time an operator takes
        between two of them) or by its own revocation. What changed, for the caller to end the
        sessions it must."""
        was_on = self.auth_on
        new_tokens: list[str] = []
        for token in tokens:
            known = self._tokens.get(token.id)
            if known is None or (known.active and not token.active):
                self.put_token(token)
                new_tokens.append(token.id)
        ended: dict[str, str] = {}
        enrolled: list[str] = []
        for enrollment in enrollments:
            known_e = self._enrollments.get(enrollment.name)
            if known_e is None:
                self.put_enrollment(enrollment)
                enrolled.append(enrollment.name)
            elif known_e.token_hash != enrollment.token_hash:
                if (enrollment.created_at, enrollment.token_hash) > (
                    known_e.created_at,
                    known_e.token_hash,
                ):
                    self.put_enrollment(enrollment)
                    why = "device token replaced" if enrollment.active else "device revoked"
                    ended[enrollment.name] = why
            elif known_e.active and not enrollment.active:
                self.put_enrollment(enrollment)
                ended[enrollment.name] = "device revoked"
        turned_on = self.auth_on and not was_on
        return Merged(tuple(new_tokens), ended, tuple(enrolled), turned_on)

    def still_valid(self, enrollment: DeviceEnrollment | None) -> bool:
        """Is the identity a session proved still good: its enrollment still the device's
        current one (None, a session of an open coordinator: only while authentication is off)?"""
        if enrollment is None:
            return not self.auth_on
        current = self._enrollments.get(enrollment.name)
        return (
            current is not None and current.active and current.token_hash == (enrollment.token_hash)
        )
