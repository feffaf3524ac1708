"""Structured logs: one line per record, each carrying job_id and trace_id when they are known."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

import postroom.logs as postroom_logs

# One module serves the coordinator and the worker (postroom/ holds the shared infrastructure).
BOTH = pytest.mark.parametrize("logs", [postroom_logs], ids=lambda m: m.__name__)


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@BOTH
def test_json_lines_carry_job_and_trace_ids(logs: ModuleType) -> None:
    out = io.StringIO()
    logs.configure_logging(fmt="json", level="info", stream=out)
    log = logging.getLogger("postroom.test")

    log.info("before any job")
    with logs.log_context(job_id="job-1", trace_id="4bf92f3577b34da6a3ce929d0e0e4736"):
        log.warning("rate limited\nretrying later", extra={"platform": "x", "retry_after_s": 30})
        with logs.log_context(job_id="job-2"):
            log.info("nested")
    log.debug("below the level")

    first, second, third = json_lines(out)
    assert first["message"] == "before any job"
    assert first["job_id"] is None and first["trace_id"] is None
    assert second == {
        "time": second["time"],
        "level": "WARNING",
        "logger": "postroom.test",
        "message": "rate limited\nretrying later",
        "job_id": "job-1",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "platform": "x",
        "retry_after_s": 30,
    }
    assert second["time"].endswith("+00:00")
    assert (third["job_id"], third["trace_id"]) == ("job-2", "4bf92f3577b34da6a3ce929d0e0e4736")


@BOTH
def test_trace_id_comes_from_the_current_span(logs: ModuleType) -> None:
    out = io.StringIO()
    logs.configure_logging(fmt="json", level="INFO", stream=out)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("postroom.worker.run") as span:
        logging.getLogger("w").info("inside a span", extra={"job_id": "job-9"})
    [line] = json_lines(out)
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["job_id"] == "job-9"


@BOTH
def test_each_asyncio_task_keeps_its_own_job_id(logs: ModuleType) -> None:
    out = io.StringIO()
    logs.configure_logging(fmt="json", level="INFO", stream=out)

    async def run(job_id: str, started: asyncio.Event, other: asyncio.Event) -> None:
        with logs.log_context(job_id=job_id):
            started.set()
            await other.wait()  # both contexts are open at once
            logging.getLogger("w").info("done")

    async def main() -> None:
        a, b = asyncio.Event(), asyncio.Event()
        await asyncio.gather(run("job-a", a, b), run("job-b", b, a))

    asyncio.run(main())
    assert sorted(line["job_id"] for line in json_lines(out)) == ["job-a", "job-b"]


@BOTH
def test_exceptions_stay_inside_one_json_line(logs: ModuleType) -> None:
    out = io.StringIO()
    logs.configure_logging(fmt="json", level="INFO", stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("c").exception("step failed", extra={"job_id": "job-3"})
    [line] = json_lines(out)
    assert "ValueError: boom" in line["exc_info"]
    assert line["job_id"] == "job-3"


@BOTH
def test_text_format_shows_the_ids_and_extras(logs: ModuleType) -> None:
    out = io.StringIO()
    logs.configure_logging(fmt="text", level="INFO", stream=out)
    with logs.log_context(job_id="job-1", trace_id="abc"):
        logging.getLogger("postroom.c").info("assigned", extra={"device": "w1"})
    logging.getLogger("postroom.c").info("idle")
    assigned, idle = out.getvalue().splitlines()
    assert assigned.endswith("INFO    postroom.c: assigned job_id=job-1 trace_id=abc device=w1")
    assert idle.endswith("postroom.c: idle")


@BOTH
def test_configuring_twice_replaces_the_handler(logs: ModuleType) -> None:
    first, second = io.StringIO(), io.StringIO()
    logs.configure_logging(fmt="json", level="INFO", stream=first)
    logs.configure_logging(fmt="json", level="INFO", stream=second)
    logging.getLogger("x").info("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


@BOTH
def test_bad_level_or_format_is_refused(logs: ModuleType) -> None:
    with pytest.raises(ValueError, match="level"):
        logs.configure_logging(fmt="json", level="loud")
    with pytest.raises(ValueError, match="format"):
        logs.configure_logging(fmt="xml", level="INFO")
