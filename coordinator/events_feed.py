"""WatchEvents: the audit log as a live stream, resumable by seq.

Every change the coordinator makes is audited in the same batch as the change itself, so the
audit log is the one ordered record of what moved: a watcher that remembers the last seq it saw
resumes exactly there, after a restart of either side. The stream reads the store (the log is
the source), only rows past the last seq sent, and then waits for the actor's bell: rung after
every committed batch with audit entries, so an idle stream reads nothing until something
happens. It also looks every few seconds without a ring, for rows another process wrote.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from coordinator.convert import audit_pb
from coordinator.errors import InvalidArgument
from coordinator.store.base import Store
from coordinator.validation import check_filter
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb

# How often a stream looks for new rows with no ring (rows another process wrote).
DEFAULT_UNRUNG_INTERVAL_S = 2.0
# Rows read at once; a watcher far behind catches up in pages of this many.
TAIL_PAGE = 500
MAX_SUBJECTS = 100


class AuditBell:
    """Rung after a batch with audit entries commits. A watcher takes `armed()` *before* it
    reads, so a ring between its read and its wait is never missed."""

    def __init__(self) -> None:
        self._rung = anyio.Event()

    def armed(self) -> anyio.Event:
        return self._rung

    def ring(self) -> None:
        self._rung.set()
        self._rung = anyio.Event()


def check_request(request: pub.WatchEventsRequest) -> frozenset[str]:
    """The subjects to follow (empty: all); INVALID_ARGUMENT for what cannot be followed."""
    if request.after_seq < 0:
        raise InvalidArgument("after_seq must not be negative (0 starts at the oldest event)")
    if len(request.subject_ids) > MAX_SUBJECTS:
        raise InvalidArgument(
            f"{len(request.subject_ids)} subject_ids; follow at most {MAX_SUBJECTS} "
            "(or none for every event)"
        )
    return frozenset(check_filter(s, "subject_ids") for s in request.subject_ids) - {""}


# Initial metadata of a WatchEvents stream once it is positioned: the seq it starts after. A
# caller that awaits it (from_end) knows that whatever it commits next is in the stream.
START_SEQ_HEADER = "x-postroom-watch-after-seq"


async def start(store: Store, request: pub.WatchEventsRequest) -> tuple[frozenset[str], int]:
    """The subjects to follow and the seq the stream starts after (request.after_seq, or the end
    of the log now); InvalidArgument for what cannot be followed."""
    subjects = check_request(request)
    seq = await store.last_audit_seq() if request.from_end else request.after_seq
    return subjects, seq


async def follow(
    store: Store,
    subjects: frozenset[str],
    seq: int,
    bell: AuditBell,
    *,
    unrung_interval_s: float = DEFAULT_UNRUNG_INTERVAL_S,
) -> AsyncIterator[pb.AuditEvent]:
    """Events after `seq` about `subjects` (empty: all), then new ones as they land, until the
    caller stops iterating."""
    while True:
        rung = bell.armed()
        events = await store.list_audit(
            since=None, subject_id="", action="", after_seq=seq, limit=TAIL_PAGE
        )
        for event in events:
            seq = event.seq
            if not subjects or event.subject_id in subjects:
                yield audit_pb(event)
        if len(events) < TAIL_PAGE:
            with anyio.move_on_after(unrung_interval_s):
                await rung.wait()
