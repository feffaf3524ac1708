"""Tracing: one trace per job attempt crosses the process boundary through the `traceparent`
carried in protocol messages; exporters follow the standard OTEL_* environment."""

from __future__ import annotations

import re
from types import ModuleType

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN_CONTEXT

import postroom.tracing as tracing_module
from postroom.tracing import (
    SPAN_JOB_ATTEMPT,
    SPAN_WORKER_RUN,
    SPAN_WORKER_STEP,
    context_from_traceparent,
    inject_traceparent,
)

# One module serves both processes (postroom/ holds the shared infrastructure).
coordinator_tracing = worker_tracing = tracing_module

# Flags: sampled (0x01), plus "random trace id" (0x02) from recent SDKs.
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[13]$")
BOTH = pytest.mark.parametrize("tracing", [tracing_module], ids=lambda m: m.__name__)


def processors(provider: TracerProvider) -> tuple[SpanProcessor, ...]:
    # The SDK has no public accessor for a provider's processors.
    found: tuple[SpanProcessor, ...] = provider._active_span_processor._span_processors
    return found


def test_worker_spans_continue_the_coordinator_trace() -> None:
    coordinator_spans, worker_spans = InMemorySpanExporter(), InMemorySpanExporter()
    coordinator_provider = coordinator_tracing.make_tracer_provider(
        "postroom-coordinator", exporter=coordinator_spans
    )
    worker_provider = worker_tracing.make_tracer_provider("postroom-worker", exporter=worker_spans)

    with coordinator_provider.get_tracer("test").start_as_current_span(SPAN_JOB_ATTEMPT) as attempt:
        traceparent = inject_traceparent(attempt.get_span_context())
    assert TRACEPARENT.match(traceparent), traceparent

    # The other process: only the string crossed over.
    tracer = worker_provider.get_tracer("test")
    parent = context_from_traceparent(traceparent)
    with (
        tracer.start_as_current_span(SPAN_WORKER_RUN, context=parent),
        tracer.start_as_current_span(SPAN_WORKER_STEP, attributes={"postroom.step": "publish"}),
    ):
        pass

    [attempt_span] = coordinator_spans.get_finished_spans()
    step_span, run_span = worker_spans.get_finished_spans()
    attempt_ctx = attempt_span.get_span_context()
    assert attempt_ctx is not None
    assert run_span.name == SPAN_WORKER_RUN
    assert run_span.context is not None and step_span.context is not None
    assert run_span.context.trace_id == attempt_ctx.trace_id
    assert run_span.parent is not None and run_span.parent.span_id == attempt_ctx.span_id
    assert run_span.parent.is_remote
    assert step_span.context.trace_id == attempt_ctx.trace_id
    assert step_span.parent is not None and step_span.parent.span_id == run_span.context.span_id
    assert attempt_span.resource.attributes["service.name"] == "postroom-coordinator"
    assert run_span.resource.attributes["service.name"] == "postroom-worker"


def test_missing_or_garbled_traceparent_starts_a_new_trace() -> None:
    assert inject_traceparent(INVALID_SPAN_CONTEXT) == ""
    spans = InMemorySpanExporter()
    tracer = worker_tracing.make_tracer_provider("w", exporter=spans).get_tracer("test")
    for tp in ("", "not-a-traceparent", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"):
        with tracer.start_as_current_span(SPAN_WORKER_RUN, context=context_from_traceparent(tp)):
            pass
    assert [s.parent for s in spans.get_finished_spans()] == [None, None, None]


@BOTH
def test_no_otel_environment_means_no_span_processor(tracing: ModuleType) -> None:
    provider = tracing.make_tracer_provider("svc", environ={})
    assert processors(provider) == ()
    # Never installed as the global provider: callers pass it down.
    assert trace.get_tracer_provider() is not provider


@BOTH
@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, [OTLPSpanExporter]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, [OTLPSpanExporter]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, [OTLPSpanExporter]),
        (
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
            [],
        ),
        ({"OTEL_TRACES_EXPORTER": "console"}, [ConsoleSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, [OTLPSpanExporter, ConsoleSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_exporters_follow_the_otel_environment(
    tracing: ModuleType, environ: dict[str, str], expected: list[type]
) -> None:
    exporters = tracing.exporters_from_env(environ)
    try:
        assert [type(e) for e in exporters] == expected
    finally:
        for exporter in exporters:
            exporter.shutdown()


@BOTH
def test_otlp_endpoint_gets_a_batch_processor(tracing: ModuleType) -> None:
    provider = tracing.make_tracer_provider(
        "svc", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
    )
    try:
        assert [type(p) for p in processors(provider)] == [BatchSpanProcessor]
    finally:
        provider.shutdown()


@BOTH
def test_given_exporter_wins_over_the_environment(tracing: ModuleType) -> None:
    exporter = InMemorySpanExporter()
    provider = tracing.make_tracer_provider(
        "svc", exporter=exporter, environ={"OTEL_TRACES_EXPORTER": "otlp"}
    )
    assert [type(p) for p in processors(provider)] == [SimpleSpanProcessor]
    with provider.get_tracer("t").start_as_current_span("x"):
        pass
    assert [s.name for s in exporter.get_finished_spans()] == ["x"]
