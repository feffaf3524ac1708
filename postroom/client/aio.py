"""`AsyncClient`: `Client`'s methods as coroutines, on a grpc.aio channel (for asyncio code
and notebooks). Streams (`watch_job`, `get_asset`, `audit_events`) are async iterators.

    async with AsyncClient() as client:
        async for event in client.watch_job(job_id):
            ...
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from postroom.client import requests as rq
from postroom.client.base import ClientBase
from postroom.client.errors import PostroomError
from postroom.client.files import AssetFile
from postroom.client.sync import AUDIT_PAGE, Client
from postroom.tls import aio_channel
from postroom.v1 import access_pb2 as ac
from postroom.v1 import publishing_pb2 as pb
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as t

_F = TypeVar("_F", bound=Callable[..., Any])


def _doc(twin: Callable[..., Any]) -> Callable[[_F], _F]:
    """The sync method's docstring, written once."""

    def copy(method: _F) -> _F:
        method.__doc__ = twin.__doc__
        return method

    return copy


class AsyncClient(ClientBase):
    """Asynchronous client of a postroom coordinator: the methods of `Client`, awaited.

    Same settings and environment as `Client` (POSTROOM_COORDINATOR, POSTROOM_TOKEN, POSTROOM_CA
    …). Use `async with AsyncClient() as client:` or `await client.close()`.
    """

    def _connect(self) -> None:
        self._channel = aio_channel(self.target, self.tls)
        self._stub = publishing_pb2_grpc.PublishingStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls after this fail."""
        await self._channel.close(None)

    def as_user(self, token: str) -> AsyncClient:
        """A client on the same channel that calls with another operator token (a web console
        passes each person's token, so the coordinator checks their role and the audit log
        names them). Close only the original: the copy shares its channel."""
        other = copy.copy(self)
        other.token = token
        other._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return other

    async def _unary(self, call: Any, request: object) -> Any:
        with self._translated(self.timeout_s):
            return await call(request, timeout=self.timeout_s, metadata=self._metadata)

    async def _stream(
        self, call: Any, request: object, deadline_s: float | None
    ) -> AsyncIterator[Any]:
        responses = call(request, timeout=deadline_s, metadata=self._metadata)
        try:
            with self._translated(deadline_s):
                async for item in responses:
                    yield item
        finally:
            responses.cancel()

    # ---- posts -----------------------------------------------------------------------------

    @_doc(Client.create_post)
    async def create_post(
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
        post: t.Post = await self._unary(self._stub.CreatePost, built)
        return post

    @_doc(Client.create_posts)
    async def create_posts(self, requests: Iterable[pb.CreatePostRequest]) -> list[t.Post]:
        built = rq.create_posts(requests, self.actor)
        made: pb.CreatePostsResponse = await self._unary(self._stub.CreatePosts, built)
        return list(made.posts)

    @_doc(Client.get_post)
    async def get_post(self, post_id: str) -> t.Post:
        post: t.Post = await self._unary(self._stub.GetPost, pb.GetPostRequest(post_id=post_id))
        return post

    @_doc(Client.list_posts)
    async def list_posts(
        self,
        request: pb.ListPostsRequest | None = None,
        *,
        status: int = 0,
        page_size: int = 0,
        page_token: str = "",
    ) -> pb.ListPostsResponse:
        built = (
            request
            if request is not None
            else pb.ListPostsRequest(
                status=status,  # type: ignore[arg-type]
                page_size=page_size,
                page_token=page_token,
            )
        )
        page: pb.ListPostsResponse = await self._unary(self._stub.ListPosts, built)
        return page

    @_doc(Client.update_post)
    async def update_post(
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
        built = rq.update_post(
            request,
            post_id,
            text=text,
            media=media,
            targets_=targets,
            scheduled_at=scheduled_at,
            actor=actor or self.actor,
        )
        post: t.Post = await self._unary(self._stub.UpdatePost, built)
        return post

    @_doc(Client.submit_post)
    async def submit_post(self, post_id: str, *, actor: str | None = None) -> t.Post:
        request = pb.SubmitPostRequest(post_id=post_id, actor=actor or self.actor)
        post: t.Post = await self._unary(self._stub.SubmitPost, request)
        return post

    @_doc(Client.approve_post)
    async def approve_post(
        self, post_id: str, *, content_hash: str = "", actor: str | None = None
    ) -> t.Post:
        request = pb.ApprovePostRequest(
            post_id=post_id, actor=actor or self.actor, content_hash=content_hash
        )
        post: t.Post = await self._unary(self._stub.ApprovePost, request)
        return post

    @_doc(Client.schedule_post)
    async def schedule_post(
        self, post_id: str, *, scheduled_at: str = "", actor: str | None = None
    ) -> t.Post:
        request = pb.SchedulePostRequest(
            post_id=post_id, actor=actor or self.actor, scheduled_at=scheduled_at
        )
        post: t.Post = await self._unary(self._stub.SchedulePost, request)
        return post

    @_doc(Client.cancel_post)
    async def cancel_post(
        self, post_id: str, *, reason: str = "", actor: str | None = None
    ) -> t.Post:
        request = pb.CancelPostRequest(post_id=post_id, actor=actor or self.actor, reason=reason)
        post: t.Post = await self._unary(self._stub.CancelPost, request)
        return post

    @_doc(Client.delete_post)
    async def delete_post(
        self, post_id: str, *, reason: str = "", actor: str | None = None
    ) -> pb.DeletePostResponse:
        request = pb.DeletePostRequest(post_id=post_id, actor=actor or self.actor, reason=reason)
        deleted: pb.DeletePostResponse = await self._unary(self._stub.DeletePost, request)
        return deleted

    # ---- jobs ------------------------------------------------------------------------------

    @_doc(Client.get_job)
    async def get_job(self, job_id: str) -> t.Job:
        job: t.Job = await self._unary(self._stub.GetJob, pb.GetJobRequest(job_id=job_id))
        return job

    @_doc(Client.list_jobs)
    async def list_jobs(
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
        page: pb.ListJobsResponse = await self._unary(self._stub.ListJobs, built)
        return page

    @_doc(Client.watch_job)
    def watch_job(self, job_id: str) -> AsyncIterator[pb.JobEvent]:
        return self._stream(self._stub.WatchJob, pb.WatchJobRequest(job_id=job_id), None)

    @_doc(Client.watch_events)
    def watch_events(
        self, *, after_seq: int = 0, subject_ids: Iterable[str] = (), from_end: bool = False
    ) -> AsyncIterator[t.AuditEvent]:
        request = pb.WatchEventsRequest(
            after_seq=after_seq, subject_ids=list(subject_ids), from_end=from_end
        )
        return self._stream(self._stub.WatchEvents, request, None)

    @_doc(Client.cancel_job)
    async def cancel_job(self, job_id: str, *, reason: str = "", actor: str | None = None) -> t.Job:
        request = pb.CancelJobRequest(job_id=job_id, actor=actor or self.actor, reason=reason)
        job: t.Job = await self._unary(self._stub.CancelJob, request)
        return job

    @_doc(Client.retry_job)
    async def retry_job(
        self, job_id: str, *, force: bool = False, actor: str | None = None
    ) -> t.Job:
        request = pb.RetryJobRequest(job_id=job_id, actor=actor or self.actor, force=force)
        job: t.Job = await self._unary(self._stub.RetryJob, request)
        return job

    @_doc(Client.confirm_job)
    async def confirm_job(self, job_id: str, *, actor: str | None = None) -> t.Job:
        request = pb.ConfirmJobRequest(job_id=job_id, actor=actor or self.actor)
        job: t.Job = await self._unary(self._stub.ConfirmJob, request)
        return job

    @_doc(Client.resolve_job)
    async def resolve_job(
        self,
        job_id: str,
        *,
        published_url: str,
        platform_post_id: str = "",
        reason: str = "",
        actor: str | None = None,
    ) -> t.Job:
        request = pb.ResolveJobRequest(
            job_id=job_id,
            published_url=published_url,
            platform_post_id=platform_post_id,
            actor=actor or self.actor,
            reason=reason,
        )
        job: t.Job = await self._unary(self._stub.ResolveJob, request)
        return job

    @_doc(Client.get_asset)
    def get_asset(self, asset_id: str) -> AsyncIterator[pb.AssetChunk]:
        request = pb.GetAssetRequest(asset_id=asset_id)
        return self._stream(self._stub.GetAsset, request, self.timeout_s)

    @_doc(Client.download_screenshot)
    async def download_screenshot(self, asset_id: str, path: Path) -> pb.AssetChunk:
        out = AssetFile(asset_id, path)
        try:
            async for chunk in self.get_asset(asset_id):
                out.feed(chunk)
        except BaseException:
            out.abort()
            raise
        return out.finish()

    @_doc(Client.export_job)
    async def export_job(self, job_id: str, path: Path) -> list[str]:
        # The bundle is file work over a dozen calls: done by a sync twin in a thread.
        def export() -> list[str]:
            with self._sync_twin() as client:
                return client.export_job(job_id, path)

        return await asyncio.to_thread(export)

    def _sync_twin(self) -> Client:
        return Client(
            self.target, token=self.token, tls=self.tls, timeout_s=self.timeout_s, actor=self.actor
        )

    # ---- devices, audit, rate limits -------------------------------------------------------

    @_doc(Client.list_devices)
    async def list_devices(self) -> pb.ListDevicesResponse:
        found: pb.ListDevicesResponse = await self._unary(
            self._stub.ListDevices, pb.ListDevicesRequest()
        )
        return found

    @_doc(Client.check_login)
    async def check_login(
        self,
        request: pb.CheckLoginRequest | None = None,
        *,
        device_id: str = "",
        platform: str = "",
        account: str = "",
        actor: str | None = None,
    ) -> pb.CheckLoginResponse:
        built = (
            request
            if request is not None
            else pb.CheckLoginRequest(
                device_id=device_id, platform=platform, account=account, actor=actor or self.actor
            )
        )
        answer: pb.CheckLoginResponse = await self._unary(self._stub.CheckLogin, built)
        return answer

    @_doc(Client.list_audit_events)
    async def list_audit_events(
        self,
        request: pb.ListAuditEventsRequest | None = None,
        *,
        since: str = "",
        subject_id: str = "",
        action: str = "",
        after_seq: int = 0,
        page_size: int = 0,
    ) -> pb.ListAuditEventsResponse:
        built = rq.list_audit_events(
            request,
            since=since,
            subject_id=subject_id,
            action=action,
            after_seq=after_seq,
            page_size=page_size,
        )
        page: pb.ListAuditEventsResponse = await self._unary(self._stub.ListAuditEvents, built)
        return page

    @_doc(Client.audit_events)
    async def audit_events(
        self, *, since: str = "", subject_id: str = "", action: str = ""
    ) -> AsyncIterator[t.AuditEvent]:
        after_seq = 0
        while True:
            page = await self.list_audit_events(
                since=since,
                subject_id=subject_id,
                action=action,
                after_seq=after_seq,
                page_size=AUDIT_PAGE,
            )
            for event in page.events:
                yield event
            if not page.events or page.next_after_seq == 0:
                return
            if page.next_after_seq <= after_seq:
                raise PostroomError(
                    "INTERNAL", f"audit paging did not advance past seq {after_seq}"
                )
            after_seq = page.next_after_seq

    @_doc(Client.list_rate_limits)
    async def list_rate_limits(self, *, closed_only: bool = False) -> pb.ListRateLimitsResponse:
        request = pb.ListRateLimitsRequest(closed_only=closed_only)
        gates: pb.ListRateLimitsResponse = await self._unary(self._stub.ListRateLimits, request)
        return gates

    @_doc(Client.reopen_rate_limit)
    async def reopen_rate_limit(
        self, platform: str, account: str, *, actor: str | None = None
    ) -> t.RateLimitGate:
        request = pb.ReopenRateLimitRequest(
            platform=platform, account=account, actor=actor or self.actor
        )
        gate: t.RateLimitGate = await self._unary(self._stub.ReopenRateLimit, request)
        return gate

    # ---- access ----------------------------------------------------------------------------

    @_doc(Client.who_am_i)
    async def who_am_i(self) -> ac.WhoAmIResponse:
        me: ac.WhoAmIResponse = await self._unary(self._stub.WhoAmI, ac.WhoAmIRequest())
        return me

    @_doc(Client.create_token)
    async def create_token(self, name: str, role: ac.Role.ValueType) -> ac.CreateTokenResponse:
        request = ac.CreateTokenRequest(name=name, role=role)
        made: ac.CreateTokenResponse = await self._unary(self._stub.CreateToken, request)
        return made

    @_doc(Client.list_tokens)
    async def list_tokens(self, *, include_revoked: bool = False) -> ac.ListTokensResponse:
        request = ac.ListTokensRequest(include_revoked=include_revoked)
        found: ac.ListTokensResponse = await self._unary(self._stub.ListTokens, request)
        return found

    @_doc(Client.revoke_token)
    async def revoke_token(self, token: str) -> ac.RevokeTokenResponse:
        request = ac.RevokeTokenRequest(token=token)
        done: ac.RevokeTokenResponse = await self._unary(self._stub.RevokeToken, request)
        return done

    @_doc(Client.enroll_device)
    async def enroll_device(
        self, name: str, accounts: list[t.Target], *, rotate: bool = False
    ) -> ac.EnrollDeviceResponse:
        request = ac.EnrollDeviceRequest(name=name, accounts=accounts, rotate=rotate)
        made: ac.EnrollDeviceResponse = await self._unary(self._stub.EnrollDevice, request)
        return made

    @_doc(Client.list_enrollments)
    async def list_enrollments(
        self, *, include_revoked: bool = False
    ) -> ac.ListEnrollmentsResponse:
        request = ac.ListEnrollmentsRequest(include_revoked=include_revoked)
        found: ac.ListEnrollmentsResponse = await self._unary(self._stub.ListEnrollments, request)
        return found

    @_doc(Client.revoke_device)
    async def revoke_device(self, name: str) -> ac.DeviceEnrollment:
        request = ac.RevokeDeviceRequest(name=name)
        gone: ac.DeviceEnrollment = await self._unary(self._stub.RevokeDevice, request)
        return gone
