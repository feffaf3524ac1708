"""The coordinator's observer without an exporter (NoOpTracer): no spans are made, yet every
attempt's Assign still carries a traceparent of its own, so the worker's logs and spans of one
attempt share a trace id."""

from __future__ import annotations

import re

from opentelemetry import trace
from prometheus_client import CollectorRegistry

from coordinator.domain import Job, JobStatus
from coordinator.leasing import outbound
from coordinator.leasing.effects import AttemptEnded, AttemptStarted, Effects
from coordinator.metrics import CoordinatorMetrics
from coordinator.observing import BatchObserver
from postroom.tracing import context_from_traceparent

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


def _job(job_id: str) -> Job:
    return Job(
        id=job_id,
        post_id="p-1",
        platform="sandbox",
        account="acme",
        status=JobStatus.CLAIMED,
        idempotency_key=f"p-1:sandbox/acme:{job_id}",
        platform_key="pr-1",
        content_hash="h",
        text="hello",
        media=(),
        scheduled_at=1.0,
        created_at=1.0,
        updated_at=1.0,
        not_before=1.0,
        attempt=1,
        lease_epoch=1,
    )


def test_without_an_exporter_each_attempt_gets_its_own_trace_and_no_span() -> None:
    registry = CollectorRegistry()
    observer = BatchObserver(trace.NoOpTracer(), CoordinatorMetrics(registry))
    a, b = _job("j-a"), _job("j-b")
    observer.observe(Effects(signals=[AttemptStarted(a, "s-1"), AttemptStarted(b, "s-1")]), 2.0)
    tp_a = observer.traceparent(outbound.Assign(a, 10.0, False))
    tp_b = observer.traceparent(outbound.Assign(b, 10.0, False))
    assert TRACEPARENT.match(tp_a) and TRACEPARENT.match(tp_b)
    assert tp_a.split("-")[1] != tp_b.split("-")[1]  # one trace per attempt
    parent = trace.get_current_span(context_from_traceparent(tp_a)).get_span_context()
    assert parent.is_valid and f"{parent.trace_id:032x}" == tp_a.split("-")[1]
    # The attempts are counted all the same.
    started = registry.get_sample_value("postroom_job_attempts_total", {"platform": "sandbox"})
    assert started == 2
    observer.observe(Effects(signals=[AttemptEnded(a, "succeeded", 0.5)]), 2.5)
    assert observer.traceparent(outbound.Assign(a, 10.0, False)) == ""  # nothing kept
    done = {"platform": "sandbox", "outcome": "succeeded"}
    assert registry.get_sample_value("postroom_jobs_total", done) == 1
