"""The Python API of postroom: a typed client of a coordinator's `Publishing` service.

    from postroom import Client, AsyncClient, PostroomError

`Client` (synchronous) and `AsyncClient` (asyncio) have the same methods: posts (create,
update, submit, approve, schedule, cancel, delete), jobs (get, list, watch, retry, confirm,
cancel, resolve, export), screenshots, devices, rate limits, audit export and access. They read
the CLI's environment (POSTROOM_COORDINATOR, POSTROOM_TOKEN, POSTROOM_CA, …); failures raise
`PostroomError` subclasses carrying the gRPC status and the coordinator's message.
"""

from __future__ import annotations

from postroom.client.aio import AsyncClient
from postroom.client.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PostroomError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from postroom.client.sync import Client

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "PostroomError",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]
