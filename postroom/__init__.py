"""postroom: generated wire protocol lives in postroom.v1 (do not edit, run `make proto`).

The Python API (`postroom.Client`, `postroom.AsyncClient`, `postroom.PostroomError` and its
subclasses) is in `postroom.client`, imported on first use so that the coordinator and the
workers, which import `postroom.clock` and friends, do not load it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from postroom.client import (
        AlreadyExists,
        AsyncClient,
        Client,
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


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("postroom.client"), name)
    raise AttributeError(f"module 'postroom' has no attribute {name!r}")


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
