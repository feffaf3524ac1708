"""Runs one job: AssignAck, the adapter calls of worker/lifecycle.py, the JobResult.

`JobTask` is the `JobHooks` of the lifecycle. It reads its `RunningJob` but never assigns to it:
every change (phase, step, state message, kept screenshot) is asked of the runner that owns the
job through `JobControl`, which `worker.job_runner.JobRunner` implements. This module imports
nothing of the runner's, so the two form no import circle.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    contextmanager,
)
from types import TracebackType
from typing import Protocol, cast

import anyio
from opentelemetry.trace import INVALID_SPAN, NoOpTracer, Span, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from postroom.clock import Clock, SystemClock
from postroom.logs import log_context
from postroom.tracing import (
    SPAN_WORKER_RUN,
    SPAN_WORKER_STEP,
    STEP_ATTRIBUTE,
    context_from_traceparent,
)
from postroom.v1 import types_pb2
from postroom.v1 import worker_gateway_pb2 as wg
from worker.adapters.base import ON_FAILURE, AdapterRegistry, PlatformAdapter
from worker.errors import AdapterError, LeaseLost, RateLimited, Transient
from worker.job_state import JobPhase, RunningJob, Upload
from worker.lifecycle import StepNote, SteppedAdapter, publish
from worker.metrics import WorkerMetrics

log = logging.getLogger("postroom.worker.job")

INFO = types_pb2.LOG_LEVEL_INFO
WARNING = types_pb2.LOG_LEVEL_WARNING
ERROR = types_pb2.LOG_LEVEL_ERROR
_ADAPTER_CLOSE_TIMEOUT_S = 5.0
COMMIT_BOUND_FRACTION = 0.8


class JobControl(Protocol):
    """What a job's task may ask of the runner that owns its `RunningJob`."""

    @property
    def clock(self) -> Clock: ...

    def move(
        self, job: RunningJob, phase: JobPhase, *, state_msg: wg.WorkerMessage | None = None
    ) -> None:
        """Put the job in `phase`; `state_msg` is what tells the coordinator (kept, to repeat
        after a resume). Entering RUNNING starts the job's clock."""
        ...

    def enter_step(self, job: RunningJob, step: str) -> None:
        """The job's step now (its failed_step if it fails)."""
        ...

    async def emit(self, msg: wg.WorkerMessage) -> bool:
        """Send on the current stream; False when there is none (the message is dropped)."""
        ...

    async def keep_upload(self, job: RunningJob, upload: Upload) -> None:
        """Keep a screenshot until its ScreenshotAck and send it."""
        ...

    def max_asset_bytes(self) -> int: ...

    def holds(self, job: RunningJob) -> bool: ...

    def lease_margin_s(self) -> float: ...

    def abandon(self, job: RunningJob, reason: str) -> None:
        """Stop the job's task and forget the job; nothing is reported."""
        ...


class JobTask:
    def __init__(
        self,
        runner: JobControl,
        job: RunningJob,
        *,
        adapters: AdapterRegistry,
        tracer: Tracer,
        metrics: WorkerMetrics | None,
    ) -> None:
        self._runner = runner
        self._clock = runner.clock
        self._job = job
        self._adapters = adapters
        self._tracer = tracer
        # No exporter (the runner's NoOpTracer): no span objects per step at all.
        self._tracing = not isinstance(tracer, NoOpTracer)
        self._metrics = metrics
        self._adapter: PlatformAdapter | None = None

    async def run(self, limiter: anyio.CapacityLimiter) -> None:
        job, spec = self._job, self._job.spec
        with job.scope, log_context(job_id=job.job_id):
            async with limiter:
                ack = job.ack()
                self._runner.move(job, JobPhase.RUNNING, state_msg=ack)
                await self._runner.emit(ack)
                if self._tracing:
                    attributes: dict[str, str | int | bool] = {
                        "postroom.job_id": spec.job_id,
                        "postroom.platform": spec.platform,
                        "postroom.account": spec.account,
                        "postroom.attempt": spec.attempt,
                        "postroom.lease_epoch": job.epoch,
                        "postroom.verify_first": spec.verify_first,
                    }
                    parent = context_from_traceparent(job.traceparent)
                    run_span: AbstractContextManager[Span] = self._tracer.start_as_current_span(
                        SPAN_WORKER_RUN, context=parent, attributes=attributes
                    )
                else:
                    run_span = _no_span(SPAN_WORKER_RUN, {})
                with run_span as span:
                    result = await self._attempt(span)
                    if result is not None:
                        await self._report(span, result)

    async def _attempt(self, span: Span) -> wg.JobResult | None:
        """One attempt; None when the job was abandoned (lease lost, permit denied)."""
        job = self._job
        try:
            try:
                self._adapter = self._adapters.create(job.spec.platform)
                if _is_stepped(type(self._adapter)):
                    cast(SteppedAdapter, self._adapter).bind_steps(self)
                outcome = await publish(job.spec, self._adapter, self)
                now = self._clock.now()
                return job.success(
                    outcome.published, found_existing=outcome.found_existing, now=now
                )
            except LeaseLost as exc:
                span.set_attribute("postroom.outcome", "lease_lost")
                self._runner.abandon(job, str(exc))
                return None
            except AdapterError as exc:
                error = exc
            except Exception as exc:  # a bug in an adapter: the job must still end with a result
                log.exception("unexpected error in step %s", job.step)
                error = Transient(f"worker error in step {job.step}: {exc!r}")
            step = job.step or "prepare"
            await self.screenshot(ON_FAILURE)
        finally:
            if self._adapter is not None:
                await close_adapter(self._adapter)
        now = self._clock.now()
        span.set_status(Status(StatusCode.ERROR, error.message))
        # "RATE_LIMITED", as design.md and the coordinator's attempt span spell it.
        error_class = types_pb2.ErrorClass.Name(error.error_class).removeprefix("ERROR_CLASS_")
        span.set_attribute("postroom.error_class", error_class)
        if isinstance(error, RateLimited):
            span.set_attribute("postroom.retry_after_s", max(0.0, error.retry_at - now))
            span.set_attribute("postroom.quota_cap", error.quota_cap)
        return job.failure(error, step=step, now=now)

    async def _report(self, span: Span, result: wg.JobResult) -> None:
        job = self._job
        span.set_attribute("postroom.outcome", "succeeded" if result.success else "failed")
        async with self._step("report", closing_log=False):
            outcome = "success" if result.success else f"failure: {result.error_message}"
            # Logged before the result: the coordinator refuses a job's messages after it.
            await self._log("report", INFO, f"reporting {outcome}")
            msg = wg.WorkerMessage(result=result)
            self._runner.move(job, JobPhase.REPORTED, state_msg=msg)
            await self._runner.emit(msg)

    # ---- JobHooks -------------------------------------------------------------------------

    def step(self, name: str) -> AbstractAsyncContextManager[StepNote]:
        return self._step(name)

    async def confirmation(self) -> None:
        job = self._job
        await self._log("await_confirm", INFO, "waiting for an operator to confirm")
        msg = job.awaiting_confirm()
        self._runner.move(job, JobPhase.AWAITING_CONFIRM, state_msg=msg)
        await self._runner.emit(msg)
        assert job.confirmed is not None  # made by the runner as the job entered the phase
        await job.confirmed.wait()

    async def commit_permit(self) -> None:
        job = self._job
        bound_s = self.commit_bound_s()
        # Counted from before the request leaves; the coordinator counts from its arrival, so
        # the end it expects is never earlier than ours.
        job.commit_ends_at = self._clock.now() + bound_s
        msg = job.commit_request(bound_s)
        self._runner.move(job, JobPhase.AWAITING_PERMIT, state_msg=msg)
        await self._runner.emit(msg)
        await job.permit.wait()
        if not job.permit_granted:
            raise LeaseLost(f"commit permit denied: {job.deny_reason or 'no reason given'}")
        if self._clock.now() >= job.commit_ends_at:
            # Committing now could outlast the end the coordinator counts on; nothing was sent.
            raise Transient(
                f"the commit permit came after the commit's bound ({bound_s:.1f}s from asking); "
                "nothing was sent",
                not_created=True,
            )

    def begin_commit(self) -> None:
        reason = self.commit_refused()
        if reason is not None:
            raise LeaseLost(reason)
        self._runner.move(self._job, JobPhase.COMMITTING)

    def commit_refused(self) -> str | None:
        # Asked again for every request of the commit (worker/fence.py): heartbeats keep
        # renewing the deadline while a slow request connects; a lost lease stops it.
        job = self._job
        if not self._runner.holds(job):
            return "the job is no longer held (its lease was lost)"
        now = self._clock.now()
        left = job.deadline - now
        if left <= self._runner.lease_margin_s():
            return f"lease has {left:.1f}s left: too close to its deadline to commit"
        if job.commit_ends_at and now >= job.commit_ends_at:
            return "the commit's bound passed (the coordinator may rerun the job from then on)"
        return None

    async def commit_bound_passed(self) -> None:
        await self._clock.sleep_until(self._job.commit_ends_at)

    def commit_bound_scope(self) -> anyio.CancelScope | None:
        if type(self._clock) is not SystemClock:  # virtual time: commit_bound_passed times it
            return None
        return anyio.move_on_after(self._job.commit_ends_at - self._clock.now())

    def commit_bound_s(self) -> float:
        # A commit that outlasts the margin could still be running when an unrenewed lease
        # ends and another worker takes the job over.
        return COMMIT_BOUND_FRACTION * self._runner.lease_margin_s()

    async def screenshot(self, label: str) -> None:
        """Take and send a proof screenshot; never fails the job."""
        if self._adapter is None:
            return
        try:
            async with self._step("screenshot") as note:
                data = await self._adapter.screenshot(label)
                limit = self._runner.max_asset_bytes()
                if data is None:
                    note.message = f"{label}: none available"
                elif limit and len(data) > limit:
                    note.message = f"{label}: {len(data)} bytes is over the {limit}-byte limit"
                else:
                    upload = Upload.of(label, data)
                    await self._runner.keep_upload(self._job, upload)
                    note.message = f"{label}: {len(data)} bytes"
        except Exception:
            log.warning("%s screenshot failed", label, exc_info=True)

    # ---- helpers --------------------------------------------------------------------------

    def _step(self, name: str, *, closing_log: bool = True) -> _Step:
        """A step: its span, its duration metric, and a closing log line (or the failure)."""
        return _Step(self, name, closing_log)

    async def _log(self, step: str, level: types_pb2.LogLevel.ValueType, message: str) -> None:
        log.log(_PY_LEVELS.get(level, logging.INFO), "%s: %s", step, message)
        await self._runner.emit(self._job.log(step, level, message, self._clock.now()))


class _Step:
    """JobTask._step as a plain async context manager (a job runs ~5 steps; a generator-based
    one costs a generator, its frames and contextlib's bookkeeping each time)."""

    __slots__ = ("_closing_log", "_name", "_note", "_span", "_span_cm", "_started", "_task")

    def __init__(self, task: JobTask, name: str, closing_log: bool) -> None:
        self._task = task
        self._name = name
        self._closing_log = closing_log
        self._note = StepNote()
        self._started = 0.0
        self._span_cm: AbstractContextManager[Span] | None = None
        self._span: Span = INVALID_SPAN

    async def __aenter__(self) -> StepNote:
        task = self._task
        task._runner.enter_step(task._job, self._name)
        if task._tracing:
            attributes = {STEP_ATTRIBUTE: self._name, "postroom.platform": task._job.spec.platform}
            self._span_cm = task._tracer.start_as_current_span(
                SPAN_WORKER_STEP, attributes=attributes
            )
            self._span = self._span_cm.__enter__()
        self._started = time.perf_counter()
        return self._note

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, name = self._task, self._name
        try:
            try:
                if isinstance(exc, AdapterError):
                    self._span.set_status(Status(StatusCode.ERROR, exc.message))
                    await task._log(name, ERROR, f"{type(exc).__name__}: {exc.message}")
                elif isinstance(exc, LeaseLost):
                    await task._log(name, WARNING, str(exc))
            finally:
                elapsed = time.perf_counter() - self._started
                if task._metrics is not None:
                    task._metrics.observe_step(task._job.spec.platform, name, elapsed)
            if exc is None and self._closing_log:
                message = f"{self._note.message or 'done'} ({elapsed * 1000:.0f} ms)"
                await task._log(name, INFO, message)
        finally:
            if self._span_cm is not None:
                self._span_cm.__exit__(exc_type, exc, tb)


_PY_LEVELS = {ERROR: logging.ERROR, WARNING: logging.WARNING}


@contextmanager
def _no_span(name: str, attributes: Mapping[str, AttributeValue]) -> Iterator[Span]:
    """start_as_current_span's stand-in when nothing records spans."""
    yield INVALID_SPAN


@functools.cache
def _is_stepped(adapter_type: type) -> bool:
    # isinstance() against a runtime-checkable Protocol walks its attributes on every call
    # (7 % of a no-op job's CPU); an adapter class's answer never changes.
    return issubclass(adapter_type, SteppedAdapter)


async def close_adapter(adapter: PlatformAdapter) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(_ADAPTER_CLOSE_TIMEOUT_S):
        try:
            await adapter.close()
        except Exception:
            log.warning("closing an adapter failed", exc_info=True)
