"""SqlStore: what the SQLite and PostgreSQL stores share, written once.

Both backends run the same named queries (one `queries.sql` per dialect, same names, same
`:named` parameters bound from the dicts of rows.py). A backend supplies the connection and the
dialect: how a query runs (`_rows`, `_many`, `_cas`), how audit events get their seq, and its
transactions (`apply`). What is the same is here: the order in which a batch is written, how a
miss is diagnosed once the batch is rolled back, and the mapping of every read.
"""

from __future__ import annotations

import functools
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from coordinator.access.records import DeviceEnrollment, OperatorToken
from coordinator.domain import (
    ACTIVE_JOB_STATUSES,
    AuditEvent,
    DeviceRecord,
    GateRecord,
    Job,
    JobStatus,
    Post,
    PostStatus,
    Run,
)
from coordinator.errors import ConcurrentUpdate, NotFound, StoreError
from coordinator.leasing.state import SYSTEM
from coordinator.poststatus import derive_post_status
from coordinator.store import access_rows, cas, rows
from coordinator.store.base import Cursor, JobFilter, JobWrite, PostTask, PostWrite, WriteBatch
from coordinator.store.rows import Params, Row

Conn = TypeVar("Conn")

# DeletePost's statements, in order: a post's screenshot and step-log rows, runs, jobs, the post.
DELETE_POST_STAGES = (
    "delete_post_screenshots",
    "delete_post_logs",
    "delete_post_runs",
    "delete_post_jobs",
    "delete_post",
)


def _cursor(before: Cursor | None) -> Params:
    """A page cursor as query parameters (both NULL: from the start)."""
    at, row_id = before if before is not None else (None, None)
    return {"before_at": at, "before_id": row_id}


class Missed(Exception):
    """A stage of a batch missed (a compare-and-set changed no row, or an insert clashed)."""

    def __init__(self, stage: str, cause: BaseException | None = None) -> None:
        super().__init__(stage)
        self.stage = stage
        self.cause = cause


# (stage, query name, one parameter dict per row, compare-and-set?)
Stage = tuple[str, str, list[Params], bool]


# A batch's writes expect a handful of distinct status sets: each token is built once.
_status_token = functools.cache(cas.status_token)


def _post_write(w: PostWrite) -> Params:
    params = rows.post_params(w.post)  # a fresh dict: the compare-and-set keys go in as well
    params["expected"] = _status_token(w.expected_statuses)
    return params


def _job_write(w: JobWrite) -> Params:
    params = rows.job_params(w.job)
    params["expected"] = _status_token(w.expected_statuses)
    params["expected_epoch"] = w.expected_epoch
    return params


def _stages_before_audits(batch: WriteBatch) -> list[Stage]:
    post_writes = [_post_write(w) for w in batch.post_writes]
    job_writes = [_job_write(w) for w in batch.job_writes]
    return [
        ("new_posts", "insert_post", [rows.post_params(p) for p in batch.new_posts], False),
        ("post_writes", "update_post", post_writes, True),
        ("new_jobs", "insert_job", [rows.job_params(j) for j in batch.new_jobs], False),
        ("job_writes", "update_job", job_writes, True),
        ("runs", "upsert_run", [rows.run_params(r) for r in batch.runs], False),
        ("logs", "insert_log", [rows.log_params(run, e) for run, e in batch.logs], False),
        (
            "screenshots",
            "insert_screenshot",
            [rows.screenshot_params(run, shot) for run, shot in batch.screenshots],
            False,
        ),
    ]


def _stages_after_audits(batch: WriteBatch, device_upsert: str) -> list[Stage]:
    tokens = [access_rows.operator_token_params(t) for t in batch.operator_tokens]
    enrollments = [access_rows.enrollment_params(e) for e in batch.enrollments]
    deleted: list[Params] = [{"post_id": post_id} for post_id in batch.deleted_posts]
    return [
        ("devices", device_upsert, [rows.device_params(d) for d in batch.devices], False),
        ("gates", "upsert_gate", [rows.gate_params(g) for g in batch.gates], False),
        ("operator_tokens", "upsert_operator_token", tokens, False),
        ("enrollments", "upsert_enrollment", enrollments, False),
        # Children first: no row is left without its parent.
        *((stage, stage, deleted, False) for stage in DELETE_POST_STAGES),
    ]


def write_plan(
    batch: WriteBatch, *, device_upsert: str = "upsert_device"
) -> tuple[list[Stage], list[Params], list[Stage]]:
    """A batch as statements, in the order every backend writes them: the stages before the
    audit rows, the audit rows, the stages after them. `device_upsert`: the statement that
    writes a device's row (SqlStore.DEVICE_UPSERT)."""
    audits = [rows.audit_params(e) for e in batch.audits]
    after = _stages_after_audits(batch, device_upsert)
    return _stages_before_audits(batch), audits, after


# Once scheduled, a post's status is derived from its jobs (before that, operators set it): the
# same set as coordinator/leasing/postbook.py's, which derives it in the core of one coordinator.
DERIVED_STATUSES = frozenset(
    {PostStatus.SCHEDULED, PostStatus.PUBLISHING, PostStatus.PUBLISHED, PostStatus.FAILED}
)


def posts_to_derive(batch: WriteBatch) -> list[str]:
    """The posts whose jobs the batch inserted or wrote (not those it deleted), in id order."""
    ids = {j.post_id for j in batch.new_jobs} | {w.job.post_id for w in batch.job_writes}
    return sorted(ids - set(batch.deleted_posts))


def derived_statuses(
    batch: WriteBatch, stored: Mapping[str, PostStatus], jobs: Sequence[Job]
) -> tuple[list[Params], list[AuditEvent]]:
    """What deriving the posts' status from ALL their jobs changes, as postbook.py would: the
    status writes of the posts whose stored status is derived and moves, and one
    POST_STATUS_CHANGED audit each. Timed as the batch's newest job write (the core's clock)."""
    written = batch.new_jobs + [w.job for w in batch.job_writes]
    now = max(j.updated_at for j in written)
    by_post: dict[str, list[Job]] = {}
    for job in jobs:
        by_post.setdefault(job.post_id, []).append(job)
    writes: list[Params] = []
    audits: list[AuditEvent] = []
    for post_id, old in sorted(stored.items()):
        if old not in DERIVED_STATUSES:
            continue
        new = derive_post_status(by_post.get(post_id, []))
        if new is not old:
            writes.append({"id": post_id, "status": new.value, "updated_at": now})
            details = {"from": old.value, "to": new.value}
            audits.append(AuditEvent("POST_STATUS_CHANGED", post_id, SYSTEM, now, details))
    return writes, audits


def post_task_params(task: PostTask) -> Params:
    try:
        args = rows.dumps(dict(task.args))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"post task {task.kind} of {task.post_id}: args not JSON: {exc}") from exc
    return {
        "shard": task.shard,
        "post_id": task.post_id,
        "kind": task.kind,
        "args": args,
        "created_at": task.created_at,
    }


def post_task_from_row(row: Row) -> PostTask:
    args = json.loads(row["args"])
    return PostTask(row["shard"], row["post_id"], row["kind"], args, row["id"], row["created_at"])


class SqlStore(ABC, Generic[Conn]):
    # How a batch writes a device's row: replacing it (one coordinator's memory is the whole
    # truth), or a dialect's statement merging it with the stored one.
    DEVICE_UPSERT: ClassVar[str] = "upsert_device"

    # -- what a dialect supplies ----------------------------------------------------------

    @abstractmethod
    async def _rows(self, conn: Conn, name: str, params: Params | None = None) -> list[Row]:
        """Run a named query on `conn`; its rows."""

    @abstractmethod
    async def _many(self, conn: Conn, stage: str, name: str, params: Sequence[Params]) -> None:
        """Run a named statement once per dict; a unique clash raises Missed(stage)."""

    @abstractmethod
    async def _cas(self, conn: Conn, stage: str, name: str, params: Sequence[Params]) -> None:
        """As _many, and Missed(stage) unless every statement changed its row."""

    @abstractmethod
    async def _insert_audits(self, conn: Conn, params: Sequence[Params]) -> list[int]:
        """Insert audit rows numbered after every stored one, consecutively; their seqs."""

    @abstractmethod
    async def _read(self, queries: Sequence[tuple[str, Params]]) -> list[list[Row]]:
        """Run named queries on one connection, all seeing the same committed state."""

    # -- writes ---------------------------------------------------------------------------

    async def _write(self, conn: Conn, batch: WriteBatch) -> list[int]:
        """Every row of the batch, inside the caller's transaction; the audit events' seqs."""
        before, audits, after = write_plan(batch, device_upsert=self.DEVICE_UPSERT)
        await self._run_stages(conn, before)
        seqs: list[int] = []
        if audits:
            seqs = await self._insert_audits(conn, audits)
        await self._run_stages(conn, after)
        return seqs

    async def _run_stages(self, conn: Conn, stages: list[Stage]) -> None:
        for stage, name, params, compare_and_set in stages:
            if params:
                run = self._cas if compare_and_set else self._many
                await run(conn, stage, name, params)

    async def _diagnose(self, conn: Conn, batch: WriteBatch, missed: Missed) -> ConcurrentUpdate:
        """Name the row that made the (rolled back) batch miss, from the rows as stored."""
        error: ConcurrentUpdate | None = None
        if missed.stage in ("new_posts", "post_writes"):
            ids = [p.id for p in batch.new_posts] + [w.post.id for w in batch.post_writes]
            found = await self._rows(conn, "post_states_in", {"ids": rows.dumps(ids)})
            stored = {r["id"]: PostStatus(r["status"]) for r in found}
            if missed.stage == "new_posts":
                error = cas.first_post_clash(batch.new_posts, stored)
            else:
                stored.update({p.id: p.status for p in batch.new_posts})
                error = cas.first_post_miss(batch.post_writes, stored)
        elif missed.stage in ("new_jobs", "job_writes"):
            jobs = batch.new_jobs + [w.job for w in batch.job_writes]
            found = await self._rows(
                conn,
                "job_states_in",
                {
                    "ids": rows.dumps([j.id for j in jobs]),
                    "keys": rows.dumps([j.idempotency_key for j in jobs]),
                },
            )
            if missed.stage == "new_jobs":
                keys = [r["idempotency_key"] for r in found]
                error = cas.first_job_clash(batch.new_jobs, [r["id"] for r in found], keys)
            else:
                states = {r["id"]: (JobStatus(r["status"]), r["lease_epoch"]) for r in found}
                states.update({j.id: (j.status, j.lease_epoch) for j in batch.new_jobs})
                error = cas.first_job_miss(batch.job_writes, states)
        if error is None:  # e.g. a job write that took another job's idempotency key
            cause = f": {missed.cause}" if missed.cause else ""
            error = ConcurrentUpdate(f"a batch clashed with stored rows in {missed.stage}{cause}")
        return error

    # -- reads ----------------------------------------------------------------------------

    async def _fetch(self, name: str, params: Params | None = None) -> list[Row]:
        return (await self._read([(name, params or {})]))[0]

    async def get_post(self, post_id: str) -> Post:
        found = await self._fetch("get_post", {"id": post_id})
        if not found:
            raise NotFound(f"post {post_id} not found")
        return rows.post_from_row(found[0])

    async def list_posts(
        self, *, status: PostStatus | None, limit: int, offset: int, before: Cursor | None = None
    ) -> list[Post]:
        params = {"status": None if status is None else status.value, "limit": limit}
        found = await self._fetch("list_posts", {**params, "offset": offset, **_cursor(before)})
        return [rows.post_from_row(r) for r in found]

    async def get_job(self, job_id: str) -> Job:
        found = await self._fetch("get_job", {"id": job_id})
        if not found:
            raise NotFound(f"job {job_id} not found")
        return rows.job_from_row(found[0])

    async def get_job_by_key(self, idempotency_key: str) -> Job | None:
        found = await self._fetch("get_job_by_key", {"key": idempotency_key})
        return rows.job_from_row(found[0]) if found else None

    async def jobs_for_post(self, post_id: str) -> list[Job]:
        return [
            rows.job_from_row(r) for r in await self._fetch("jobs_for_post", {"post_id": post_id})
        ]

    async def jobs_for_posts(self, post_ids: Sequence[str]) -> list[Job]:
        found = await self._fetch("jobs_for_posts", {"post_ids": rows.dumps(list(post_ids))})
        return [rows.job_from_row(r) for r in found]

    async def list_jobs(
        self, flt: JobFilter, *, limit: int, offset: int, before: Cursor | None = None
    ) -> list[Job]:
        params = {
            "status": None if flt.status is None else flt.status.value,
            "platform": flt.platform,
            "account": flt.account,
            "post_id": flt.post_id,
            "device_id": flt.device_id,
            "limit": limit,
            "offset": offset,
            **_cursor(before),
        }
        return [rows.job_from_row(r) for r in await self._fetch("list_jobs", params)]

    async def load_active_jobs(self) -> list[Job]:
        statuses = rows.dumps(sorted(s.value for s in ACTIVE_JOB_STATUSES))
        found = await self._fetch("load_active_jobs", {"statuses": statuses})
        return [rows.job_from_row(r) for r in found]

    async def get_runs(self, job_id: str) -> list[Run]:
        params = {"job_id": job_id}
        found_runs, logs, shots = await self._read(
            [("runs_for_job", params), ("logs_for_job", params), ("screenshots_for_job", params)]
        )
        runs = [rows.run_from_row(r) for r in found_runs]
        by_id = {run.id: run for run in runs}
        for row in logs:
            by_id[row["run_id"]].logs.append(rows.log_from_row(row))
        for row in shots:
            by_id[row["run_id"]].screenshots.append(rows.screenshot_from_row(row))
        return runs

    async def list_audit(
        self, *, since: float | None, subject_id: str, action: str, after_seq: int, limit: int
    ) -> list[AuditEvent]:
        params: dict[str, Any] = {
            "since": since,
            "subject_id": subject_id,
            "action": action,
            "after_seq": after_seq,
            "limit": limit,
        }
        return [rows.audit_from_row(r) for r in await self._fetch("list_audit", params)]

    async def last_audit_seq(self) -> int:
        return int((await self._fetch("last_audit_seq"))[0]["n"])

    async def list_devices(self) -> list[DeviceRecord]:
        return [rows.device_from_row(r) for r in await self._fetch("list_devices")]

    async def list_gates(self) -> list[GateRecord]:
        return [rows.gate_from_row(r) for r in await self._fetch("list_gates")]

    async def count_jobs(self) -> Mapping[tuple[JobStatus, str], int]:
        found = await self._fetch("count_jobs")
        return {(JobStatus(r["status"]), r["platform"]): r["n"] for r in found}

    async def count_commits_since(self, platform: str, account: str, since: float) -> int:
        """Runs granted a commit permit that *started* at or after `since` (see queries.sql)."""
        params = {"platform": platform, "account": account, "since": since}
        found = await self._fetch("count_commits_since", params)
        return int(found[0]["n"])

    async def list_operator_tokens(self) -> list[OperatorToken]:
        found = await self._fetch("list_operator_tokens")
        return [access_rows.operator_token_from_row(r) for r in found]

    async def list_enrollments(self) -> list[DeviceEnrollment]:
        return [access_rows.enrollment_from_row(r) for r in await self._fetch("list_enrollments")]
