"""The access RPCs of `Publishing` (WhoAmI, tokens, enrollments), mixed into PublishingService.

Every change is a command value (coordinator/operator_commands.py) decided inside the actor by
access/changes.py: the credential row, its audit event and the sessions it ends go out in one
batch, and the in-memory Credentials change in the same step, so a revoked token or device is
refused from the next call on. Secrets are returned once and never logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from coordinator import operator_commands as op
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
from coordinator.domain import KNOWN_PLATFORMS, Target
from coordinator.errors import CoordinatorError, InvalidArgument
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


class AccessRpcs:
    """Mixed into PublishingService, which sets `co`."""

    co: Coordinator

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
        secret = new_secret(OPERATOR_PREFIX)
        actor = self._admin_actor()
        new = op.CreateToken(f"t-{uuid.uuid4().hex[:12]}", name, role, hash_secret(secret), actor)
        token: OperatorToken = await self.co.command(new)
        return ac.CreateTokenResponse(token=token_pb(token), secret=secret)

    @rpc
    async def ListTokens(
        self, request: ac.ListTokensRequest, context: Ctx
    ) -> ac.ListTokensResponse:
        everyone = request.include_revoked
        tokens = await self.co.read(
            lambda now: [t for t in self.credentials.tokens() if t.active or everyone]
        )
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
        revoked: list[OperatorToken] = await self.co.command(op.RevokeToken(wanted, actor))
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
        secret = new_secret(DEVICE_PREFIX)
        actor = self._admin_actor()
        enroll = op.EnrollDevice(name, accounts, hash_secret(secret), request.rotate, actor)
        enrollment: DeviceEnrollment = await self.co.command(enroll)
        return ac.EnrollDeviceResponse(enrollment=enrollment_pb(enrollment), secret=secret)

    @rpc
    async def ListEnrollments(
        self, request: ac.ListEnrollmentsRequest, context: Ctx
    ) -> ac.ListEnrollmentsResponse:
        everyone = request.include_revoked
        found = await self.co.read(
            lambda now: [e for e in self.credentials.enrollments() if e.active or everyone]
        )
        return ac.ListEnrollmentsResponse(enrollments=[enrollment_pb(e) for e in found])

    @rpc
    async def RevokeDevice(
        self, request: ac.RevokeDeviceRequest, context: Ctx
    ) -> ac.DeviceEnrollment:
        name = request.name.strip()
        if not name:
            raise InvalidArgument("name is required: the device to revoke")
        actor = self._admin_actor()
        return enrollment_pb(await self.co.command(op.RevokeDevice(name, actor)))
