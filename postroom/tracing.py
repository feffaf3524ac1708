"""Tracing for postroom's processes: a `TracerProvider` built from the standard OTEL_* environment,
and the W3C `traceparent` that crosses the process boundary inside `Assign` messages.

The provider is returned, never installed globally: callers pass it (or a tracer from it) down.
With no OTEL_* variables it has no span processor, so spans cost next to nothing.

One trace per job attempt (design.md, "Observability names"): the coordinator opens
`SPAN_JOB_ATTEMPT` when it assigns a job and puts `inject_traceparent(span.get_span_context())` in
the `Assign`; the worker continues that trace with `SPAN_WORKER_RUN` under
`context_from_traceparent(assign.traceparent)`, and one `SPAN_WORKER_STEP` child per step
(attribute `STEP_ATTRIBUTE`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SPAN_JOB_ATTEMPT = "postroom.job.attempt"
SPAN_WORKER_RUN = "postroom.worker.run"
SPAN_WORKER_STEP = "postroom.worker.step"
STEP_ATTRIBUTE = "postroom.step"

_PROPAGATOR = TraceContextTextMapPropagator()


def exporters_from_env(environ: Mapping[str, str] | None = None) -> list[SpanExporter]:
    """The exporters the standard OTEL_* variables ask for (empty: tracing is off).

    `OTEL_TRACES_EXPORTER` is a comma-separated list of `otlp`, `console`, `none`; when it is unset,
    an OTLP endpoint variable alone turns OTLP on. `OTEL_SDK_DISABLED=true` turns everything off.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = {n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")} - {""}
    if "none" in names:
        return []
    traces_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base_endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not names and (traces_endpoint or base_endpoint):
        names = {"otlp"}
    exporters: list[SpanExporter] = []
    if "otlp" in names:
        # The exporter would read os.environ itself; resolving here honours an injected environ.
        # The generic endpoint is a base URL (the signal path is appended), the traces one is not.
        endpoint = traces_endpoint or (
            base_endpoint.rstrip("/") + "/v1/traces" if base_endpoint else None
        )
        exporters.append(OTLPSpanExporter(endpoint=endpoint))
    if "console" in names:
        exporters.append(ConsoleSpanExporter(service_name=env.get("OTEL_SERVICE_NAME")))
    return exporters


def make_tracer_provider(
    service_name: str,
    *,
    exporter: SpanExporter | None = None,
    environ: Mapping[str, str] | None = None,
) -> TracerProvider:
    """A provider for `service_name`. With `exporter` (tests: an `InMemorySpanExporter`) spans go
    there synchronously and the environment is ignored; otherwise see `exporters_from_env`."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return provider
    for exp in exporters_from_env(environ):
        if isinstance(exp, ConsoleSpanExporter):
            # Console output is for a human watching: show each span as it ends.
            provider.add_span_processor(SimpleSpanProcessor(exp))
        else:
            provider.add_span_processor(BatchSpanProcessor(exp))
    return provider


def inject_traceparent(span_context: SpanContext) -> str:
    """The W3C `traceparent` header value for `span_context` ("" if it is not valid)."""
    carrier: dict[str, str] = {}
    ctx = trace.set_span_in_context(NonRecordingSpan(span_context))
    _PROPAGATOR.inject(carrier, context=ctx)
    return carrier.get("traceparent", "")


def context_from_traceparent(tp: str) -> Context:
    """The parent context carried by a W3C `traceparent` value. An empty or malformed value gives
    an empty context, so the run starts a new trace rather than failing the job."""
    if not tp:
        return Context()
    return _PROPAGATOR.extract({"traceparent": tp})
