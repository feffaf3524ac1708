"""Exceptions of the worker, one root; platform adapters raise only the `AdapterError` branch.

WorkerError
├── AdapterError                 a platform attempt failed; `error_class` tells the coordinator how
│   │                            to react (design.md, "Failures, retries, rate limits")
│   ├── RateLimited(retry_at, quota_cap)   RATE_LIMITED    429 / quota: closed until retry_at
│   ├── AuthRequired                        AUTH_REQUIRED   401/403, expired token, login wall
│   ├── InvalidContent                      INVALID_CONTENT 400/422, policy, too long (terminal)
│   ├── Transient                           TRANSIENT       5xx, timeouts, network errors
│   │   └── NotFoundOnVerify                                a verify-only attempt found nothing
│   ├── UiChanged(step, selector)           UI_CHANGED      a selector was not found
│   └── Duplicate(existing_id)              DUPLICATE       the platform already has this post
├── LeaseLost                    the job's lease ran out or was refused: abandon, report nothing
└── SessionError                 the stream to the coordinator
    ├── StreamBroken             failed, ended or went silent: reconnect
    └── SessionRefused           UNAUTHENTICATED / INVALID_ARGUMENT: reconnecting cannot help

Foreign errors (httpx, grpc) are translated once, where they are caught: `raise Ours(...) from exc`.
"""

from __future__ import annotations

from typing import ClassVar, TypeAlias

from postroom.v1 import types_pb2

ErrorClass: TypeAlias = types_pb2.ErrorClass.ValueType


class WorkerError(Exception):
    """Root of every error the worker raises on purpose."""


class AdapterError(WorkerError):
    """A platform attempt failed in a way the coordinator knows how to handle."""

    error_class: ClassVar[ErrorClass] = types_pb2.ERROR_CLASS_TRANSIENT

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        # The step to report as failed when it is not the one that was running (set by the
        # runtime for a duplicate that verification could not find: the commit failed).
        self.failed_step: str | None = None


class RateLimited(AdapterError):
    """The platform refuses requests until `retry_at` (Unix seconds, already normalised)."""

    error_class = types_pb2.ERROR_CLASS_RATE_LIMITED

    def __init__(
        self,
        message: str,
        *,
        retry_at: float,
        quota_cap: bool,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, http_status=http_status)
        self.retry_at = retry_at
        self.quota_cap = quota_cap


class AuthRequired(AdapterError):
    error_class = types_pb2.ERROR_CLASS_AUTH_REQUIRED


class InvalidContent(AdapterError):
    error_class = types_pb2.ERROR_CLASS_INVALID_CONTENT


class Transient(AdapterError):
    """`not_created`: the platform's answer says nothing was made (a documented "not
    processed" error body), so a failure after the commit permit leaves nothing in doubt."""

    error_class = types_pb2.ERROR_CLASS_TRANSIENT

    def __init__(
        self, message: str, *, http_status: int | None = None, not_created: bool = False
    ) -> None:
        super().__init__(message, http_status=http_status)
        self.not_created = not_created


class NotFoundOnVerify(Transient):
    """A verify-only attempt found no earlier post; it publishes nothing by design."""


class UiChanged(AdapterError):
    """A page did not look as expected: `selector` was not found during `step`."""

    error_class = types_pb2.ERROR_CLASS_UI_CHANGED

    def __init__(self, message: str, *, step: str, selector: str) -> None:
        super().__init__(message)
        self.step = step
        self.selector = selector
        self.failed_step = step or None


class Duplicate(AdapterError):
    """The platform already holds this post; `existing_id` when it said which one."""

    error_class = types_pb2.ERROR_CLASS_DUPLICATE

    def __init__(
        self, message: str, *, existing_id: str | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(message, http_status=http_status)
        self.existing_id = existing_id


class LeaseLost(WorkerError):
    """The job's lease ended (deadline passed unrenewed, CommitDeny, Drop): stop, report nothing."""


class SessionError(WorkerError):
    """The stream to the coordinator."""


class StreamBroken(SessionError):
    """The stream failed, ended without a goodbye, or went silent: reconnect with backoff."""


class SessionRefused(SessionError):
    """The coordinator refused the Hello (bad token, bad arguments): reconnecting cannot help."""
