"""What keeps a commit's request from reaching the platform after the worker's lease is gone.

Two holes, both found by the network-partition tests (tests/test_partitions.py):

- **A request that leaves late.** `JobTask.begin_commit` checks the lease just before the
  adapter's commit call, but the call's request may leave much later: connecting over a bad link
  takes SYN retransmissions (1 s, 3 s, 7 s ...), and a commit of several requests (upload, then
  create) sends its last one last. So the lifecycle runs the commit inside `commit_fence(check)`,
  and `worker.adapters.http.send` runs `check()` again when the request headers are about to be
  written (an httpcore trace hook): when it names a reason (the job was abandoned, or its lease is
  too close to its deadline), nothing is written and `LeaseLost` ends the attempt.
- **A request that left in time but arrives late.** Bytes the platform has not acknowledged stay
  in the kernel's send queue, and TCP retransmits them, also after the worker gave up on the
  call and closed the connection: a partition that heals minutes later still delivers the post,
  possibly after another worker looked, found nothing and posted. So every connection of the
  adapters closes abortively (SO_LINGER 0: a reset that discards the send queue), and a lost lease
  aborts a commit in progress (the job's scope is cancelled). A request the platform acknowledged
  before that is in doubt, and the next attempt looks on the platform before posting.

What neither can stop: bytes already inside the network (a queue on the path), or a platform that
acknowledges a request and acts on it much later. The coordinator's margin after the deadline
covers a short path delay; platforms that take an idempotency key close it for good.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from worker.errors import LeaseLost

FenceCheck = Callable[[], str | None]
TraceHook = Callable[[str, dict[str, Any]], Awaitable[None]]

_FENCE: ContextVar[FenceCheck | None] = ContextVar("postroom_commit_fence", default=None)
# httpcore's trace events: a new TCP connection, and a request about to be written (HTTP/1.1 and
# HTTP/2 name it alike).
_CONNECTED = "connection.connect_tcp.complete"
_SENDING_SUFFIX = "send_request_headers.started"
# l_onoff=1, l_linger=0: close() sends a reset and drops whatever was not acknowledged.
_ABORTIVE_LINGER = struct.pack("ii", 1, 0)


@contextmanager
def commit_fence(check: FenceCheck) -> Iterator[None]:
    """Every request sent through `worker.adapters.http.send` inside this block (in this task)
    is first checked with `check`: a reason stops it before any byte is written."""
    token = _FENCE.set(check)
    try:
        yield
    finally:
        _FENCE.reset(token)


def request_trace(what: str, chained: TraceHook | None = None) -> TraceHook:
    """The httpcore `trace` extension for one request described as `what` (e.g. "POST /path"):
    makes a new connection close abortively and, inside a commit fence, raises `LeaseLost` in
    place of writing the request when the fence says no. `chained` is called as well."""
    check = _FENCE.get()

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event == _CONNECTED:
            abortive_close(info.get("return_value"))
        elif check is not None and event.endswith(_SENDING_SUFFIX):
            reason = check()
            if reason is not None:
                raise LeaseLost(f"not sending {what}: {reason}")
        if chained is not None:
            await chained(event, info)

    return trace


def abortive_close(stream: object) -> None:
    """Set SO_LINGER 0 on the socket under an httpcore network stream (when it has one)."""
    get_extra_info = getattr(stream, "get_extra_info", None)
    sock = get_extra_info("socket") if get_extra_info is not None else None
    # asyncio hands out a TransportSocket, not a socket.socket: it has setsockopt all the same.
    setsockopt = getattr(sock, "setsockopt", None)
    if setsockopt is not None:
        setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORTIVE_LINGER)
