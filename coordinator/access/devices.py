"""A worker's identity on its stream: checked at Hello, re-checked when the session opens inside
the actor, and judged again when the stream ends (revoked, replaced, superseded).

Without authentication (an open loopback coordinator) a Hello proves nothing and a new stream
of a device replaces the old one, as a reconnect must. With it, a Hello must carry the device's
own token (registry.Credentials.device), so a stream can only be replaced by one that proved the
same identity; the replaced stream then ends with ALREADY_EXISTS, which tells its worker not to
dial again (two processes with one token would otherwise take turns forever).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from coordinator.access.records import DeviceEnrollment
from coordinator.access.registry import ENROLL_HINT, Credentials
from coordinator.domain import Target
from coordinator.errors import PermissionDenied
from coordinator.leasing.core import LeaseCore

CERT_NAME_KEYS = ("x509_common_name", "x509_subject_alternative_name")


def cert_names(context: grpc.aio.ServicerContext[Any, Any]) -> set[str]:
    """The names in the client certificate the TLS handshake verified (empty without one)."""
    auth = context.auth_context() or {}
    return {
        value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        for key in CERT_NAME_KEYS
        for value in auth.get(key, ())
    }


def identify(
    credentials: Credentials,
    *,
    device_id: str,
    token: str,
    capabilities: Sequence[Target],
    context: grpc.aio.ServicerContext[Any, Any],
) -> DeviceEnrollment | None:
    """The enrollment a Hello proves (None on an open coordinator); raises Unauthenticated or
    PermissionDenied with what to fix."""
    if credentials.policy.bind_client_cert and device_id not in cert_names(context):
        raise PermissionDenied(
            f"the client certificate does not name device {device_id[:80]!r}: issue the worker "
            "a certificate whose CN (or a SAN) is its --device-id"
        )
    return credentials.device(device_id, token, capabilities)


def end_status(
    credentials: Credentials,
    core: LeaseCore,
    *,
    enrollment: DeviceEnrollment | None,
    device_id: str,
    session_id: str,
) -> tuple[grpc.StatusCode, str] | None:
    """Why the coordinator ended this stream, as the status its worker should see; None for an
    ordinary end (the worker left, or will reconnect)."""
    if not credentials.still_valid(enrollment):
        if enrollment is None:
            return grpc.StatusCode.UNAUTHENTICATED, (
                f"authentication was turned on: device {device_id} needs a token; {ENROLL_HINT}"
            )
        current = credentials.enrollment(enrollment.name)
        what = "was revoked" if current is None or not current.active else "got a new token"
        return grpc.StatusCode.UNAUTHENTICATED, (
            f"device {enrollment.name} {what}: this session is over; restart the worker with "
            "its current token"
        )
    if any(s.device_id == device_id and s.id != session_id for s in core.sessions.values()):
        return grpc.StatusCode.ALREADY_EXISTS, (
            f"device {device_id} connected again on another stream that proved the same "
            "identity; this stream ends (is a second worker running with this device's token?)"
        )
    return None
