"""A thin typed wrapper over the `Publishing` stub: a channel, a deadline per call, one error.

Every `grpc.RpcError` is translated here, once, into `CliError(code, message)` so the commands
never see grpc exceptions and `main` prints them all the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TypeVar

import grpc

from postroom.tls import ClientTls, TlsError, sync_channel
from postroom.v1 import access_pb2 as ac
from postroom.v1 import publishing_pb2 as pb
from postroom.v1 import publishing_pb2_grpc, types_pb2

DEFAULT_COORDINATOR = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 10.0

_Resp = TypeVar("_Resp")


# Exit codes of every command: done; failed; usage (argparse); a person must act first.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NEEDS_PERSON = 3


class CliError(Exception):
    """The one error the CLI reports: `error: CODE: message` on stderr, exit code 1."""

    exit_code = EXIT_FAILED

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NeedsPerson(CliError):
    """Nothing more happens by itself (a login wall, say): exit code 3, with what to do."""

    exit_code = EXIT_NEEDS_PERSON

    def __init__(self, message: str, code: str = "NEEDS_LOGIN") -> None:
        super().__init__(code, message)


def translate(exc: grpc.RpcError, *, target: str, timeout_s: float | None) -> CliError:
    """Turn a gRPC failure into a CliError whose message says what to do about it."""
    if not isinstance(exc, grpc.Call):  # every RpcError grpc raises is also a Call
        return CliError("UNKNOWN", str(exc))
    code = exc.code()
    message = exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        message = (
            f"{message} (is the coordinator running at {target}? "
            "set --coordinator or POSTROOM_COORDINATOR; if it serves TLS, give --ca or POSTROOM_CA)"
        )
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout_s is not None:
        message = f"no answer within {timeout_s:g}s (raise --timeout)"
    return CliError(code.name, message)


class PublishingClient:
    """Sync client of `postroom.v1.Publishing`; use as a context manager to close the channel."""

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        token: str = "",
        tls: ClientTls | None = None,
    ) -> None:
        """`token`: an operator token, sent as `authorization: Bearer` on every call. `tls`:
        how to dial (default: plaintext to loopback, TLS with the system's roots elsewhere)."""
        self.target = target
        self.timeout_s = timeout_s
        try:
            self._channel = sync_channel(target, tls or ClientTls())
        except TlsError as exc:
            raise CliError("TLS", str(exc)) from exc
        self._stub = publishing_pb2_grpc.PublishingStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __enter__(self) -> PublishingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _unary(self, call: Callable[..., _Resp], request: object) -> _Resp:
        try:
            return call(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise translate(exc, target=self.target, timeout_s=self.timeout_s) from exc

    def _stream(
        self,
        call: Callable[..., grpc.CallIterator[_Resp]],
        request: object,
        timeout_s: float | None,
    ) -> Iterator[_Resp]:
        responses = call(request, timeout=timeout_s, metadata=self._metadata)
        try:
            yield from responses
        except grpc.RpcError as exc:
            raise translate(exc, target=self.target, timeout_s=timeout_s) from exc
        finally:
            # A caller that stops early (Ctrl-C, an error) ends the server stream; grpc-stubs
            # leaves cancel() untyped.
            responses.cancel()  # type: ignore[no-untyped-call]

    # Posts

    def create_post(self, request: pb.CreatePostRequest) -> types_pb2.Post:
        return self._unary(self._stub.CreatePost, request)

    def get_post(self, post_id: str) -> types_pb2.Post:
        return self._unary(self._stub.GetPost, pb.GetPostRequest(post_id=post_id))

    def list_posts(self, request: pb.ListPostsRequest) -> pb.ListPostsResponse:
        return self._unary(self._stub.ListPosts, request)

    def update_post(self, request: pb.UpdatePostRequest) -> types_pb2.Post:
        return self._unary(self._stub.UpdatePost, request)

    def submit_post(self, post_id: str, *, actor: str) -> types_pb2.Post:
        request = pb.SubmitPostRequest(post_id=post_id, actor=actor)
        return self._unary(self._stub.SubmitPost, request)

    def approve_post(self, post_id: str, *, actor: str, content_hash: str = "") -> types_pb2.Post:
        request = pb.ApprovePostRequest(post_id=post_id, actor=actor, content_hash=content_hash)
        return self._unary(self._stub.ApprovePost, request)

    def schedule_post(self, post_id: str, *, actor: str, scheduled_at: str = "") -> types_pb2.Post:
        request = pb.SchedulePostRequest(post_id=post_id, actor=actor, scheduled_at=scheduled_at)
        return self._unary(self._stub.SchedulePost, request)

    def cancel_post(self, post_id: str, *, actor: str, reason: str = "") -> types_pb2.Post:
        request = pb.CancelPostRequest(post_id=post_id, actor=actor, reason=reason)
        return self._unary(self._stub.CancelPost, request)

    # Jobs

    def get_job(self, job_id: str) -> types_pb2.Job:
        return self._unary(self._stub.GetJob, pb.GetJobRequest(job_id=job_id))

    def list_jobs(self, request: pb.ListJobsRequest) -> pb.ListJobsResponse:
        return self._unary(self._stub.ListJobs, request)

    def watch_job(self, job_id: str) -> Iterator[pb.JobEvent]:
        # No deadline: a watch lasts as long as the job does; an unreachable coordinator still
        # fails at once with UNAVAILABLE.
        return self._stream(self._stub.WatchJob, pb.WatchJobRequest(job_id=job_id), None)

    def cancel_job(self, job_id: str, *, actor: str, reason: str = "") -> types_pb2.Job:
        request = pb.CancelJobRequest(job_id=job_id, actor=actor, reason=reason)
        return self._unary(self._stub.CancelJob, request)

    def retry_job(self, job_id: str, *, actor: str, force: bool = False) -> types_pb2.Job:
        request = pb.RetryJobRequest(job_id=job_id, actor=actor, force=force)
        return self._unary(self._stub.RetryJob, request)

    def confirm_job(self, job_id: str, *, actor: str) -> types_pb2.Job:
        request = pb.ConfirmJobRequest(job_id=job_id, actor=actor)
        return self._unary(self._stub.ConfirmJob, request)

    def get_asset(self, asset_id: str) -> Iterator[pb.AssetChunk]:
        # The deadline covers the whole download, which is what --timeout promises.
        request = pb.GetAssetRequest(asset_id=asset_id)
        return self._stream(self._stub.GetAsset, request, self.timeout_s)

    # Devices, audit, gates

    def list_devices(self) -> pb.ListDevicesResponse:
        return self._unary(self._stub.ListDevices, pb.ListDevicesRequest())

    def check_login(self, request: pb.CheckLoginRequest) -> pb.CheckLoginResponse:
        return self._unary(self._stub.CheckLogin, request)

    def list_audit_events(self, request: pb.ListAuditEventsRequest) -> pb.ListAuditEventsResponse:
        return self._unary(self._stub.ListAuditEvents, request)

    def list_rate_limits(self, *, closed_only: bool) -> pb.ListRateLimitsResponse:
        request = pb.ListRateLimitsRequest(closed_only=closed_only)
        return self._unary(self._stub.ListRateLimits, request)

    def reopen_rate_limit(
        self, platform: str, account: str, *, actor: str
    ) -> types_pb2.RateLimitGate:
        request = pb.ReopenRateLimitRequest(platform=platform, account=account, actor=actor)
        return self._unary(self._stub.ReopenRateLimit, request)

    # Access: who am I, operator tokens, device enrollments

    def who_am_i(self) -> ac.WhoAmIResponse:
        return self._unary(self._stub.WhoAmI, ac.WhoAmIRequest())

    def create_token(self, name: str, role: ac.Role.ValueType) -> ac.CreateTokenResponse:
        return self._unary(self._stub.CreateToken, ac.CreateTokenRequest(name=name, role=role))

    def list_tokens(self, *, include_revoked: bool = False) -> ac.ListTokensResponse:
        request = ac.ListTokensRequest(include_revoked=include_revoked)
        return self._unary(self._stub.ListTokens, request)

    def revoke_token(self, token: str) -> ac.RevokeTokenResponse:
        return self._unary(self._stub.RevokeToken, ac.RevokeTokenRequest(token=token))

    def enroll_device(
        self, name: str, accounts: list[types_pb2.Target], *, rotate: bool = False
    ) -> ac.EnrollDeviceResponse:
        request = ac.EnrollDeviceRequest(name=name, accounts=accounts, rotate=rotate)
        return self._unary(self._stub.EnrollDevice, request)

    def list_enrollments(self, *, include_revoked: bool = False) -> ac.ListEnrollmentsResponse:
        request = ac.ListEnrollmentsRequest(include_revoked=include_revoked)
        return self._unary(self._stub.ListEnrollments, request)

    def revoke_device(self, name: str) -> ac.DeviceEnrollment:
        return self._unary(self._stub.RevokeDevice, ac.RevokeDeviceRequest(name=name))
