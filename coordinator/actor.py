"""The coordinator actor: the one owner of the coordinator's state, and its I/O shell.

Everything that changes state runs inside one task, in mailbox order, as command values decided
by coordinator/step.py's `handle`: worker messages and timer ticks (posted by the gateway and the
timer, no reply) and operators' commands (coordinator/operator_commands.py, from Publishing via
`command`, replied to). An operator's command first gets what it needs from the store (the load
phase, coordinator/loading.py), after everything before it was committed. The loop drains
up to `max_batch` items at a time, runs them against the state, then *group-commits*: one
store transaction for the whole batch (shielded from cancellation), and only then sends the
resulting messages to the workers' outboxes and answers the callers. So a worker never hears of a
lease, permit or accepted result that a crash could take back, and thousands of protocol events
per second share a handful of fsyncs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from opentelemetry import trace
from opentelemetry.trace import Tracer

from coordinator.access.registry import Credentials
from coordinator.convert import coordinator_message_pb, job_pb, step_log_pb
from coordinator.domain import JobStatus, Target
from coordinator.errors import CoordinatorError
from coordinator.events_feed import AuditBell
from coordinator.gates import GateBook, Quota
from coordinator.leasing.commands import Command, Heard, Tick
from coordinator.leasing.core import LeaseConfig, LeaseCore
from coordinator.leasing.effects import Effects
from coordinator.leasing.scope import ShardScope
from coordinator.loading import load, read_shard_work
from coordinator.metrics import CoordinatorMetrics
from coordinator.observing import BatchObserver
from coordinator.operator_commands import OperatorCommand
from coordinator.retry import RetryPolicies
from coordinator.step import CoordinatorState, handle
from coordinator.store.base import Store, WriteBatch
from coordinator.store.shards import DEFAULT_SHARD_COUNT
from postroom.clock import Clock
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import worker_gateway_pb2 as wg

log = logging.getLogger("postroom.coordinator")
T = TypeVar("T")
_TICK = Tick()

DEFAULT_MAX_BATCH = 512
DEFAULT_MAILBOX_SIZE = 10_000
DEFAULT_OUTBOX_SIZE = 10_000
DEFAULT_SWEEP_INTERVAL_S = 1.0
DEFAULT_METRICS_REFRESH_S = 5.0
DEFAULT_WATCH_BUFFER = 1_000


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    retry: RetryPolicies = field(default_factory=RetryPolicies)
    quotas: dict[str, Quota] = field(default_factory=dict)
    max_batch: int = DEFAULT_MAX_BATCH
    sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S
    login_check_timeout_s: float = 10.0
    # Several coordinators (coordinator/cluster/): the database's shard count, and whether the
    # store derives posts' statuses inside each batch (a core holding some shards writes none).
    shard_count: int = DEFAULT_SHARD_COUNT
    derive_posts_in_store: bool = False


@dataclass(slots=True)
class _Call:
    """An operator's command (decided by `handle` after the load phase), a read (`read`, run as
    it is) or a change of the shards held (`work`: may read the store, returns the effects);
    its caller waits for `done`, set after the commit."""

    command: OperatorCommand | None = None
    read: Callable[[float], Any] | None = None
    work: Callable[[float], Awaitable[Effects]] | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Any = None
    error: BaseException | None = None


class Coordinator:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        config: CoordinatorConfig,
        metrics: CoordinatorMetrics | None = None,
        tracer: Tracer | None = None,
        rand: Callable[[], float] | None = None,
        credentials: Credentials | None = None,
        commit: Callable[[WriteBatch], Awaitable[None]] | None = None,
    ) -> None:
        """`commit`: how a batch is written (default store.apply; with several coordinators,
        under the fence of this one's shards: coordinator/cluster/member.py)."""
        self.store = store
        self._commit = commit or store.apply
        # Operator tokens and device enrollments: changed only inside the actor (access/).
        self.credentials = credentials or Credentials()
        self.clock = clock
        self.config = config
        self.metrics = metrics
        self.tracer = tracer or trace.NoOpTracer()
        self.core = LeaseCore(
            config=config.lease,
            gates=GateBook(config.quotas),
            retry=config.retry,
            new_id=_new_id,
            rand=rand or random.random,
            scope=ShardScope(config.shard_count),
            derive_post_status=not config.derive_posts_in_store,
        )
        self.state = CoordinatorState(self.core, self.credentials)
        self._send, self._recv = anyio.create_memory_object_stream[Command | _Call](
            DEFAULT_MAILBOX_SIZE
        )
        self._outboxes: dict[str, MemoryObjectSendStream[wg.CoordinatorMessage]] = {}
        self._watchers: dict[str, set[MemoryObjectSendStream[pub.JobEvent]]] = {}
        # Quiet heartbeats the gateway answered (session id -> when), for the next batch to take
        # in (Heard) before anything else: so before any judgement of liveness.
        self.heard: dict[str, float] = {}
        self.observer = BatchObserver(self.tracer, metrics)
        self.audit_bell = AuditBell()  # wakes WatchEvents streams (events_feed.py)
        self._login_waiters: dict[str, tuple[anyio.Event, list[wg.LoginCheckResult]]] = {}
        self._wake = anyio.Event()
        self._ticked = anyio.Event()  # set once the actor has run the timer's last Tick
        self._armed_at = math.inf
        self._stopping = False
        self._last_metrics_refresh = 0.0
        self._needs_login_seen: set[Target] = set()
        # Whether this one exports the totals (jobs by status, devices online): with several
        # coordinators serving, only one does, or a dashboard's sum counts them once each.
        self.counts_totals: Callable[[], bool] = lambda: True

    # ---- lifecycle -----------------------------------------------------------------------

    async def load(self, shards: Iterable[int] | None = None) -> None:
        """Take over the state a previous process left: open posts, their jobs, gates, devices.
        `shards`: a coordinator owning only those (of config.shard_count) loads their jobs, the
        posts of those jobs, their gates and quota counts; devices and credentials are all
        loaded either way. None: every shard. Before run()."""
        now = self.clock.now()
        if shards is not None:
            self.core.scope = ShardScope(self.config.shard_count, frozenset(shards))
        work = await read_shard_work(self.store, self.core.gates, now, self.core.scope.owns)
        for token in await self.store.list_operator_tokens():
            self.credentials.put_token(token)
        for enrollment in await self.store.list_enrollments():
            self.credentials.put_enrollment(enrollment)
        for dev in await self.store.list_devices():
            self.core.devices[dev.id] = dev
        work.take(self.core, now)
        fx = self.core.settle_posts(now)
        if fx.batch:
            await self._commit(fx.batch)
        held = (
            ""
            if self.core.scope.everything
            else f" of shards {sorted(self.core.scope.all_shards())}"
        )
        log.info("loaded %d open posts, %d active jobs%s", len(work.posts), work.active, held)

    async def take_shards(self, shards: Iterable[int]) -> None:
        """Own `shards` too (from now on, in addition to those held): their active jobs, those
        jobs' posts, runs, gates and quota counts are loaded inside the actor, between batches,
        and dispatched at once. Leases held already are untouched; a leaving shard among
        `shards` is served again."""
        wanted = frozenset(shards)

        async def work(now: float) -> Effects:
            scope = self.core.scope
            new = wanted - scope.all_shards()
            # All read before anything changes: a failed read leaves the core as it was.

            def in_new(target: Target) -> bool:
                return scope.shard(target) in new

            loaded = (
                await read_shard_work(self.store, self.core.gates, now, in_new) if new else None
            )
            self.core.take_shards(wanted)
            if loaded is not None:
                loaded.take(self.core, now)
                took = (sorted(new), len(loaded.posts), loaded.active)
                log.info("took shards %s: %d open posts, %d active jobs", *took)
            return self.core.dispatch(now)

        await self._call(_Call(work=work))

    async def leave_shards(self, shards: Iterable[int]) -> None:
        """Stop handing out jobs of `shards`: their leases finish, their queued jobs wait here
        until evict_shards()."""
        leaving = frozenset(shards)

        async def work(now: float) -> Effects:
            self.core.leave_shards(leaving)
            return Effects()

        await self._call(_Call(work=work))

    async def evict_shards(self, shards: Iterable[int], *, force: bool = False) -> bool:
        """Drop the jobs, gates and posts (those left with no job) of `shards` from the core and
        stop owning them; True when dropped. While one of their jobs is leased nothing is
        dropped (False), unless `force`."""
        gone = frozenset(shards)

        async def work(now: float) -> Effects:
            dropped = self.core.evict_shards(gone, force=force)
            # Leases forgotten by force free their sessions' slots for jobs still held here.
            fx = self.core.dispatch(now) if dropped and force else Effects()
            fx.reply = dropped
            return fx

        return bool(await self._call(_Call(work=work)))

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The actor's loop and its timer. Returns after stop() once the mailbox is drained."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._timer)
            task_status.started()
            await self._loop()
            tg.cancel_scope.cancel()

    async def stop(self) -> None:
        """Stop taking events; sessions are told goodbye and closed."""
        self._stopping = True
        for sid, outbox in list(self._outboxes.items()):
            bye = wg.CoordinatorMessage(goodbye=wg.Goodbye(reason="shutdown"))
            with contextlib.suppress(
                anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError
            ):
                outbox.send_nowait(bye)
            outbox.close()
            self._outboxes.pop(sid, None)
        for watchers in self._watchers.values():
            for w in watchers:
                w.close()
        await self._send.aclose()

    # ---- entry points --------------------------------------------------------------------

    def open_outbox(self, session_id: str) -> MemoryObjectReceiveStream[wg.CoordinatorMessage]:
        send, recv = anyio.create_memory_object_stream[wg.CoordinatorMessage](DEFAULT_OUTBOX_SIZE)
        self._outboxes[session_id] = send
        return recv

    def close_outbox(self, session_id: str) -> None:
        outbox = self._outboxes.pop(session_id, None)
        if outbox is not None:
            outbox.close()

    async def post(self, command: Command) -> None:
        """Queue a worker's command (bounded mailbox: a flood waits here, it does not grow
        memory)."""
        try:
            # No event-loop turn per command while there is room: a batch's commands go in
            # together (anyio's send() yields once per item, a third of the gateway's CPU).
            self._send.send_nowait(command)
        except anyio.WouldBlock:
            await self._send.send(command)

    async def command(self, command: OperatorCommand) -> Any:
        """Carry out an operator's command inside the actor; returns its reply once its writes
        are committed (raises the CoordinatorError that refused it)."""
        return await self._call(_Call(command=command))

    async def read(self, fn: Callable[[float], T]) -> T:
        """Answer an operator's read inside the actor, between commands: the one place reads
        of live state come from (a consistent view; `fn` must return copies, never live
        objects)."""
        return await self._call(_Call(read=fn))  # type: ignore[no-any-return]

    async def _call(self, item: _Call) -> Any:
        if self._stopping:
            raise CoordinatorError("coordinator is shutting down")
        try:
            self._send.send_nowait(item)  # no event-loop turn while there is room (as post())
        except anyio.WouldBlock:
            await self._send.send(item)
        await item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result

    def watch(
        self, job_id: str
    ) -> tuple[MemoryObjectSendStream[pub.JobEvent], MemoryObjectReceiveStream[pub.JobEvent]]:
        """Subscribe to a job's changes and step logs; pass the send half to unwatch()."""
        send, recv = anyio.create_memory_object_stream[pub.JobEvent](DEFAULT_WATCH_BUFFER)
        self._watchers.setdefault(job_id, set()).add(send)
        return send, recv

    def unwatch(self, job_id: str, send: MemoryObjectSendStream[pub.JobEvent]) -> None:
        watchers = self._watchers.get(job_id, set())
        watchers.discard(send)
        send.close()
        if not watchers:
            self._watchers.pop(job_id, None)

    def expect_login_check(self, request_id: str) -> anyio.Event:
        done = anyio.Event()
        self._login_waiters[request_id] = (done, [])
        return done

    def login_check_answered(self, result: wg.LoginCheckResult) -> None:
        waiter = self._login_waiters.get(result.request_id)
        if waiter is not None:
            waiter[1].append(result)
            waiter[0].set()

    def take_login_check(self, request_id: str) -> wg.LoginCheckResult | None:
        waiter = self._login_waiters.pop(request_id, None)
        return waiter[1][0] if waiter and waiter[1] else None

    def send_now(self, session_id: str, msg: wg.CoordinatorMessage) -> bool:
        """Send outside a batch (login checks, screenshot acks: nothing to persist first)."""
        outbox = self._outboxes.get(session_id)
        if outbox is None:
            return False
        try:
            outbox.send_nowait(msg)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    # ---- the loop ------------------------------------------------------------------------

    async def _loop(self) -> None:
        async with self._recv:
            while True:
                try:
                    first = await self._recv.receive()
                except anyio.EndOfStream:
                    return
                items: list[Command | _Call] = [first]
                while len(items) < self.config.max_batch:
                    try:
                        items.append(self._recv.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await self._process(items)

    async def _process(self, items: list[Command | _Call]) -> None:
        pending = Effects()
        replies: list[_Call] = []
        handled = False  # anything since the last flush (else there is nothing to flush)
        if self.heard:  # no writes nor messages: nothing to flush for it
            beats, self.heard = tuple(self.heard.items()), {}
            pending.extend(handle(self.state, Heard(beats), self.clock.now()))
        for item in items:
            now = self.clock.now()
            if not isinstance(item, _Call):
                handled = True
                try:
                    pending.extend(handle(self.state, item, now))
                except CoordinatorError as exc:
                    log.warning("worker event refused: %s", exc)
                except Exception:
                    # A bug met by one event must not stop every other: the event is dropped
                    # (nothing of it was written) and the actor goes on. Memory it half-changed
                    # is caught by the store's compare-and-set, which ends the process.
                    log.exception("worker event failed and was dropped (%s)", type(item).__name__)
                finally:
                    if type(item) is Tick:
                        self._ticked.set()
                continue
            # A command reads the store: everything before it must be committed first.
            if handled:
                await self._flush(pending, replies)
                pending, replies, handled = Effects(), [], False
            try:
                fx = await self._decide(item, now)
            except CoordinatorError as exc:
                item.error = exc
                item.done.set()
                continue
            except Exception:
                incident = uuid.uuid4().hex[:12]
                log.exception("command failed and was refused (incident %s)", incident)
                item.error = CoordinatorError(
                    f"the coordinator could not carry out this request (incident {incident} in "
                    "its log)"
                )
                item.done.set()
                continue
            pending.extend(fx)
            item.result = fx.reply
            replies.append(item)
            handled = True
        if handled:
            await self._flush(pending, replies)

    async def _decide(self, item: _Call, now: float) -> Effects:
        if item.read is not None:
            return Effects(reply=item.read(now))
        if item.work is not None:
            return await item.work(now)
        assert item.command is not None
        command = await load(self.store, self.state, item.command)  # the load phase
        return handle(self.state, command, now)

    async def _flush(self, fx: Effects, replies: list[_Call]) -> None:
        now = self.clock.now()
        try:
            fx.extend(self.core.settle_posts(now))
        except Exception:  # a post's summary is lost, not the batch nor the actor
            log.exception("settling posts failed")
        if fx.batch:
            # Crash-only: if the store cannot commit, memory and disk disagree; the process
            # must die and reload from the database rather than send what is not durable.
            with anyio.CancelScope(shield=True):
                await self._commit(fx.batch)
            if fx.batch.audits:
                self.audit_bell.ring()
        # From here the batch is durable: what follows must reach the workers and callers, so
        # a failure in metrics, traces or watchers is logged, never raised.
        try:
            self.observer.observe(fx, now)
        except Exception:
            log.exception("recording metrics and traces of a batch failed")
        for sid, out in fx.messages:
            msg = coordinator_message_pb(out, self.observer.traceparent(out))
            if not self.send_now(sid, msg) and sid in self._outboxes:
                # Outbox full: the worker does not read. Its session dies, not the coordinator.
                log.warning("session %s outbox overflow; closing it", sid)
                self.close_outbox(sid)
        for sid in fx.close_sessions:
            self.close_outbox(sid)
        try:
            self._notify_watchers(fx)
        except Exception:
            log.exception("notifying job watchers failed")
        for item in replies:
            item.done.set()
        self._rearm()

    def _notify_watchers(self, fx: Effects) -> None:
        if not self._watchers:
            return
        events: list[tuple[str, pub.JobEvent]] = []
        for job_id, entry_run, attempt, entry in (
            (j, r, a, e) for j, r, a, e in fx.logs if j in self._watchers
        ):
            log_ev = pub.StepLogEvent(run_id=entry_run, attempt=attempt, log=step_log_pb(entry))
            events.append((job_id, pub.JobEvent(log=log_ev)))
        for job_id, job in fx.changed_jobs.items():
            if job_id in self._watchers:
                events.append((job_id, pub.JobEvent(job=job_pb(job))))
        for job_id, event in events:
            for w in list(self._watchers.get(job_id, ())):
                try:
                    w.send_nowait(event)
                except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    self._watchers[job_id].discard(w)  # a watcher too slow to keep up is cut off
                    w.close()

    # ---- timer ---------------------------------------------------------------------------

    def _rearm(self) -> None:
        wake = self.core.next_wakeup()
        if wake is not None and wake < self._armed_at:
            self._wake.set()

    async def _timer(self) -> None:
        """Ticks at the core's next deadline (lease expiry, a job's not_before, a gate reopening,
        heartbeat silence), and at least every sweep interval as a safety net."""
        while not self._stopping:
            now = self.clock.now()
            wake = self.core.next_wakeup()
            deadline = now + self.config.sweep_interval_s
            if wake is not None:
                deadline = min(deadline, wake)
            self._armed_at = deadline
            self._wake = anyio.Event()
            with anyio.move_on_after(max(0.0, deadline - now) + 0.5):
                await self._sleep_or_rearm(deadline)
            self._armed_at = math.inf
            if self._stopping:
                return
            ticked = self._ticked = anyio.Event()
            try:
                await self._send.send(_TICK)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            # Until the actor has run this tick, next_wakeup() still sees the due job it is for:
            # re-arming now would fire at once and flood the mailbox with ticks that delay the
            # real work behind them.
            await ticked.wait()
            try:
                await self._refresh_gauges()
            except Exception:  # the gauges wait for the next tick; the timer goes on
                log.exception("refreshing the gauges failed")

    async def _sleep_or_rearm(self, deadline: float) -> None:
        """Sleep until the deadline, or less if a new, earlier deadline appears meanwhile."""
        async with anyio.create_task_group() as tg:

            async def sleeper() -> None:
                await self.clock.sleep_until(deadline)
                tg.cancel_scope.cancel()

            async def waker() -> None:
                await self._wake.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(sleeper)
            tg.start_soon(waker)

    async def _refresh_gauges(self) -> None:
        if self.metrics is None:
            return
        now = self.clock.now()
        if now - self._last_metrics_refresh < DEFAULT_METRICS_REFRESH_S:
            return
        self._last_metrics_refresh = now
        totals = self.counts_totals()
        counts = await self.store.count_jobs() if totals else {}
        self.metrics.set_job_counts({(s.value, p): n for (s, p), n in counts.items()})
        online: dict[str, int] = {"api": 0, "browser": 0}
        for session in self.core.sessions.values():
            online[session.kind.value] = online.get(session.kind.value, 0) + 1
            for target in session.capabilities:
                self.metrics.account_known(target.platform, target.account)
        for job in self.core.jobs.values():
            self.metrics.account_known(job.platform, job.account)
        for kind, n in online.items():
            self.metrics.set_devices_online(kind, n if totals else 0)
        for view in self.core.gates.views(now):
            self.metrics.set_gate(view.target.platform, view.target.account, view.closed)
        waiting = {j.target for j in self.core.jobs.values() if j.status is JobStatus.NEEDS_LOGIN}
        for target in waiting | self._needs_login_seen:
            self.metrics.set_needs_login(target.platform, target.account, target in waiting)
        self._needs_login_seen = waiting


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"
