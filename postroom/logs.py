"""Structured logging for postroom's processes: one line per record on stderr, as text or JSON.

Every line carries `job_id` and `trace_id` when they are known. They come from `log_context(...)`
(context variables, so each asyncio task sees its own), an explicit `extra={"job_id": ...}`, or,
for `trace_id`, the current OpenTelemetry span. Fields a caller passes with `extra=` are kept: as
keys of the JSON object, or as `key=value` after the text message.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import IO, Any, Literal

from opentelemetry import trace

LogFormat = Literal["text", "json"]

_JOB_ID: ContextVar[str | None] = ContextVar("postroom_log_job_id", default=None)
_TRACE_ID: ContextVar[str | None] = ContextVar("postroom_log_trace_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "job_id",
    "trace_id",
}

# The handler configure_logging installed last, so a second call replaces it instead of doubling.
_installed: logging.Handler | None = None


@contextmanager
def log_context(*, job_id: str | None = None, trace_id: str | None = None) -> Iterator[None]:
    """Tag every record logged inside the block; a None argument keeps the outer value."""
    tokens: list[tuple[ContextVar[str | None], Token[str | None]]] = []
    if job_id is not None:
        tokens.append((_JOB_ID, _JOB_ID.set(job_id)))
    if trace_id is not None:
        tokens.append((_TRACE_ID, _TRACE_ID.set(trace_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _current_span_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


class ContextFilter(logging.Filter):
    """Sets `record.job_id` and `record.trace_id` (None when unknown); never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = _JOB_ID.get()
        if getattr(record, "trace_id", None) is None:
            record.trace_id = _TRACE_ID.get() or _current_span_trace_id()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}


def _iso_time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job_id, trace_id, then extras."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": _iso_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", None),
            "trace_id": getattr(record, "trace_id", None),
        }
        for key, value in _extras(record).items():
            payload.setdefault(key, value)
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack_info"] = self.formatStack(record.stack_info)
        # default=str: an odd extra must not cost the log line.
        return json.dumps(payload, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message job_id=… trace_id=… key=value…` (unknown ids are left out)."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "job_id": getattr(record, "job_id", None),
            "trace_id": getattr(record, "trace_id", None),
            **_extras(record),
        }
        tail = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        line = f"{_iso_time(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if tail:
            line = f"{line} {tail}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


def configure_logging(
    *, fmt: LogFormat, level: str, stream: IO[str] | None = None
) -> logging.Handler:
    """Send every logger's records to `stream` (default: stderr) in `fmt`, at `level` and above.

    Replaces the handler of a previous call; leaves handlers installed by others alone.
    """
    global _installed
    levels = logging.getLevelNamesMapping()
    if level.upper() not in levels:
        raise ValueError(f"unknown log level {level!r}: use one of {sorted(levels)}")
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r}: use 'text' or 'json'")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
        _installed.close()
    root.addHandler(handler)
    root.setLevel(levels[level.upper()])
    _installed = handler
    return handler
