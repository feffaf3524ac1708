"""The worker's I/O shell: one gRPC stream at a time to a coordinator, reconnecting with
backoff and moving on to the next of its addresses (worker/dialing.py), around the pure protocol
of worker/session.py and the `JobRunner` of worker/job_runner.py.

Per stream: one writer task drains a bounded outbox into the call (the only writer), the reader
feeds each message to `session.on_message` and carries out the commands, a heartbeat task renews
the leases every H and ends the stream when the coordinator has been silent for a lease TTL.
Jobs outlive streams: after a reconnect the Hello lists them and Welcome says which are kept.
Stopping (SIGTERM) says Goodbye, lets the held jobs finish and be acknowledged (bounded by the
drain timeout), half-closes the stream and returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio
import grpc
from anyio.abc import TaskGroup, TaskStatus
from opentelemetry.trace import Tracer

from postroom.clock import Clock, SystemClock, sleep_for
from postroom.coalesce import Coalescer
from postroom.tls import aio_channel
from postroom.v1 import types_pb2
from postroom.v1 import worker_gateway_pb2 as wg
from postroom.v1 import worker_gateway_pb2_grpc as wg_grpc
from worker import session
from worker.adapters.base import AdapterRegistry
from worker.config import DEFAULT_OUTBOX_MESSAGES, WorkerConfig
from worker.dialing import Rotation
from worker.errors import SessionError, SessionRefused, StreamBroken
from worker.job_runner import JobRunner
from worker.metrics import WorkerMetrics
from worker.session import SessionPhase, SessionState

log = logging.getLogger("postroom.worker.session")

T = TypeVar("T")
# Reconnecting cannot help: a token that is wrong or revoked, accounts it may not serve, or
# another process that proved this device's identity and took its place (ALREADY_EXISTS).
_REFUSED = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
)
Call = grpc.aio.StreamStreamCall[wg.WorkerMessage, wg.CoordinatorMessage]
# A name with several addresses (DNS): grpc's resolver gives them all and pick_first tries each
# in turn until one connects, in a shuffled order so that a fleet of workers spreads out.
CHANNEL_OPTIONS: tuple[tuple[str, str], ...] = (
    (
        "grpc.service_config",
        json.dumps({"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": True}}]}),
    ),
)


class _Stream:
    """One session's I/O state; lives as long as its gRPC call."""

    def __init__(self, call: Call, now: float) -> None:
        self.call = call
        self.outbox, self.inbox = anyio.create_memory_object_stream[wg.WorkerMessage](
            DEFAULT_OUTBOX_MESSAGES
        )
        self.state = SessionState(started_at=now, last_heard=now)
        self.error: SessionError | None = None
        self.closing = False  # we half-closed on purpose: EOF is the expected answer

    def fail(self, error: SessionError, tg: TaskGroup) -> None:
        if self.error is None:
            self.error = error
        tg.cancel_scope.cancel()


class Worker:
    def __init__(
        self,
        *,
        config: WorkerConfig,
        adapters: AdapterRegistry,
        clock: Clock | None = None,
        metrics: WorkerMetrics | None = None,
        tracer: Tracer | None = None,
        jitter: Callable[[], float] = random.random,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self.config = config
        self._interceptors = list(interceptors)  # e.g. OpenTelemetry's, when tracing is on
        self._clock = clock or SystemClock()
        self._metrics = metrics
        self._jitter = jitter
        self.runner = JobRunner(
            adapters=adapters,
            clock=self._clock,
            slots=config.concurrency,
            metrics=metrics,
            tracer=tracer,
        )
        self.ready = anyio.Event()  # set on the first Welcome
        self.session_id = ""
        self.coordinator = self.config.coordinators[0]  # the address dialled last
        self.sessions_started = 0  # Welcomes received (reconnects + 1)
        self._stopping = anyio.Event()
        self._stop_reason = ""

    def stop(self, reason: str = "worker shutting down") -> None:
        """Begin draining: Goodbye, finish and report the held jobs, close, return from run()."""
        self._stop_reason = reason
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Until stop() has drained (or the drain timeout passed). Raises SessionRefused when the
        coordinator refuses the Hello: reconnecting cannot fix a wrong token."""
        refused: SessionRefused | None = None
        async with anyio.create_task_group() as tg:
            await tg.start(self.runner.run)
            tg.start_soon(self._drain_deadline, tg)
            task_status.started()
            try:
                await self._connect_loop()
            except SessionRefused as exc:
                refused = exc
            finally:
                tg.cancel_scope.cancel()
        if refused is not None:
            raise refused

    async def _drain_deadline(self, tg: TaskGroup) -> None:
        await self._stopping.wait()
        await sleep_for(self._clock, self.config.drain_timeout_s)
        held = self.runner.held_jobs()
        log.warning("drain timeout: leaving %d job(s) unreported", len(held))
        tg.cancel_scope.cancel()

    def _drained(self) -> bool:
        return self._stopping.is_set() and not self.runner.held_jobs()

    async def _connect_loop(self) -> None:
        rotation = Rotation.starting_at(
            self.config.coordinators, self.config.reconnect, self._jitter()
        )
        while not self._drained():
            started = self.sessions_started
            self.coordinator = rotation.current
            try:
                try:
                    await self._session_on_new_channel(rotation.current)
                except asyncio.CancelledError:
                    await _own_cancellation()
                    raise StreamBroken("the gRPC call was cancelled under us") from None
                return
            except StreamBroken as exc:
                if self.sessions_started > started:
                    rotation.welcomed()  # it had worked: start the backoff over
                # Say it when it starts, then now and again: a long outage is one story.
                level = logging.WARNING if rotation.rounds % 20 == 0 else logging.DEBUG
                round_ = rotation.rounds
                log.log(level, "stream to %s: %s (round %d)", rotation.current, exc, round_)
            delay = rotation.failed(self._jitter())
            if not delay:
                continue  # another address to try at once
            with anyio.move_on_after(delay):
                if self._stopping.is_set():
                    await self.runner.wait_idle()  # nothing left to deliver: done
                else:
                    await self._stopping.wait()  # re-check at once

    async def _session_on_new_channel(self, target: str) -> None:
        # A fresh channel per attempt, so that our backoff decides when to dial again; a reused
        # channel adds its own reconnect backoff (growing towards 120 s) after failures.
        channel = aio_channel(
            target,
            self.config.tls,
            options=CHANNEL_OPTIONS,
            interceptors=self._interceptors or None,
        )
        try:
            await self._session(wg_grpc.WorkerGatewayStub(channel))
        finally:
            # Shielded: a channel left open when the loop ends makes grpc call into a closed loop.
            with anyio.CancelScope(shield=True):
                await channel.close(None)

    async def _session(self, stub: wg_grpc.WorkerGatewayAsyncStub) -> None:
        call: Call = stub.Connect(None)
        stream = _Stream(call, self._clock.now())
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._write, stream, tg)
                try:
                    await stream.outbox.send(session.hello(self.config, self.runner.held_jobs()))
                    await self._read(stream, tg)
                except SessionError as exc:
                    stream.fail(exc, tg)
                except TimeoutError:
                    timeout = self.config.welcome_timeout_s
                    stream.fail(StreamBroken(f"no Welcome within {timeout:.1f}s"), tg)
                else:
                    tg.cancel_scope.cancel()  # closed after our goodbye: stop the helpers
        finally:
            self.runner.detach()
            stream.outbox.close()
            stream.inbox.close()
            if self._metrics is not None:
                self._metrics.set_connected(False)
            call.cancel()
        if stream.error is not None:
            raise stream.error

    async def _write(self, stream: _Stream, tg: TaskGroup) -> None:
        try:
            async with stream.inbox:
                # What piles up during a write goes out in the next one, as one batch when the
                # coordinator takes batches (its Welcome said so; none comes before it).
                pending = Coalescer(stream.inbox, wg.WorkerMessage.ByteSize)
                while True:
                    try:
                        msgs = await pending.next_batch()
                    except anyio.EndOfStream:
                        break
                    if stream.state.peer_batches:
                        await _grpc(stream.call.write(session.batch(msgs)))
                    else:
                        for msg in msgs:
                            await _grpc(stream.call.write(msg))
            await _grpc(stream.call.done_writing())
        except StreamBroken as exc:
            stream.fail(exc, tg)
        except grpc.aio.AioRpcError as exc:
            stream.fail(_translate(exc, stream.state), tg)
        except (grpc.aio.UsageError, asyncio.InvalidStateError) as exc:  # after the call ended
            stream.fail(StreamBroken(f"write failed: {exc!r}"), tg)

    async def _read(self, stream: _Stream, tg: TaskGroup) -> None:
        with anyio.fail_after(self.config.welcome_timeout_s) as welcome_scope:
            while stream.state.phase is SessionPhase.AWAITING_WELCOME:
                msg = await self._next(stream)
                if msg is None:
                    return
                for one in session.unbatch(msg):
                    await self._handle(stream, tg, one)
        welcome_scope.deadline = float("inf")
        while True:
            msg = await self._next(stream)
            if msg is None:
                return
            for one in session.unbatch(msg):
                await self._handle(stream, tg, one)

    async def _next(self, stream: _Stream) -> wg.CoordinatorMessage | None:
        """The next message; None at the EOF that answers our own half-close."""
        try:
            msg = await _grpc(stream.call.read())
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, stream.state) from exc
        if isinstance(msg, wg.CoordinatorMessage):
            return msg
        if stream.closing:
            return None
        raise StreamBroken(f"the coordinator ended the stream ({stream.state.leaving or 'EOF'})")

    async def _handle(self, stream: _Stream, tg: TaskGroup, msg: wg.CoordinatorMessage) -> None:
        stream.state, commands = session.on_message(stream.state, msg, self._clock.now())
        for command in commands:
            match command:
                case session.Welcomed(resumed=resumed, deadline=deadline):
                    await self._welcomed(stream, tg, resumed, deadline)
                case session.CheckLogin():
                    tg.start_soon(self._check_login, stream, command)
                case session.CoordinatorLeaving(reason=reason):
                    log.info("coordinator says goodbye (%s): finishing held jobs", reason)
                case session.Ignored(reason=reason):
                    log.warning("ignored: %s", reason)
                case session.Violation(reason=reason):
                    raise StreamBroken(f"protocol violation by the coordinator: {reason}")
                case _:
                    try:
                        self.runner.apply(command)
                    except Exception:
                        # One message the worker cannot carry out ends that request only; an
                        # unstarted job is recovered by the coordinator (it is not heartbeated).
                        log.exception("could not carry out %s", type(command).__name__)

    async def _welcomed(
        self, stream: _Stream, tg: TaskGroup, resumed: tuple[wg.HeldJob, ...], deadline: float
    ) -> None:
        state = stream.state
        self.session_id = state.session_id
        self.runner.set_lease_ttl(state.lease_ttl_s)
        await self.runner.attach(stream.outbox, state.limits, resumed=resumed, deadline=deadline)
        self.sessions_started += 1
        if self._metrics is not None:
            self._metrics.set_connected(True)
        log.info(
            "session %s open on %s: heartbeat %.1fs, lease TTL %.1fs, resumed %d job(s)",
            state.session_id,
            self.coordinator,
            state.heartbeat_interval_s,
            state.lease_ttl_s,
            len(resumed),
        )
        tg.start_soon(self._heartbeats, stream, tg)
        tg.start_soon(self._drain, stream)
        self.ready.set()

    async def _heartbeats(self, stream: _Stream, tg: TaskGroup) -> None:
        next_at = self._clock.now()
        while True:
            next_at += stream.state.heartbeat_interval_s
            await self._clock.sleep_until(next_at)
            now = self._clock.now()
            if session.is_silent(stream.state, now):
                ttl = stream.state.lease_ttl_s
                stream.fail(StreamBroken(f"nothing from the coordinator for {ttl:.1f}s"), tg)
                return
            stream.state, msg = session.heartbeat(stream.state, self.runner.held_jobs(), now)
            try:
                # Never wait here: a clogged outbox must not stop the silence check above.
                stream.outbox.send_nowait(msg)
            except anyio.WouldBlock:
                log.warning("outbox full: heartbeat %d skipped", msg.heartbeat.seq)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return

    async def _drain(self, stream: _Stream) -> None:
        await self._stopping.wait()
        stream.state, bye = session.goodbye(stream.state, self._stop_reason)
        await _send(stream, bye)
        log.info("draining: waiting for %d held job(s)", len(self.runner.held_jobs()))
        await self.runner.wait_idle()
        # Half-close: the writer flushes, then tells the coordinator we are done writing.
        stream.closing = True
        await stream.outbox.aclose()
        with anyio.move_on_after(self.config.close_timeout_s) as scope:
            await anyio.sleep_forever()  # the reader returns at the coordinator's EOF
        if scope.cancelled_caught:
            log.warning("the coordinator did not end the stream after our goodbye")

    async def _check_login(self, stream: _Stream, cmd: session.CheckLogin) -> None:
        try:
            state, message = await self.runner.check_login(cmd.platform, cmd.account)
        except Exception as exc:  # this check fails; the worker and its stream go on
            log.exception("login check of %s:%.60s failed", cmd.platform, cmd.account)
            state = types_pb2.LOGIN_STATE_UNKNOWN
            message = f"the login check failed on the worker: {type(exc).__name__}"
        answer = wg.LoginCheckResult(
            request_id=cmd.request_id,
            target=types_pb2.Target(platform=cmd.platform, account=cmd.account),
            state=state,
            message=message,
        )
        await _send(stream, wg.WorkerMessage(login_check=answer))


async def _own_cancellation() -> None:
    """After a bare CancelledError: if one of our cancel scopes is cancelling this task, raise
    its own cancellation (so timeouts and stop() work as written); else return.

    grpc.aio re-raises the cancellation of its internal futures without anyio's mark (a call to
    a stalled coordinator waiting for its HTTP/2 handshake, cancelled by a timeout), so anyio
    does not recognise it and it would end the whole worker.
    """
    await anyio.lowlevel.checkpoint()


async def _grpc(step: Awaitable[T]) -> T:
    """Await a grpc.aio call step; a cancellation that is not ours becomes StreamBroken."""
    try:
        return await step
    except asyncio.CancelledError:
        await _own_cancellation()
        raise StreamBroken("the gRPC call was cancelled under us") from None


async def _send(stream: _Stream, msg: wg.WorkerMessage) -> bool:
    try:
        await stream.outbox.send(msg)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        return False
    return True


def _translate(exc: grpc.aio.AioRpcError, state: SessionState) -> SessionError:
    code = exc.code()
    detail = f"{code.name}: {exc.details()}"
    welcomed = state.phase is SessionPhase.ACTIVE
    if code in _REFUSED or (code is grpc.StatusCode.INVALID_ARGUMENT and not welcomed):
        return SessionRefused(f"the coordinator refused this worker: {detail}")
    return StreamBroken(detail)
