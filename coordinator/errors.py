"""Exceptions of the coordinator, one root, translated to gRPC status codes at the edge.

CoordinatorError
├── InvalidArgument        -> INVALID_ARGUMENT   (the request itself is wrong)
├── NotFound               -> NOT_FOUND
├── FailedPrecondition     -> FAILED_PRECONDITION (valid request, wrong state)
│   └── TransitionRefused      a status change not in the transition table
├── ConcurrentUpdate       -> ABORTED            (a compare-and-set missed: someone else moved it)
├── ResourceExhausted      -> RESOURCE_EXHAUSTED (oversized chunk or asset)
├── Unauthenticated        -> UNAUTHENTICATED  (no credential, or an unknown or revoked one)
├── PermissionDenied       -> PERMISSION_DENIED (a valid credential that may not do this)
├── StoreError             -> UNAVAILABLE        (the database failed; wraps the driver error)
└── NotOwner               -> UNAVAILABLE        (another coordinator owns the target's shard)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from coordinator.domain import Target


class CoordinatorError(Exception):
    """Root of every error the coordinator raises on purpose."""

    status_code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(CoordinatorError):
    status_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CoordinatorError):
    status_code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(CoordinatorError):
    status_code = grpc.StatusCode.FAILED_PRECONDITION


class TransitionRefused(FailedPrecondition):
    def __init__(self, kind: str, subject_id: str, current: str, target: str) -> None:
        super().__init__(f"{kind} {subject_id} is {current}; it cannot become {target}")
        self.kind = kind
        self.subject_id = subject_id
        self.current = current
        self.target = target


class ConcurrentUpdate(CoordinatorError):
    status_code = grpc.StatusCode.ABORTED


class ResourceExhausted(CoordinatorError):
    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(CoordinatorError):
    status_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(CoordinatorError):
    status_code = grpc.StatusCode.PERMISSION_DENIED


class StoreError(CoordinatorError):
    status_code = grpc.StatusCode.UNAVAILABLE


class NotOwner(CoordinatorError):
    """A command on a job, gate or login of a (platform, account) whose shard another
    coordinator owns: nothing was done here; the caller retries and is routed to the owner."""

    status_code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, shard: int, target: Target) -> None:
        super().__init__(
            f"shard {shard} of {target.platform}/{target.account} is owned by another "
            "coordinator; retry (it will be routed there)"
        )
        self.shard = shard
        self.target = target
