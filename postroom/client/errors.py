"""The client's exceptions: one root, a few subclasses by gRPC status, each with the status and
the coordinator's message.

    PostroomError               .code ("NOT_FOUND", "TLS", …), .message, .status (or None)
    ├── InvalidArgument         INVALID_ARGUMENT, OUT_OF_RANGE: fix the request
    ├── NotFound                NOT_FOUND: no such post, job, asset or device
    ├── AlreadyExists           ALREADY_EXISTS
    ├── FailedPrecondition      FAILED_PRECONDITION, ABORTED: not in this state (the message
    │                           says what to wait for or do first)
    ├── PermissionDenied        PERMISSION_DENIED: the token's role may not do this
    ├── Unauthenticated         UNAUTHENTICATED: no token, or a revoked one
    ├── ResourceExhausted       RESOURCE_EXHAUSTED
    ├── Unavailable             UNAVAILABLE: no coordinator at that address
    ├── DeadlineExceeded        DEADLINE_EXCEEDED: no answer in time
    └── Unimplemented           UNIMPLEMENTED: an older coordinator
"""

from __future__ import annotations

import grpc
import grpc.aio


class PostroomError(Exception):
    """Root of every error the client raises. `code` is the gRPC status name (or a local code
    such as "TLS", "TOKEN", "IO"); `status` the `grpc.StatusCode`, None for local errors."""

    status: grpc.StatusCode | None = None

    def __init__(self, code: str, message: str, *, status: grpc.StatusCode | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        if status is not None:
            self.status = status


class InvalidArgument(PostroomError):
    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(PostroomError):
    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(PostroomError):
    status = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(PostroomError):
    status = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(PostroomError):
    status = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(PostroomError):
    status = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(PostroomError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(PostroomError):
    status = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(PostroomError):
    status = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(PostroomError):
    status = grpc.StatusCode.UNIMPLEMENTED


_BY_STATUS: dict[grpc.StatusCode, type[PostroomError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}


def from_status(
    status: grpc.StatusCode | None, details: str, *, target: str, timeout_s: float | None
) -> PostroomError:
    """The exception for a failed call, its message saying what to do about it."""
    if status is None:
        return PostroomError("UNKNOWN", details)
    message = details
    if status == grpc.StatusCode.UNAVAILABLE:
        message = (
            f"{details} (is the coordinator running at {target}? "
            "set --coordinator or POSTROOM_COORDINATOR; if it serves TLS, give --ca or POSTROOM_CA)"
        )
    elif status == grpc.StatusCode.DEADLINE_EXCEEDED and timeout_s is not None:
        message = f"no answer within {timeout_s:g}s (raise --timeout)"
    cls = _BY_STATUS.get(status, PostroomError)
    return cls(status.name, message, status=status)


def translate(exc: grpc.RpcError, *, target: str, timeout_s: float | None) -> PostroomError:
    """A call's `grpc.RpcError` (sync, or grpc.aio's `AioRpcError`) as a PostroomError."""
    # Every RpcError the sync stack raises is also a Call; AioRpcError has the same accessors.
    if not isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        return PostroomError("UNKNOWN", str(exc))
    return from_status(exc.code(), exc.details() or "", target=target, timeout_s=timeout_s)


class Translated:
    """`with Translated(target, timeout_s):` a failed call inside raises a PostroomError (for a
    sync call or an awaited one alike)."""

    def __init__(self, target: str, timeout_s: float | None) -> None:
        self.target = target
        self.timeout_s = timeout_s

    def __enter__(self) -> None:
        return None

    def __exit__(self, _type: object, exc: object, _traceback: object) -> None:
        if isinstance(exc, grpc.RpcError):
            raise translate(exc, target=self.target, timeout_s=self.timeout_s) from exc
