"""The Python API of postroom: a typed client of a coordinator's `Publishing` service.

    from postroom import Client, AsyncClient, PostroomError

`Client` (synchronous) and `AsyncClient` (asyncio) have the same methods: posts (create,
update, submit, approve, schedule, cancel, delete), jobs (get, list, watch, retry, confirm,
cancel, resolve, export), screenshots, devices, rate limits, audit export and access. They read
the CLI's environment (POSTROOM_COORDINATOR, POSTROOM_TOKEN, POSTROOM_CA, …); failures raise
`PostroomError` subclasses carrying the gRPC status and the coordinator's message.
"""

from __future__ import annotations

# The names are listed once, in postroom/__init__.py, which loads this module on first use.
from postroom import __all__ as __all__
from postroom.client.aio import AsyncClient as AsyncClient
from postroom.client.errors import AlreadyExists as AlreadyExists
from postroom.client.errors import DeadlineExceeded as DeadlineExceeded
from postroom.client.errors import FailedPrecondition as FailedPrecondition
from postroom.client.errors import InvalidArgument as InvalidArgument
from postroom.client.errors import NotFound as NotFound
from postroom.client.errors import PermissionDenied as PermissionDenied
from postroom.client.errors import PostroomError as PostroomError
from postroom.client.errors import ResourceExhausted as ResourceExhausted
from postroom.client.errors import Unauthenticated as Unauthenticated
from postroom.client.errors import Unavailable as Unavailable
from postroom.client.errors import Unimplemented as Unimplemented
from postroom.client.sync import Client as Client
