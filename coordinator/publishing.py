"""`postroom.v1.Publishing`: the operators' API. Validates requests (INVALID_ARGUMENT with a message
that says what to fix; a post's content against each target platform's rules, content_rules.py),
reads from the store (live state through `Coordinator.read`, coordinator/reads.py), and sends
every change to the actor as a command value (coordinator/operator_commands.py), answering once
the actor has committed it.

Under placement "spread" (`store_reads`) each core holds only its shards' jobs: the answers are
read from the store, never from the core's memory, so every coordinator answers the same (which
coordinator executes a command is cluster/route.py's)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_process
import grpc

from coordinator import content_rules, events_feed, listing, reads
from coordinator import operator_commands as op
from coordinator.access.interceptor import actor_name, current_principal, require_role
from coordinator.access.records import Role
from coordinator.access.service import AccessRpcs
from coordinator.actor import Coordinator
from coordinator.assets import AssetStore, sniff_content_type
from coordinator.by_hand import ByHandRpcs
from coordinator.convert import (
    audit_pb,
    device_pb,
    gate_pb,
    job_pb,
    job_status_from_pb,
    login_state_from_pb,
    post_pb,
    target_pb,
    ts,
)
from coordinator.domain import (
    TERMINAL_JOB_STATUSES,
    Job,
    Post,
    Target,
)
from coordinator.errors import ConcurrentUpdate, CoordinatorError, InvalidArgument, NotFound
from coordinator.gates import GateView
from coordinator.validation import (
    check_content_hash,
    check_filter,
    check_media,
    check_reason,
    check_target,
    check_targets,
    check_text,
    page_size,
    parse_time,
    require_id,
)
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc as pub_grpc
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

log = logging.getLogger("postroom.coordinator.publishing")
R = TypeVar("R")
Ctx = grpc.aio.ServicerContext[Any, Any]
MAX_ATTEMPTS_LIMIT = 20
# Posts a CreatePosts call may carry: one commit (and one reply message) for all of them.
MAX_CREATE_BATCH = 1000
DEFAULT_AUDIT_PAGE = 1000
MAX_AUDIT_PAGE = 10_000
MAX_LOGIN_MESSAGE_CHARS = 1000
# An edit is judged outside the actor; if the post changes meanwhile, it is judged again, a few
# times at most.
MAX_EDIT_ROUNDS = 3
DEFAULT_CONTENT_CHECK_THREADS = 2
# Texts longer than this with an X target are judged in a worker process (see _check_content).
IN_PROCESS_CHECK_CHARS = 1_000
# Texts up to this long are judged on the event loop itself (~15 µs with an X target).
INLINE_CHECK_CHARS = 280


def rpc(
    fn: Callable[[Any, Any, Ctx], Awaitable[R]],
) -> Callable[[Any, Any, Ctx], Awaitable[R]]:
    """Translate our errors into gRPC statuses, once, at the edge. Anything else is a bug: it is
    logged with its traceback and answered INTERNAL with an id to find it by, never leaked as
    UNKNOWN with a Python message."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> R:
        try:
            return await fn(self, request, context)
        except CoordinatorError as exc:
            await context.abort(exc.status_code, str(exc))
            raise  # abort() raises; this keeps type checkers honest
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("%s failed (incident %s)", fn.__name__, incident)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"the coordinator could not handle this request (incident {incident} in its log)",
            )
            raise

    return wrapper


class PublishingService(ByHandRpcs, AccessRpcs, pub_grpc.PublishingServicer):
    def __init__(
        self,
        coordinator: Coordinator,
        assets: AssetStore,
        *,
        text_limits: content_rules.TextLimits | None = None,
        store_reads: bool = False,
    ) -> None:
        self.co = coordinator
        self.store_reads = store_reads
        self.store = coordinator.store
        self.core = coordinator.core
        self.assets = assets
        self.text_limits = text_limits or content_rules.TextLimits()
        # Checks run in threads; a few at a time, so a burst of long posts cannot take the GIL
        # from the event loop (it serves every other RPC and every worker stream).
        self._content_checks = anyio.CapacityLimiter(DEFAULT_CONTENT_CHECK_THREADS)
        self._content_processes = anyio.CapacityLimiter(1)

    async def _check_content(
        self, text: str, media: Sequence[str], targets: Sequence[Target]
    ) -> None:
        if len(text) > IN_PROCESS_CHECK_CHARS and any(t.platform == "x" for t in targets):
            # X's weighted count (twitter-text, on the `re` module) holds the GIL for ~4 ms per
            # 1,000 characters, ~0.4 s for the longest text: a thread would stall the event
            # loop that long. A worker process (started on first use) keeps the loop free.
            overrides = dict(self.text_limits.overrides)
            await anyio.to_process.run_sync(
                content_rules.check_detached,
                text,
                list(media),
                list(targets),
                overrides,
                limiter=self._content_processes,
            )
            return
        check = content_rules.check
        limits, limiter = self.text_limits, self._content_checks
        if len(text) <= INLINE_CHECK_CHARS:
            check(text, media, targets, limits)  # microseconds: a thread hop would cost more
            return
        await anyio.to_thread.run_sync(check, text, media, targets, limits, limiter=limiter)

    async def _check_post(self, post: Post) -> None:
        await self._check_content(post.text, post.media, post.targets)

    async def _post_reply(self, post_id: str) -> pb.Post:
        post = await self.store.get_post(post_id)
        return post_pb(post, await self.store.jobs_for_post(post_id))

    async def _changed_reply(self, reply: Post | tuple[Post, list[Job] | None]) -> pb.Post:
        """The answer to a command on a post, once committed: a post the core does not hold
        open as its step wrote it (only open posts are settled), with the jobs its step gave
        (submit, approve: as loaded) or else the stored ones; an open post and its jobs as the
        core holds them (all of its jobs; memory is the truth for open posts): one actor read,
        no store round trip."""
        post, jobs = reply if isinstance(reply, tuple) else (reply, None)
        if self.store_reads:  # this core holds some of the post's jobs at most
            return await self._post_reply(post.id)
        if jobs is not None:
            return post_pb(post, jobs)
        post_id = post.id

        def live(now: float) -> tuple[Post, list[Job]] | None:
            found = reads.post(self.core, post_id)
            if found is None:
                return None
            return found, [dataclasses.replace(j) for j in self.core.jobs_of(post_id)]

        now_live = await self.co.read(live)
        if now_live is not None:
            return post_pb(*now_live)
        return post_pb(post, await self.store.jobs_for_post(post_id))

    # ---- posts ---------------------------------------------------------------------------

    async def _new_post(self, request: pub.CreatePostRequest) -> op.CreatePost:
        """A checked CreatePost request as a command (its content judged against the rules)."""
        text = check_text(request.text)
        targets = check_targets(request.targets)
        media = check_media(request.media)
        when = parse_time(request.scheduled_at, "scheduled_at") if request.scheduled_at else None
        if not 0 <= request.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise InvalidArgument(f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}")
        if request.schedule and not request.approve:
            raise InvalidArgument("schedule needs approve: only an approved post can be scheduled")
        if request.approve:
            require_role(Role.APPROVER, "creating a post approved (approve)")
        actor = actor_name(request.actor)
        await self._check_content(text, media, targets)
        return op.CreatePost(
            post_id=f"p-{uuid.uuid4().hex[:12]}",
            text=text,
            media=tuple(media),
            targets=tuple(targets),
            scheduled_at=when,
            max_attempts=request.max_attempts or 3,
            require_confirm=request.require_confirm,
            actor=actor,
            approve=request.approve,
            schedule=request.schedule,
            new_job_id=f"j-{uuid.uuid4().hex[:12]}-",
            principal=current_principal() if request.approve else None,
        )

    @rpc
    async def CreatePost(self, request: pub.CreatePostRequest, context: Ctx) -> pb.Post:
        item = await self._new_post(request)
        if not item.approve:
            # A new draft has no jobs: answered from the step's post, no reads after the commit.
            return post_pb(await self.co.command(item))
        # Answered from what the step decided (committed by then): no reads after the commit.
        ((post, jobs),) = await self.co.command(op.CreatePosts((item,)))
        return post_pb(post, jobs)

    @rpc
    async def CreatePosts(
        self, request: pub.CreatePostsRequest, context: Ctx
    ) -> pub.CreatePostsResponse:
        if not 1 <= len(request.posts) <= MAX_CREATE_BATCH:
            raise InvalidArgument(
                f"posts: {len(request.posts)} given; send between 1 and {MAX_CREATE_BATCH} a call"
            )
        items = []
        for n, one in enumerate(request.posts):
            try:
                items.append(await self._new_post(one))
            except CoordinatorError as exc:
                raise type(exc)(f"posts[{n}]: {exc}; nothing was created") from exc
        created = await self.co.command(op.CreatePosts(tuple(items)))
        return pub.CreatePostsResponse(posts=[post_pb(p, jobs) for p, jobs in created])

    @rpc
    async def GetPost(self, request: pub.GetPostRequest, context: Ctx) -> pb.Post:
        return await self._post_reply(require_id(request.post_id, "post_id"))

    @rpc
    async def ListPosts(self, request: pub.ListPostsRequest, context: Ctx) -> pub.ListPostsResponse:
        return await listing.list_posts(self.store, request)

    @rpc
    async def UpdatePost(self, request: pub.UpdatePostRequest, context: Ctx) -> pb.Post:
        post_id = require_id(request.post_id, "post_id")
        text = check_text(request.text) if request.HasField("text") else None
        targets = check_targets(request.targets) if request.targets else None
        media = check_media(request.media) if (request.media or request.replace_media) else None
        when = (
            parse_time(request.scheduled_at, "scheduled_at")
            if request.HasField("scheduled_at")
            else None
        )
        actor = actor_name(request.actor)
        edit = op.UpdatePost(
            post_id,
            text,
            tuple(media) if media is not None else None,
            tuple(targets) if targets is not None else None,
            when,
            actor,
        )
        if text is not None or media is not None or targets is not None:
            await self._judged_edit(edit)
        else:
            await self.co.command(edit)
        return await self._post_reply(post_id)

    async def _judged_edit(self, edit: op.UpdatePost) -> None:
        """The post as it will be (current content merged with the edit) must still meet every
        target's rules; a schedule-only edit of an older post is not re-judged. Judged here,
        outside the actor (a long text takes a while); the actor applies the edit only to the
        content judged, else it says what the post would be now, to judge that."""
        post_id = edit.post_id
        live = await self.co.read(lambda now: reads.post(self.core, post_id))
        current = live or await self.store.get_post(post_id)
        judged: op.Content = (
            edit.text if edit.text is not None else current.text,
            edit.media if edit.media is not None else current.media,
            edit.targets if edit.targets is not None else current.targets,
        )
        for _ in range(MAX_EDIT_ROUNDS):
            await self._check_content(*judged)
            reply = await self.co.command(dataclasses.replace(edit, judged=judged))
            if not isinstance(reply, op.Unjudged):
                return
            judged = reply.content  # the post changed meanwhile
        raise ConcurrentUpdate(f"post {post_id} kept changing under this edit; try it again")

    @rpc
    async def SubmitPost(self, request: pub.SubmitPostRequest, context: Ctx) -> pb.Post:
        post_id = require_id(request.post_id, "post_id")
        actor = actor_name(request.actor)
        post = await self.co.command(op.SubmitPost(post_id, actor))
        return await self._changed_reply(post)

    @rpc
    async def ApprovePost(self, request: pub.ApprovePostRequest, context: Ctx) -> pb.Post:
        post_id = require_id(request.post_id, "post_id")
        actor = actor_name(request.actor)
        reviewed = check_content_hash(request.content_hash)
        principal = current_principal()  # here: the actor runs in a task of its own
        post = await self.co.command(op.ApprovePost(post_id, reviewed, actor, principal))
        return await self._changed_reply(post)

    @rpc
    async def SchedulePost(self, request: pub.SchedulePostRequest, context: Ctx) -> pb.Post:
        post_id = require_id(request.post_id, "post_id")
        when = parse_time(request.scheduled_at, "scheduled_at") if request.scheduled_at else None
        actor = actor_name(request.actor)
        job_prefix = f"j-{uuid.uuid4().hex[:12]}-"
        post = await self.co.command(op.SchedulePost(post_id, when, job_prefix, actor))
        return await self._changed_reply(post)

    @rpc
    async def CancelPost(self, request: pub.CancelPostRequest, context: Ctx) -> pb.Post:
        post_id = require_id(request.post_id, "post_id")
        actor = actor_name(request.actor)
        reason = check_reason(request.reason)
        await self.co.command(op.CancelPost(post_id, reason, actor))
        return await self._post_reply(post_id)

    # ---- jobs ----------------------------------------------------------------------------

    async def _job_reply(self, job_id: str) -> pb.Job:
        job = await self.store.get_job(job_id)
        return job_pb(job, await self.store.get_runs(job_id))

    @rpc
    async def GetJob(self, request: pub.GetJobRequest, context: Ctx) -> pb.Job:
        return await self._job_reply(require_id(request.job_id, "job_id"))

    @rpc
    async def ListJobs(self, request: pub.ListJobsRequest, context: Ctx) -> pub.ListJobsResponse:
        return await listing.list_jobs(self.store, request)

    async def WatchJob(
        self, request: pub.WatchJobRequest, context: Ctx
    ) -> AsyncIterator[pub.JobEvent]:
        try:
            job_id = require_id(request.job_id, "job_id")
            send, recv = self.co.watch(job_id)  # subscribe first: no change slips between
            try:
                job = await self.store.get_job(job_id)
                # The first event carries the runs with the step logs written so far, so a
                # watcher that attaches mid-run sees the whole story (it drops repeats).
                runs = await self.store.get_runs(job_id)
            except NotFound:
                self.co.unwatch(job_id, send)
                recv.close()
                raise
        except CoordinatorError as exc:
            await context.abort(exc.status_code, str(exc))
            return
        try:
            async with recv:  # closed on every way out (else a ResourceWarning at GC)
                yield pub.JobEvent(job=job_pb(job, runs))
                if job.status in TERMINAL_JOB_STATUSES:
                    return
                async for event in recv:
                    yield event
                    if event.HasField("job") and job_status_from_pb(event.job.status) in (
                        TERMINAL_JOB_STATUSES
                    ):
                        return
        finally:
            self.co.unwatch(job_id, send)

    @rpc
    async def CancelJob(self, request: pub.CancelJobRequest, context: Ctx) -> pb.Job:
        job_id = require_id(request.job_id, "job_id")
        actor = actor_name(request.actor)
        reason = check_reason(request.reason) or "cancelled by an operator"
        await self.co.command(op.CancelJob(job_id, actor, reason))
        return await self._job_reply(job_id)

    @rpc
    async def RetryJob(self, request: pub.RetryJobRequest, context: Ctx) -> pb.Job:
        job_id = require_id(request.job_id, "job_id")
        actor = actor_name(request.actor)
        if request.force:
            require_role(Role.APPROVER, "retrying through a closed rate-limit gate (--force)")
        await self.co.command(op.RetryJob(job_id, actor, request.force))
        return await self._job_reply(job_id)

    @rpc
    async def ConfirmJob(self, request: pub.ConfirmJobRequest, context: Ctx) -> pb.Job:
        job_id = require_id(request.job_id, "job_id")
        actor = actor_name(request.actor)
        await self.co.command(op.ConfirmJob(job_id, actor))
        return await self._job_reply(job_id)

    # ---- devices, logins, gates, assets, audit -------------------------------------------

    @rpc
    async def ListDevices(
        self, request: pub.ListDevicesRequest, context: Ctx
    ) -> pub.ListDevicesResponse:
        if self.store_reads:
            online = await self.co.read(lambda now: reads.connected(self.core))
            return pub.ListDevicesResponse(
                devices=await reads.devices_from_store(self.store, online)
            )
        return pub.ListDevicesResponse(
            devices=await self.co.read(lambda now: reads.devices(self.core))
        )

    @rpc
    async def CheckLogin(
        self, request: pub.CheckLoginRequest, context: Ctx
    ) -> pub.CheckLoginResponse:
        device_id = require_id(request.device_id, "device_id")
        target = check_target(request.platform, request.account)
        actor = actor_name(request.actor)
        session_id = await self.co.read(
            lambda now: reads.login_session(self.core, device_id, target)
        )
        request_id = uuid.uuid4().hex
        answered = self.co.expect_login_check(request_id)
        check = wg.LoginCheck(request_id=request_id, target=target_pb(target))
        self.co.send_now(session_id, wg.CoordinatorMessage(login_check=check))
        with anyio.move_on_after(self.co.config.login_check_timeout_s):
            await answered.wait()
        result = self.co.take_login_check(request_id)
        if result is None:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"device {device_id} did not answer the login check in "
                f"{self.co.config.login_check_timeout_s:g}s",
            )
            raise AssertionError("unreachable")
        state = login_state_from_pb(result.state)
        message = result.message[:MAX_LOGIN_MESSAGE_CHARS]
        checked = op.LoginChecked(device_id, target, state, message, actor)
        requeued, record = await self.co.command(checked)
        device = device_pb(record, online=True, free_slots=0, job_ids=[])
        badges = device.logins
        mine = next(
            (
                b
                for b in badges
                if (b.target.platform, b.target.account) == (target.platform, target.account)
            ),
            None,
        )
        return pub.CheckLoginResponse(badge=mine, requeued_job_ids=requeued)

    async def GetAsset(
        self, request: pub.GetAssetRequest, context: Ctx
    ) -> AsyncIterator[pub.AssetChunk]:
        try:
            asset_id = require_id(request.asset_id, "asset_id").lower()
            total = self.assets.size(asset_id)
            chunks = self.assets.chunks(asset_id)
        except CoordinatorError as exc:
            await context.abort(exc.status_code, str(exc))
            return
        offset = 0
        for data in chunks:
            content_type = sniff_content_type(data[:16]) if offset == 0 else ""
            yield pub.AssetChunk(
                data=data, offset=offset, total_size=total, content_type=content_type
            )
            offset += len(data)

    @rpc
    async def ListAuditEvents(
        self, request: pub.ListAuditEventsRequest, context: Ctx
    ) -> pub.ListAuditEventsResponse:
        since = parse_time(request.since, "since") if request.since else None
        size = page_size(request.page_size, DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE)
        if request.after_seq < 0:
            raise InvalidArgument("after_seq must not be negative (0 starts at the oldest event)")
        events = await self.store.list_audit(
            since=since,
            subject_id=check_filter(request.subject_id, "subject_id"),
            action=check_filter(request.action, "action").upper(),
            after_seq=request.after_seq,
            limit=size,
        )
        next_seq = events[-1].seq if len(events) == size else 0
        return pub.ListAuditEventsResponse(
            events=[audit_pb(e) for e in events], next_after_seq=next_seq
        )

    async def WatchEvents(
        self, request: pub.WatchEventsRequest, context: Ctx
    ) -> AsyncIterator[pb.AuditEvent]:
        try:
            subjects, after = await events_feed.start(self.store, request)
        except CoordinatorError as exc:  # a bad request
            await context.abort(exc.status_code, str(exc))
        # Positioned: say where, so a caller knows that what it commits next is in the stream.
        await context.send_initial_metadata(((events_feed.START_SEQ_HEADER, str(after)),))
        feed = events_feed.follow(self.store, subjects, after, self.co.audit_bell)
        async for event in feed:
            yield event

    @rpc
    async def ListRateLimits(
        self, request: pub.ListRateLimitsRequest, context: Ctx
    ) -> pub.ListRateLimitsResponse:
        if self.store_reads:
            now = self.co.clock.now()
            views = await reads.gates_from_store(self.store, self.co.config.quotas, now)
        else:
            now, views = await self.co.read(lambda now: (now, reads.gates(self.core, now)))
        if request.closed_only:
            views = [v for v in views if v.closed]
        return pub.ListRateLimitsResponse(gates=[gate_pb(v) for v in views], now=ts(now))

    @rpc
    async def ReopenRateLimit(
        self, request: pub.ReopenRateLimitRequest, context: Ctx
    ) -> pb.RateLimitGate:
        target = check_target(request.platform, request.account)
        actor = actor_name(request.actor)
        view: GateView = await self.co.command(op.ReopenGate(target, actor))
        return gate_pb(view)
