"""The commit fence: the lease is checked again at the instant each request of a commit would put
its first byte on the wire, not only when the commit call begins.

`JobTask.begin_commit` checks the lease just before the adapter's commit call, but the call's
request may leave much later: connecting over a bad link takes SYN retransmissions (1 s, 3 s,
7 s ...), and a commit of several requests (upload, then create) sends its last one last. A
request that leaves after the worker's lease deadline can land after the coordinator gave the job
to another worker, which looked on the platform, found nothing and posted: a second post. So the
lifecycle runs the commit inside `commit_fence(check)`, and `worker.adapters.http.send` hands the
fence to httpx as a trace hook that runs when the request headers are about to be written. When
`check()` names a reason (the job was abandoned, or its lease is too close to its deadline), the
request is not sent and `LeaseLost` ends the attempt: nothing left the worker, and the next
attempt looks on the platform before posting anyway.

A request whose first byte left in time may still arrive late (a queue in the network); the
coordinator's margin after the deadline and the next attempt's look cover that, and platforms
that take an idempotency key close it for good.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from worker.errors import LeaseLost

FenceCheck = Callable[[], str | None]
TraceHook = Callable[[str, dict[str, Any]], Any]

_FENCE: ContextVar[FenceCheck | None] = ContextVar("postroom_commit_fence", default=None)
# httpcore's trace events for the moment a request starts to be written (HTTP/1.1 and HTTP/2).
_SENDING_SUFFIX = "send_request_headers.started"


@contextmanager
def commit_fence(check: FenceCheck) -> Iterator[None]:
    """Every request sent through `worker.adapters.http.send` inside this block (in this task)
    is first checked with `check`: a reason stops it before any byte is written."""
    token = _FENCE.set(check)
    try:
        yield
    finally:
        _FENCE.reset(token)


def fenced_trace(what: str, chained: TraceHook | None = None) -> TraceHook | None:
    """An httpcore `trace` extension for a request described as `what` (e.g. "POST /path"), or
    `chained` unchanged when no fence is up. The hook raises `LeaseLost` in place of writing."""
    check = _FENCE.get()
    if check is None:
        return chained

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event.endswith(_SENDING_SUFFIX):
            reason = check()
            if reason is not None:
                raise LeaseLost(f"not sending {what}: {reason}")
        if chained is not None:
            await chained(event, info)

    return trace
