"""What a committed batch's signals mean for traces and metrics: one span per attempt (its
traceparent rides on the Assign to the worker), counters and histograms per outcome.

Owned by the coordinator actor and called only after the batch's commit (style.md 13: the tracer
and the metrics are injected). Its spans are its own state: job id -> the attempt's open span.
With a NoOpTracer (no exporter configured) no span objects are made at all (~10 % of the event
loop's CPU in a drain); each attempt still gets a fresh traceparent, so the worker's logs and
spans of one attempt share a trace id.
"""

from __future__ import annotations

import random

from opentelemetry.trace import NoOpTracer, Span, Tracer

from coordinator.domain import Job
from coordinator.leasing import outbound
from coordinator.leasing.effects import (
    AttemptEnded,
    AttemptStarted,
    CommitDecided,
    Dispatched,
    Effects,
    LeaseExpired,
    RateLimitHit,
)
from coordinator.metrics import CoordinatorMetrics
from postroom.tracing import inject_traceparent


class BatchObserver:
    def __init__(self, tracer: Tracer, metrics: CoordinatorMetrics | None) -> None:
        self.tracer = tracer
        self.metrics = metrics
        self._spans: dict[str, Span] = {}
        self._recording = not isinstance(tracer, NoOpTracer)
        self._parents: dict[str, str] = {}  # job id -> its attempt's traceparent (not recording)

    def traceparent(self, out: outbound.Outbound) -> str:
        """An Assign carries its attempt's span (started in observe) to the worker."""
        if type(out) is not outbound.Assign:
            return ""
        if not self._recording:
            return self._parents.get(out.job.id, "")
        span = self._spans.get(out.job.id)
        return inject_traceparent(span.get_span_context()) if span is not None else ""

    def _started(self, job: Job) -> None:
        if not self._recording:
            self._parents[job.id] = _new_traceparent()
        else:
            span = self.tracer.start_span(
                "postroom.job.attempt",
                attributes={
                    "postroom.job_id": job.id,
                    "postroom.platform": job.platform,
                    "postroom.account": job.account,
                    "postroom.attempt": job.attempt,
                    "postroom.lease_epoch": job.lease_epoch,
                    "postroom.verify_first": job.verify_first,
                },
            )
            if job.id in self._spans:
                self._spans.pop(job.id).end()
            self._spans[job.id] = span
        if self.metrics:
            self.metrics.account_known(job.platform, job.account)
            self.metrics.job_attempt_started(job.platform)

    def observe(self, fx: Effects, now: float) -> None:
        for sig in fx.signals:
            match sig:
                case AttemptStarted(job=job):
                    self._started(job)
                case AttemptEnded(job=job, outcome=outcome, duration_s=duration):
                    self._parents.pop(job.id, None)
                    ended = self._spans.pop(job.id, None)
                    if ended is not None:
                        span = ended
                        span.set_attribute("postroom.outcome", outcome)
                        if sig.error_class:
                            span.set_attribute("postroom.error_class", sig.error_class)
                        if sig.retry_reason:
                            span.add_event(
                                "retry_scheduled",
                                {"reason": sig.retry_reason, "retry_at": sig.retry_at},
                            )
                            span.set_attribute(
                                "postroom.retry_after_s", max(0.0, sig.retry_at - now)
                            )
                        span.end()
                    if self.metrics:
                        if outcome in ("succeeded", "failed", "needs_login", "cancelled"):
                            self.metrics.job_finished(job.platform, outcome, duration)
                        if sig.retry_reason:
                            self.metrics.retry_scheduled(job.platform, sig.retry_reason)
                case LeaseExpired(phase=phase):
                    if self.metrics:
                        self.metrics.lease_expired(phase)  # type: ignore[arg-type]
                case CommitDecided(granted=granted):
                    if self.metrics:
                        self.metrics.commit_permit(granted)
                case RateLimitHit(platform=platform, account=account):
                    attempt_span = self._spans.get(sig.job_id)
                    if attempt_span is not None:
                        attempt_span.add_event("gate_closed", {"until": sig.until})
                    if self.metrics:
                        self.metrics.rate_limit_hit(platform, account)
                        # Now, not at the next gauge refresh (up to 5 s away): a gate closed
                        # for a short Retry-After would otherwise never read 1.
                        self.metrics.set_gate(platform, account, True)
                case Dispatched(latency_s=latency):
                    if self.metrics:
                        self.metrics.dispatch_latency(latency)


def _new_traceparent() -> str:
    """A W3C traceparent of a new trace (sampled, as the SDK's default sampler would say)."""
    trace_id = random.getrandbits(128) or 1  # all-zero ids are invalid
    span_id = random.getrandbits(64) or 1
    return f"00-{trace_id:032x}-{span_id:016x}-01"
