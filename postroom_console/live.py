"""Streams: live page updates (Server-Sent Events fed by the coordinator's WatchEvents), proof
screenshots (GetAsset, passed through in chunks) and the audit log's JSONL export."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TypeVar

from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from postroom.client import AsyncClient
from postroom.client.errors import PostroomError
from postroom_console.pages import AUDIT_PAGE
from postroom_console.render import audit_json_line
from postroom_console.web import person

MAX_SUBJECTS = 100  # the coordinator's bound on one WatchEvents
DEFAULT_PING_S = 15  # keeps proxies from closing an idle stream
T = TypeVar("T")


def _seq(text: str | None) -> int:
    try:
        return max(0, int(text or 0))
    except ValueError:
        return 0


async def _audit_changes(
    client: AsyncClient, after: int, subjects: list[str]
) -> AsyncIterator[dict[str, str]]:
    async for event in client.watch_events(
        after_seq=after, subject_ids=subjects, from_end=after == 0
    ):
        data = {"seq": event.seq, "action": event.action, "subject": event.subject_id}
        yield {"event": "change", "id": str(event.seq), "data": json.dumps(data)}


async def _step_logs(client: AsyncClient, job_id: str) -> AsyncIterator[dict[str, str]]:
    """A running job's step log lines (not audited: WatchJob has them), until it ends. The
    job's first snapshot says the watch stands (`following`): lines from then on come live."""
    async for event in client.watch_job(job_id):
        if event.HasField("log"):
            yield {"event": "change", "data": json.dumps({"log": event.log.log.step})}
        elif event.job.runs:  # only the first snapshot carries the runs
            yield {"event": "following", "data": json.dumps({"job": job_id})}


async def _merged(*sources: AsyncIterator[T]) -> AsyncIterator[T]:
    """Items of all sources as they come; the tasks reading them end with this generator."""
    pending = {asyncio.ensure_future(anext(s)): s for s in sources}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                source = pending.pop(future)
                try:
                    item = future.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(source))] = source
                yield item
    finally:
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def events(request: Request) -> Response:
    """`change` events (id = audit seq) about ?subject=... (all when none), and with ?job=ID
    that job's step log lines while it runs. A browser that reconnects sends Last-Event-ID and
    resumes exactly after it; without either, it starts at the end of the log (a page just
    rendered has seen everything before)."""
    _, client = person(request)
    subjects = [s for s in request.query_params.getlist("subject") if s][:MAX_SUBJECTS]
    after = _seq(request.headers.get("last-event-id")) or _seq(request.query_params.get("after"))
    job_id = request.query_params.get("job", "")
    sources = [_audit_changes(client, after, subjects)]
    if job_id:
        sources.append(_step_logs(client, job_id))

    async def stream() -> AsyncIterator[dict[str, str]]:
        try:
            async for item in _merged(*sources):
                yield item
        except PostroomError as exc:  # the page keeps working; the status line says why
            yield {"event": "stopped", "data": json.dumps({"reason": exc.message})}

    return EventSourceResponse(stream(), ping=DEFAULT_PING_S)


async def asset(request: Request) -> Response:
    """A screenshot's bytes, as the coordinator stores them (content-addressed: cacheable)."""
    _, client = person(request)
    asset_id = request.path_params["asset_id"]
    chunks = client.get_asset(asset_id).__aiter__()
    try:  # the first chunk here, so a missing asset is a page of its own, not a cut stream
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None

    async def body() -> AsyncIterator[bytes]:
        if first is not None:
            yield first.data
        async for chunk in chunks:
            yield chunk.data

    content_type = (first.content_type if first is not None else "") or "application/octet-stream"
    headers = {"cache-control": "private, max-age=86400, immutable"}
    if first is not None:
        headers["content-length"] = str(first.total_size)
    return StreamingResponse(body(), media_type=content_type, headers=headers)


async def audit_export(request: Request) -> Response:
    """The audit log, filtered as on the page, as JSON lines: every matching event, paged."""
    _, client = person(request)
    q = request.query_params
    subject, action, since = (q.get(k, "").strip() for k in ("subject", "action", "since"))
    # The first page here, so a bad filter is a readable page rather than a cut stream.
    first = await client.list_audit_events(
        subject_id=subject, action=action, since=since, page_size=AUDIT_PAGE
    )

    async def lines() -> AsyncIterator[str]:
        for event in first.events:
            yield audit_json_line(event) + "\n"
        after = first.next_after_seq
        while after:
            page = await client.list_audit_events(
                subject_id=subject, action=action, since=since, after_seq=after, page_size=1000
            )
            for event in page.events:
                yield audit_json_line(event) + "\n"
            after = page.next_after_seq

    headers = {"content-disposition": 'attachment; filename="postroom-audit.jsonl"'}
    return StreamingResponse(lines(), media_type="application/x-ndjson", headers=headers)
