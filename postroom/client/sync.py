"""`Client`: the synchronous client of a coordinator's `Publishing` service.

    from postroom import Client

    with Client() as client:            # POSTROOM_COORDINATOR, POSTROOM_TOKEN, POSTROOM_CA …
        post = client.create_post(text="Hello", targets=["mastodon:@news@example.social"])
        client.submit_post(post.id)
        client.approve_post(post.id, content_hash=post.content_hash)
        client.schedule_post(post.id)

Every method returns the coordinator's message (`postroom.v1` protobuf types) and raises a
`PostroomError` subclass (`NotFound`, `FailedPrecondition`, …) when the call fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import grpc

from postroom.client import requests as rq
from postroom.client.base import ClientBase
from postroom.client.errors import PostroomError
from postroom.client.files import write_asset
from postroom.tls import sync_channel
from postroom.v1 import access_pb2 as ac
from postroom.v1 import publishing_pb2 as pb
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as t

_Resp = TypeVar("_Resp")
AUDIT_PAGE = 1000


class Client(ClientBase):
    """Synchronous client of a postroom coordinator; use it as a context manager.

    `address` (HOST:PORT), `token` (an operator token) and `tls` default to the CLI's
    environment: POSTROOM_COORDINATOR, POSTROOM_TOKEN / POSTROOM_TOKEN_FILE, POSTROOM_CA /
    POSTROOM_TLS_CERT / POSTROOM_TLS_KEY. `actor` is who the audit log names where the
    coordinator runs without tokens (default POSTROOM_ACTOR, else your login). `timeout_s` is
    the deadline of each call. `AsyncClient` has the same methods, as coroutines.
    """

    def _connect(self) -> None:
        self._channel = sync_channel(self.target, self.tls)
        self._stub = publishing_pb2_grpc.PublishingStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls after this fail."""
        self._channel.close()

    def _unary(self, call: Callable[..., _Resp], request: object) -> _Resp:
        with self._translated(self.timeout_s):
            return call(request, timeout=self.timeout_s, metadata=self._metadata)

    def _stream(
        self, call: Callable[..., grpc.CallIterator[_Resp]], request: object, timeout: float | None
    ) -> Iterator[_Resp]:
        responses = call(request, timeout=timeout, metadata=self._metadata)
        try:
            with self._translated(timeout):
                yield from responses
        finally:
            # A caller that stops early ends the server stream; grpc-stubs leaves it untyped.
            responses.cancel()  # type: ignore[no-untyped-call]

    # ---- posts -----------------------------------------------------------------------------

    def create_post(
        self,
        request: pb.CreatePostRequest | None = None,
        *,
        text: str = "",
        targets: Iterable[rq.TargetLike] = (),
        media: Iterable[str] = (),
        scheduled_at: str = "",
        max_attempts: int = 0,
        require_confirm: bool = False,
        actor: str | None = None,
        approve: bool = False,
        schedule: bool = False,
    ) -> t.Post:
        """Create a post in DRAFT. `targets`: "PLATFORM:ACCOUNT" strings or `Target`s;
        `scheduled_at`: RFC 3339, empty for "when scheduled"; `require_confirm`: every job
        stops before its irreversible step until `confirm_job`. `approve` (and `schedule`):
        approved (and scheduled) in the same call, by you: needs the approver role and a
        coordinator whose four-eyes rule lets you approve what you wrote."""
        built = rq.create_post(
            request,
            text=text,
            targets_=targets,
            media=media,
            scheduled_at=scheduled_at,
            max_attempts=max_attempts,
            require_confirm=require_confirm,
            actor=actor or self.actor,
            approve=approve,
            schedule=schedule,
        )
        return self._unary(self._stub.CreatePost, built)

    def create_posts(self, requests: Iterable[pb.CreatePostRequest]) -> list[t.Post]:
        """Create many posts in one call and one commit (at most 1000): all of them, or none
        and an error naming the first refused (`posts[N]: ...`). Each request as `create_post`
        takes it (`approve`/`schedule` included); the posts come back in the same order."""
        built = rq.create_posts(requests, self.actor)
        return list(self._unary(self._stub.CreatePosts, built).posts)

    def get_post(self, post_id: str) -> t.Post:
        """A post with its warnings and per-target progress (`target_states`)."""
        return self._unary(self._stub.GetPost, pb.GetPostRequest(post_id=post_id))

    def list_posts(
        self,
        request: pb.ListPostsRequest | None = None,
        *,
        status: int = 0,
        page_size: int = 0,
        page_token: str = "",
    ) -> pb.ListPostsResponse:
        """One page of posts, newest first; `status` a `PostStatus` value (0: any)."""
        built = (
            request
            if request is not None
            else pb.ListPostsRequest(
                status=status,  # type: ignore[arg-type]
                page_size=page_size,
                page_token=page_token,
            )
        )
        return self._unary(self._stub.ListPosts, built)

    def update_post(
        self,
        request: pb.UpdatePostRequest | None = None,
        *,
        post_id: str = "",
        text: str | None = None,
        media: Iterable[str] | None = None,
        targets: Iterable[rq.TargetLike] | None = None,
        scheduled_at: str | None = None,
        actor: str | None = None,
    ) -> t.Post:
        """Edit a post; None leaves a field as it is, `media=[]` removes every media reference.
        An approved post goes back to needing approval."""
        built = rq.update_post(
            request,
            post_id,
            text=text,
            media=media,
            targets_=targets,
            scheduled_at=scheduled_at,
            actor=actor or self.actor,
        )
        return self._unary(self._stub.UpdatePost, built)

    def submit_post(self, post_id: str, *, actor: str | None = None) -> t.Post:
        """DRAFT → PENDING_APPROVAL."""
        request = pb.SubmitPostRequest(post_id=post_id, actor=actor or self.actor)
        return self._unary(self._stub.SubmitPost, request)

    def approve_post(
        self, post_id: str, *, content_hash: str = "", actor: str | None = None
    ) -> t.Post:
        """PENDING_APPROVAL → APPROVED; with `content_hash`, refused if the post changed since
        you read it."""
        request = pb.ApprovePostRequest(
            post_id=post_id, actor=actor or self.actor, content_hash=content_hash
        )
        return self._unary(self._stub.ApprovePost, request)

    def schedule_post(
        self, post_id: str, *, scheduled_at: str = "", actor: str | None = None
    ) -> t.Post:
        """APPROVED → SCHEDULED: one job per target; `scheduled_at` overrides the post's time."""
        request = pb.SchedulePostRequest(
            post_id=post_id, actor=actor or self.actor, scheduled_at=scheduled_at
        )
        return self._unary(self._stub.SchedulePost, request)

    def cancel_post(self, post_id: str, *, reason: str = "", actor: str | None = None) -> t.Post:
        """Cancel a post and its unfinished jobs; `warnings` name the targets already live."""
        request = pb.CancelPostRequest(post_id=post_id, actor=actor or self.actor, reason=reason)
        return self._unary(self._stub.CancelPost, request)

    def delete_post(
        self, post_id: str, *, reason: str = "", actor: str | None = None
    ) -> pb.DeletePostResponse:
        """Delete a post that never published (its open jobs are cancelled); FailedPrecondition
        naming the live URLs when any target is published."""
        request = pb.DeletePostRequest(post_id=post_id, actor=actor or self.actor, reason=reason)
        return self._unary(self._stub.DeletePost, request)

    # ---- jobs ------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> t.Job:
        """A job with its runs, their step logs and screenshots."""
        return self._unary(self._stub.GetJob, pb.GetJobRequest(job_id=job_id))

    def list_jobs(
        self,
        request: pb.ListJobsRequest | None = None,
        *,
        status: int = 0,
        platform: str = "",
        account: str = "",
        post_id: str = "",
        device_id: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> pb.ListJobsResponse:
        """One page of jobs, filtered; `status` a `JobStatus` value (0: any)."""
        built = rq.list_jobs(
            request,
            status=status,
            platform=platform,
            account=account,
            post_id=post_id,
            device_id=device_id,
            page_size=page_size,
            page_token=page_token,
        )
        return self._unary(self._stub.ListJobs, built)

    def watch_job(self, job_id: str) -> Iterator[pb.JobEvent]:
        """The job's changes as they happen: first the job as it is (runs and logs so far), then
        a `JobEvent` per change (`job`) or step log line (`log`). No deadline: it lasts as long
        as the job; leave the loop to stop watching."""
        return self._stream(self._stub.WatchJob, pb.WatchJobRequest(job_id=job_id), None)

    def watch_events(
        self, *, after_seq: int = 0, subject_ids: Iterable[str] = (), from_end: bool = False
    ) -> Iterator[t.AuditEvent]:
        """Follow the audit log live: events with seq > after_seq already written, then each
        new one as it is committed, until you leave the loop. `subject_ids` keeps only events
        about those posts, jobs, devices or gates; `from_end` starts at the end of the log.
        Resume after a break with the last `seq` you saw."""
        request = pb.WatchEventsRequest(
            after_seq=after_seq, subject_ids=list(subject_ids), from_end=from_end
        )
        return self._stream(self._stub.WatchEvents, request, None)

    def cancel_job(self, job_id: str, *, reason: str = "", actor: str | None = None) -> t.Job:
        """Cancel a job that has not finished."""
        request = pb.CancelJobRequest(job_id=job_id, actor=actor or self.actor, reason=reason)
        return self._unary(self._stub.CancelJob, request)

    def retry_job(self, job_id: str, *, force: bool = False, actor: str | None = None) -> t.Job:
        """Retry a FAILED, NEEDS_LOGIN or waiting job now; without `force` a closed rate-limit
        gate still holds it (its `not_before` says until when)."""
        request = pb.RetryJobRequest(job_id=job_id, actor=actor or self.actor, force=force)
        return self._unary(self._stub.RetryJob, request)

    def confirm_job(self, job_id: str, *, actor: str | None = None) -> t.Job:
        """Let an AWAITING_CONFIRM job publish."""
        request = pb.ConfirmJobRequest(job_id=job_id, actor=actor or self.actor)
        return self._unary(self._stub.ConfirmJob, request)

    def resolve_job(
        self,
        job_id: str,
        *,
        published_url: str,
        platform_post_id: str = "",
        reason: str = "",
        actor: str | None = None,
    ) -> t.Job:
        """Record that a person published this job by hand: SUCCEEDED, `resolved_by` set,
        audited. FailedPrecondition while an attempt of postroom's may still be committing."""
        request = pb.ResolveJobRequest(
            job_id=job_id,
            published_url=published_url,
            platform_post_id=platform_post_id,
            actor=actor or self.actor,
            reason=reason,
        )
        return self._unary(self._stub.ResolveJob, request)

    def get_asset(self, asset_id: str) -> Iterator[pb.AssetChunk]:
        """An asset's bytes in chunks (the deadline covers the whole download)."""
        request = pb.GetAssetRequest(asset_id=asset_id)
        return self._stream(self._stub.GetAsset, request, self.timeout_s)

    def download_screenshot(self, asset_id: str, path: Path) -> pb.AssetChunk:
        """Write a screenshot (any asset) to `path`, checked against its sha256 id; a failed
        download leaves no file. Returns its size and content type (no data)."""
        return write_asset(asset_id, path, self.get_asset(asset_id))

    def export_job(self, job_id: str, path: Path) -> list[str]:
        """Write the escalation bundle of a job (a zip: the job, its post, runs, step logs,
        screenshots, device and audit entries, with README.txt); the names it holds."""
        from postroom.client.bundle import write_bundle

        return write_bundle(self, job_id, path)

    # ---- devices, audit, rate limits -------------------------------------------------------

    def list_devices(self) -> pb.ListDevicesResponse:
        """The devices (workers) the coordinator knows, with their login badges."""
        return self._unary(self._stub.ListDevices, pb.ListDevicesRequest())

    def check_login(
        self,
        request: pb.CheckLoginRequest | None = None,
        *,
        device_id: str = "",
        platform: str = "",
        account: str = "",
        actor: str | None = None,
    ) -> pb.CheckLoginResponse:
        """Ask a device whether an account is logged in; NEEDS_LOGIN jobs requeue when it is."""
        built = (
            request
            if request is not None
            else pb.CheckLoginRequest(
                device_id=device_id, platform=platform, account=account, actor=actor or self.actor
            )
        )
        return self._unary(self._stub.CheckLogin, built)

    def list_audit_events(
        self,
        request: pb.ListAuditEventsRequest | None = None,
        *,
        since: str = "",
        subject_id: str = "",
        action: str = "",
        after_seq: int = 0,
        page_size: int = 0,
    ) -> pb.ListAuditEventsResponse:
        """One page of the audit log, oldest first; `next_after_seq` continues it."""
        built = rq.list_audit_events(
            request,
            since=since,
            subject_id=subject_id,
            action=action,
            after_seq=after_seq,
            page_size=page_size,
        )
        return self._unary(self._stub.ListAuditEvents, built)

    def audit_events(
        self, *, since: str = "", subject_id: str = "", action: str = ""
    ) -> Iterator[t.AuditEvent]:
        """Every matching audit event, oldest first, page after page (the audit export)."""
        after_seq = 0
        while True:
            page = self.list_audit_events(
                since=since,
                subject_id=subject_id,
                action=action,
                after_seq=after_seq,
                page_size=AUDIT_PAGE,
            )
            yield from page.events
            if not page.events or page.next_after_seq == 0:
                return
            if page.next_after_seq <= after_seq:  # a server bug would otherwise loop forever
                raise PostroomError(
                    "INTERNAL", f"audit paging did not advance past seq {after_seq}"
                )
            after_seq = page.next_after_seq

    def list_rate_limits(self, *, closed_only: bool = False) -> pb.ListRateLimitsResponse:
        """The accounts' rate-limit gates (closed ones say until when)."""
        request = pb.ListRateLimitsRequest(closed_only=closed_only)
        return self._unary(self._stub.ListRateLimits, request)

    def reopen_rate_limit(
        self, platform: str, account: str, *, actor: str | None = None
    ) -> t.RateLimitGate:
        """Open a closed gate now."""
        request = pb.ReopenRateLimitRequest(
            platform=platform, account=account, actor=actor or self.actor
        )
        return self._unary(self._stub.ReopenRateLimit, request)

    # ---- access ----------------------------------------------------------------------------

    def who_am_i(self) -> ac.WhoAmIResponse:
        """The token's name and role."""
        return self._unary(self._stub.WhoAmI, ac.WhoAmIRequest())

    def create_token(self, name: str, role: ac.Role.ValueType) -> ac.CreateTokenResponse:
        """A new operator token (shown once)."""
        return self._unary(self._stub.CreateToken, ac.CreateTokenRequest(name=name, role=role))

    def list_tokens(self, *, include_revoked: bool = False) -> ac.ListTokensResponse:
        """Operator tokens (names and roles, never the secrets)."""
        request = ac.ListTokensRequest(include_revoked=include_revoked)
        return self._unary(self._stub.ListTokens, request)

    def revoke_token(self, token: str) -> ac.RevokeTokenResponse:
        """Revoke an operator token by name or value."""
        return self._unary(self._stub.RevokeToken, ac.RevokeTokenRequest(token=token))

    def enroll_device(
        self, name: str, accounts: list[t.Target], *, rotate: bool = False
    ) -> ac.EnrollDeviceResponse:
        """Enroll a worker device for `accounts`; its token is in the answer (shown once)."""
        request = ac.EnrollDeviceRequest(name=name, accounts=accounts, rotate=rotate)
        return self._unary(self._stub.EnrollDevice, request)

    def list_enrollments(self, *, include_revoked: bool = False) -> ac.ListEnrollmentsResponse:
        """Enrolled devices."""
        request = ac.ListEnrollmentsRequest(include_revoked=include_revoked)
        return self._unary(self._stub.ListEnrollments, request)

    def revoke_device(self, name: str) -> ac.DeviceEnrollment:
        """Revoke a device's enrollment."""
        return self._unary(self._stub.RevokeDevice, ac.RevokeDeviceRequest(name=name))
