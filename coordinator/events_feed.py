"""WatchEvents: the audit log as a live stream, resumable by seq.

Every change the coordinator makes is audited in the same batch as the change itself, so the
audit log is the one ordered record of what moved: a watcher that remembers the last seq it saw
resumes exactly there, after a restart of either side. The stream tails the store (the log is
the source, whichever process or backend wrote it), reading only rows past the last seq sent;
an idle tail costs one indexed read per interval.
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

# How often an idle stream looks for new rows: what a page's live update may lag by.
DEFAULT_TAIL_INTERVAL_S = 0.2
# Rows read at once; a watcher far behind catches up in pages of this many.
TAIL_PAGE = 500
MAX_SUBJECTS = 100


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


async def watch(
    store: Store,
    request: pub.WatchEventsRequest,
    *,
    interval_s: float = DEFAULT_TAIL_INTERVAL_S,
) -> AsyncIterator[pb.AuditEvent]:
    """Events after request.after_seq (or from the end of the log), then new ones as they land,
    until the caller stops iterating. Raises InvalidArgument before the first event."""
    subjects = check_request(request)
    seq = await store.last_audit_seq() if request.from_end else request.after_seq
    while True:
        events = await store.list_audit(
            since=None, subject_id="", action="", after_seq=seq, limit=TAIL_PAGE
        )
        for event in events:
            seq = event.seq
            if not subjects or event.subject_id in subjects:
                yield audit_pb(event)
        if len(events) < TAIL_PAGE:
            await anyio.sleep(interval_s)
