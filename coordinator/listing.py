"""ListPosts and ListJobs: pages of posts (each with its target states and warnings) and of
jobs, newest first, paged by cursor.

A page token names the last row shown, (created_at, id), signed for the query it was issued for:
the next page starts after that row, so posts and jobs created meanwhile (they sort first) do
not shift it, where an offset would show a row twice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections import defaultdict

from coordinator.convert import job_pb, post_pb
from coordinator.domain import Job
from coordinator.errors import InvalidArgument
from coordinator.store.base import Cursor, JobFilter, Store
from coordinator.validation import (
    MAX_PAGE_TOKEN_CHARS,
    check_filter,
    job_status_filter,
    page_size,
    post_status_filter,
)
from postroom.v1 import publishing_pb2 as pub

DEFAULT_PAGE = 100
MAX_PAGE = 1000
# Tokens must survive a coordinator restart (a client paging through a list while it restarts):
# the key is fixed. The MAC is a check, not a secret: a forged token could only name a row to
# start after, which any caller may ask for by paging.
_CURSOR_KEY = b"postroom page cursor v1"


def _mac(scope: str, at: str, row_id: str) -> str:
    digest = hmac.new(_CURSOR_KEY, f"{scope}|{at}|{row_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:12]).decode().rstrip("=")


def issue_cursor(scope: str, at: float, row_id: str) -> str:
    """An opaque token for the page after row (at, row_id) of the query named by `scope`."""
    raw = f"{at!r}|{row_id}|{_mac(scope, repr(at), row_id)}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def read_cursor(scope: str, token: str) -> Cursor | None:
    """The row a token issued for `scope` names; None for no token (the first page)."""
    if not token:
        return None
    refused = InvalidArgument(
        "page_token is not one this server gave out for this query; pass the next_page_token "
        "of the previous response unchanged, with the same filters (or none to start over)"
    )
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise refused
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
        at, row_id, mac = raw.rsplit("|", 2)
        when = float(at)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise refused from None
    if not hmac.compare_digest(mac, _mac(scope, at, row_id)):
        raise refused
    return when, row_id


async def list_posts(store: Store, request: pub.ListPostsRequest) -> pub.ListPostsResponse:
    status = post_status_filter(request.status)
    size = page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)
    scope = f"posts|{status}"
    before = read_cursor(scope, request.page_token)
    as_of = await store.last_audit_seq()  # first: a change after it has a greater seq
    found = await store.list_posts(status=status, limit=size, offset=0, before=before)
    jobs: dict[str, list[Job]] = defaultdict(list)
    for job in await store.jobs_for_posts([p.id for p in found]) if found else ():
        jobs[job.post_id].append(job)
    last = found[-1] if len(found) == size else None
    return pub.ListPostsResponse(
        posts=[post_pb(p, jobs.get(p.id, ())) for p in found],
        next_page_token=issue_cursor(scope, last.created_at, last.id) if last else "",
        as_of_seq=as_of,
    )


async def list_jobs(store: Store, request: pub.ListJobsRequest) -> pub.ListJobsResponse:
    flt = JobFilter(
        status=job_status_filter(request.status),
        platform=check_filter(request.platform, "platform").lower(),
        account=check_filter(request.account, "account"),
        post_id=check_filter(request.post_id, "post_id"),
        device_id=check_filter(request.device_id, "device_id"),
    )
    size = page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)
    scope = f"jobs|{flt.status}|{flt.platform}|{flt.account}|{flt.post_id}|{flt.device_id}"
    before = read_cursor(scope, request.page_token)
    as_of = await store.last_audit_seq()
    found = await store.list_jobs(flt, limit=size, offset=0, before=before)
    last = found[-1] if len(found) == size else None
    return pub.ListJobsResponse(
        jobs=[job_pb(j) for j in found],
        next_page_token=issue_cursor(scope, last.created_at, last.id) if last else "",
        as_of_seq=as_of,
    )
