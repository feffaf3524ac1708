"""The access RPCs of `Publishing` (WhoAmI, tokens, enrollments), mixed into PublishingService.

Every change runs inside the actor: the credential row, its audit event and the sessions it ends
go out in one batch, and the in-memory Credentials change in the same step, so a revoked token
or device is refused from the next call on. Secrets are returned once and never logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from coordinator.access.interceptor import current_principal
from coordinator.access.records import (
    DEVICE_PREFIX,
    OPERATOR_PREFIX,
    DeviceEnrollment,
    OperatorToken,
    Role,
    check_name,
    hash_secret,
    new_secret,
)
from coordinator.access.registry import OPEN, Credentials
from coordinator.actor import Coordinator
from coordinator.convert import target_pb, ts
from coordinator.domain import KNOWN_PLATFORMS, AuditEvent, Target
from coordinator.errors import CoordinatorError, FailedPrecondition, InvalidArgument, NotFound
from coordinator.leasing.core import LeaseCore
from coordinator.leasing.effects import Effects
from postroom.v1 import access_pb2 as ac
from postroom.v1 import types_pb2 as pb

log = logging.getLogger("postroom.coordinator.access")
Ctx = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R")
MAX_ENROLLED_ACCOUNTS = 1000
OPEN_ACTOR = "user:local"  # who created a token on an open coordinator (no identity yet)

_ROLES_PB = {
    Role.VIEWER: ac.ROLE_VIEWER,
    Role.AUTHOR: ac.ROLE_AUTHOR,
    Role.APPROVER: ac.ROLE_APPROVER,
    Role.ADMIN: ac.ROLE_ADMIN,
}
_ROLES = {v: k for k, v in _ROLES_PB.items()}


def rpc(
    fn: Callable[[Any, Any, Ctx], Awaitable[R]],
) -> Callable[[Any, Any, Ctx], Awaitable[R]]:
    """publishing.rpc's twin (importing it would be circular): our errors as their statuses,
    anything else logged and answered INTERNAL with an incident id."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> R:
        try:
            return await fn(self, request, context)
        except CoordinatorError as exc:
            await context.abort(exc.status_code, str(exc))
            raise
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("%s failed (incident %s)", fn.__name__, incident)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"the coordinator could not handle this request (incident {incident} in its log)",
            )
            raise

    return wrapper


def token_pb(token: OperatorToken) -> ac.OperatorToken:
    return ac.OperatorToken(
        id=token.id,
        name=token.name,
        role=_ROLES_PB[token.role],
        created_at=ts(token.created_at),
        created_by=token.created_by,
        revoked_at=ts(token.revoked_at),
    )


def enrollment_pb(enrollment: DeviceEnrollment) -> ac.DeviceEnrollment:
    return ac.DeviceEnrollment(
        name=enrollment.name,
        accounts=[target_pb(a) for a in enrollment.accounts],
        created_at=ts(enrollment.created_at),
        created_by=enrollment.created_by,
        revoked_at=ts(enrollment.revoked_at),
    )


def enrolled_accounts(accounts: Sequence[pb.Target]) -> tuple[Target, ...]:
    if not accounts:
        raise InvalidArgument(
            "no accounts: enroll a device for at least one --account PLATFORM:ACCOUNT "
            "(PLATFORM:* for every account of a platform)"
        )
    if len(accounts) > MAX_ENROLLED_ACCOUNTS:
        raise InvalidArgument(f"{len(accounts)} accounts; at most {MAX_ENROLLED_ACCOUNTS}")
    out: list[Target] = []
    for a in accounts:
        platform, account = a.platform.strip().lower(), a.account.strip()
        if platform not in KNOWN_PLATFORMS:
            raise InvalidArgument(
                f"unknown platform {a.platform[:40]!r}; use one of "
                + ", ".join(sorted(KNOWN_PLATFORMS))
            )
        if not account or len(account) > 256:
            raise InvalidArgument(
                f"account on {platform} must be 1-256 characters, or * for every account"
            )
        target = Target(platform, account)
        if target not in out:
            out.append(target)
    return tuple(out)


def end_device_sessions(core: LeaseCore, device_id: str, reason: str, now: float) -> Effects:
    """End every session of the device at once; its jobs are recovered like a lost stream's."""
    fx = Effects()
    for session in [s for s in core.sessions.values() if s.device_id == device_id]:
        fx.extend(core.session_lost(session.id, now, reason=reason))
        fx.close_sessions.append(session.id)
    return fx


class AccessRpcs:
    """Mixed into PublishingService, which sets `co`, `core` and `store`."""

    co: Coordinator
    core: LeaseCore

    @property
    def credentials(self) -> Credentials:
        return self.co.credentials

    def _admin_actor(self) -> str:
        principal = current_principal() or OPEN
        return principal.actor or OPEN_ACTOR

    @rpc
    async def WhoAmI(self, request: ac.WhoAmIRequest, context: Ctx) -> ac.WhoAmIResponse:
        principal = current_principal() or OPEN
        return ac.WhoAmIResponse(
            actor=principal.actor,
            role=_ROLES_PB[principal.role],
            authenticated=principal.authenticated,
        )

    # ---- operator tokens -----------------------------------------------------------------

    @rpc
    async def CreateToken(
        self, request: ac.CreateTokenRequest, context: Ctx
    ) -> ac.CreateTokenResponse:
        name = request.name.strip()
        if problem := check_name(name, "token name"):
            raise InvalidArgument(problem)
        role = _ROLES.get(request.role)
        if role is None:
            raise InvalidArgument("role is required: viewer, author, approver or admin")
        if not self.credentials.auth_on and role is not Role.ADMIN:
            raise FailedPrecondition(
                "the first token must be an admin token (--role admin): it turns authentication "
                "on, and from then on only tokens can create tokens"
            )
        secret = new_secret(OPERATOR_PREFIX)
        actor = self._admin_actor()

        async def run(now: float) -> tuple[Effects, OperatorToken]:
            first = not self.credentials.auth_on
            token = OperatorToken(
                id=f"t-{uuid.uuid4().hex[:12]}",
                name=name,
                role=role,
                token_hash=hash_secret(secret),
                created_at=now,
                created_by=actor,
            )
            self.credentials.put_token(token)
            fx = Effects()
            fx.batch.operator_tokens.append(token)
            details = {"name": name, "role": role.value, "turned_auth_on": first}
            fx.batch.audits.append(AuditEvent("TOKEN_CREATED", token.id, actor, now, details))
            if first:
                # Workers connected while the coordinator was open proved nothing: from now on
                # every device must present its own token.
                for session in list(self.core.sessions.values()):
                    fx.extend(
                        end_device_sessions(
                            self.core, session.device_id, "authentication turned on", now
                        )
                    )
            return fx, token

        token = await self.co.call(run)
        return ac.CreateTokenResponse(token=token_pb(token), secret=secret)

    @rpc
    async def ListTokens(
        self, request: ac.ListTokensRequest, context: Ctx
    ) -> ac.ListTokensResponse:
        tokens = [t for t in self.credentials.tokens() if t.active or request.include_revoked]
        return ac.ListTokensResponse(tokens=[token_pb(t) for t in tokens])

    @rpc
    async def RevokeToken(
        self, request: ac.RevokeTokenRequest, context: Ctx
    ) -> ac.RevokeTokenResponse:
        wanted = request.token.strip()
        if not wanted:
            raise InvalidArgument("token is required: a token id (t-…) or a name")
        if wanted.startswith((OPERATOR_PREFIX, DEVICE_PREFIX)):
            # Never echo it back: it may be a live secret pasted by mistake.
            raise InvalidArgument("give the token's id (t-…) or name, not its secret")
        actor = self._admin_actor()

        async def run(now: float) -> tuple[Effects, list[OperatorToken]]:
            creds = self.credentials
            matches = [t for t in creds.tokens() if t.active and wanted in (t.id, t.name)]
            if not matches:
                raise NotFound(f"no active operator token has the id or name {wanted[:80]!r}")
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
                fx.batch.audits.append(AuditEvent("TOKEN_REVOKED", token.id, actor, now, details))
                revoked.append(token)
            return fx, revoked

        revoked = await self.co.call(run)
        return ac.RevokeTokenResponse(revoked=[token_pb(t) for t in revoked])

    # ---- device enrollments --------------------------------------------------------------

    @rpc
    async def EnrollDevice(
        self, request: ac.EnrollDeviceRequest, context: Ctx
    ) -> ac.EnrollDeviceResponse:
        name = request.name.strip()
        if problem := check_name(name, "device name"):
            raise InvalidArgument(problem)
        accounts = enrolled_accounts(request.accounts)
        if not self.credentials.auth_on:
            raise FailedPrecondition(
                "device tokens need authentication on: create an admin token first "
                "(`postroom token create --role admin --name NAME`), then enroll with it"
            )
        secret = new_secret(DEVICE_PREFIX)
        actor = self._admin_actor()

        async def run(now: float) -> tuple[Effects, DeviceEnrollment]:
            old = self.credentials.enrollment(name)
            if old is not None and old.active and not request.rotate:
                raise FailedPrecondition(
                    f"device {name} is enrolled already; --rotate gives it a new token (its "
                    "session ends), or revoke it first"
                )
            enrollment = DeviceEnrollment(
                name=name,
                accounts=accounts,
                token_hash=hash_secret(secret),
                created_at=now,
                created_by=actor,
            )
            self.credentials.put_enrollment(enrollment)
            fx = Effects()
            fx.batch.enrollments.append(enrollment)
            rotated = old is not None and old.active
            action = "DEVICE_TOKEN_ROTATED" if rotated else "DEVICE_ENROLLED"
            details = {"accounts": [str(a) for a in accounts]}
            fx.batch.audits.append(AuditEvent(action, name, actor, now, details))
            fx.extend(end_device_sessions(self.core, name, "device token replaced", now))
            return fx, enrollment

        enrollment = await self.co.call(run)
        return ac.EnrollDeviceResponse(enrollment=enrollment_pb(enrollment), secret=secret)

    @rpc
    async def ListEnrollments(
        self, request: ac.ListEnrollmentsRequest, context: Ctx
    ) -> ac.ListEnrollmentsResponse:
        found = [e for e in self.credentials.enrollments() if e.active or request.include_revoked]
        return ac.ListEnrollmentsResponse(enrollments=[enrollment_pb(e) for e in found])

    @rpc
    async def RevokeDevice(
        self, request: ac.RevokeDeviceRequest, context: Ctx
    ) -> ac.DeviceEnrollment:
        name = request.name.strip()
        if not name:
            raise InvalidArgument("name is required: the device to revoke")
        actor = self._admin_actor()

        async def run(now: float) -> tuple[Effects, DeviceEnrollment]:
            enrollment = self.credentials.enrollment(name)
            if enrollment is None:
                raise NotFound(f"device {name[:80]!r} is not enrolled")
            fx = Effects()
            if enrollment.active:
                enrollment = dataclasses.replace(enrollment, revoked_at=now)
                self.credentials.put_enrollment(enrollment)
                fx.batch.enrollments.append(enrollment)
                fx.batch.audits.append(AuditEvent("DEVICE_REVOKED", name, actor, now, {}))
            fx.extend(end_device_sessions(self.core, name, "device revoked", now))
            return fx, enrollment

        return enrollment_pb(await self.co.call(run))
