"""The access commands (operator tokens, device enrollments), decided inside the actor: pure
handlers called from coordinator/step.py's table. The credential row, its audit event and the
sessions it ends go out in one batch, and the in-memory Credentials change in the same step, so
a revoked token or device is refused from the next call on."""

from __future__ import annotations

import dataclasses

from coordinator.access.records import DeviceEnrollment, OperatorToken, Role
from coordinator.access.registry import Credentials
from coordinator.domain import AuditEvent
from coordinator.errors import FailedPrecondition, NotFound
from coordinator.leasing.core import LeaseCore
from coordinator.leasing.effects import Effects
from coordinator.operator_commands import CreateToken, EnrollDevice, RevokeDevice, RevokeToken


def end_device_sessions(core: LeaseCore, device_id: str, reason: str, now: float) -> Effects:
    """End every session of the device at once; its jobs are recovered like a lost stream's."""
    fx = Effects()
    for session in [s for s in core.sessions.values() if s.device_id == device_id]:
        fx.extend(core.session_lost(session.id, now, reason=reason))
        fx.close_sessions.append(session.id)
    return fx


def create_token(creds: Credentials, core: LeaseCore, cmd: CreateToken, now: float) -> Effects:
    first = not creds.auth_on
    if first and cmd.role is not Role.ADMIN:
        raise FailedPrecondition(
            "the first token must be an admin token (--role admin): it turns authentication "
            "on, and from then on only tokens can create tokens"
        )
    token = OperatorToken(cmd.token_id, cmd.name, cmd.role, cmd.token_hash, now, cmd.actor)
    creds.put_token(token)
    fx = Effects()
    fx.batch.operator_tokens.append(token)
    details = {"name": cmd.name, "role": cmd.role.value, "turned_auth_on": first}
    fx.batch.audits.append(AuditEvent("TOKEN_CREATED", token.id, cmd.actor, now, details))
    if first:
        # Workers connected while the coordinator was open proved nothing: from now on every
        # device must present its own token.
        for session in list(core.sessions.values()):
            reason = "authentication turned on"
            fx.extend(end_device_sessions(core, session.device_id, reason, now))
    fx.reply = token
    return fx


def revoke_token(creds: Credentials, core: LeaseCore, cmd: RevokeToken, now: float) -> Effects:
    matches = [t for t in creds.tokens() if t.active and cmd.wanted in (t.id, t.name)]
    if not matches:
        raise NotFound(f"no active operator token has the id or name {cmd.wanted[:80]!r}")
    admins_left = [
        t for t in creds.tokens() if t.active and t.role is Role.ADMIN and t not in matches
    ]
    if any(t.role is Role.ADMIN for t in matches) and not admins_left:
        raise FailedPrecondition(
            "that would revoke the last admin token: create another admin token first"
        )
    fx = Effects()
    revoked = []
    for token in matches:
        token = dataclasses.replace(token, revoked_at=now)
        creds.put_token(token)
        fx.batch.operator_tokens.append(token)
        details = {"name": token.name, "role": token.role.value}
        fx.batch.audits.append(AuditEvent("TOKEN_REVOKED", token.id, cmd.actor, now, details))
        revoked.append(token)
    fx.reply = revoked
    return fx


def enroll_device(creds: Credentials, core: LeaseCore, cmd: EnrollDevice, now: float) -> Effects:
    if not creds.auth_on:
        raise FailedPrecondition(
            "device tokens need authentication on: create an admin token first "
            "(`postroom token create --role admin --name NAME`), then enroll with it"
        )
    old = creds.enrollment(cmd.name)
    if old is not None and old.active and not cmd.rotate:
        raise FailedPrecondition(
            f"device {cmd.name} is enrolled already; --rotate gives it a new token (its "
            "session ends), or revoke it first"
        )
    enrollment = DeviceEnrollment(
        name=cmd.name,
        accounts=cmd.accounts,
        token_hash=cmd.token_hash,
        created_at=now,
        created_by=cmd.actor,
    )
    creds.put_enrollment(enrollment)
    fx = Effects()
    fx.batch.enrollments.append(enrollment)
    rotated = old is not None and old.active
    action = "DEVICE_TOKEN_ROTATED" if rotated else "DEVICE_ENROLLED"
    details = {"accounts": [str(a) for a in cmd.accounts]}
    fx.batch.audits.append(AuditEvent(action, cmd.name, cmd.actor, now, details))
    fx.extend(end_device_sessions(core, cmd.name, "device token replaced", now))
    fx.reply = enrollment
    return fx


def revoke_device(creds: Credentials, core: LeaseCore, cmd: RevokeDevice, now: float) -> Effects:
    enrollment = creds.enrollment(cmd.name)
    if enrollment is None:
        raise NotFound(f"device {cmd.name[:80]!r} is not enrolled")
    fx = Effects()
    if enrollment.active:
        enrollment = dataclasses.replace(enrollment, revoked_at=now)
        creds.put_enrollment(enrollment)
        fx.batch.enrollments.append(enrollment)
        fx.batch.audits.append(AuditEvent("DEVICE_REVOKED", cmd.name, cmd.actor, now, {}))
    fx.extend(end_device_sessions(core, cmd.name, "device revoked", now))
    fx.reply = enrollment
    return fx
