"""SqliteStore: the Store on one aiosqlite connection (aiosqlite runs it in its own thread).

Durability: WAL journal with synchronous=NORMAL. COMMIT returns once the transaction is appended
to the WAL file (in the OS page cache), so a killed process (SIGKILL, a crash) loses no
committed transaction; only an OS crash or power cut can lose the last few, as fsync waits for
checkpoints. That trade buys group commits without an fsync each.

Every operation holds one lock: a read must not see a batch that is half written on the same
connection. apply() runs the batch in one BEGIN IMMEDIATE transaction with one executemany per
kind of row, learns from rowcounts whether a compare-and-set missed, and only then (rolled back)
asks the database which row moved. sqlite3 errors are translated here, once: a unique clash is
ConcurrentUpdate, anything else StoreError.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

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
from coordinator.store import access_rows, cas, rows
from coordinator.store.base import Cursor, JobFilter, WriteBatch
from coordinator.store.migrations import apply_migrations, load_migrations, load_queries
from coordinator.store.rows import Params

DEFAULT_BUSY_TIMEOUT_MS = 5_000
_UNIQUE_ERRORS = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})
_QUERIES = load_queries()
# DeletePost's statements, in order: a post's screenshot and step-log rows, runs, jobs, the post.
DELETE_POST_STAGES = (
    "delete_post_screenshots",
    "delete_post_logs",
    "delete_post_runs",
    "delete_post_jobs",
    "delete_post",
)


class _Missed(Exception):
    """A stage of a batch missed (a CAS rowcount came up short, or an insert clashed)."""

    def __init__(self, stage: str, cause: sqlite3.Error | None = None) -> None:
        super().__init__(stage)
        self.stage = stage
        self.cause = cause


def _cursor(before: Cursor | None) -> dict[str, Any]:
    """A page cursor as query parameters (both NULL: from the start)."""
    at, row_id = before if before is not None else (None, None)
    return {"before_at": at, "before_id": row_id}


@contextlib.contextmanager
def _translated(doing: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"sqlite failed to {doing}: {exc}") from exc


class SqliteStore:
    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
    ) -> None:
        self._path = os.fspath(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()
        self._q = _QUERIES

    @property
    def path(self) -> str:
        return self._path

    async def open(self) -> None:
        if self._conn is not None:
            return
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        with _translated(f"open {self._path}"):
            # isolation_level=None: no implicit transactions; apply() says BEGIN IMMEDIATE itself.
            conn = await aiosqlite.connect(self._path, isolation_level=None)
            try:
                conn.row_factory = sqlite3.Row
                await self._configure(conn)
                await apply_migrations(conn, self._q, load_migrations())
            except BaseException:
                await conn.close()
                raise
        self._conn = conn

    async def _configure(self, conn: aiosqlite.Connection) -> None:
        mode = await conn.execute_fetchall("PRAGMA journal_mode = WAL")
        if self._path != ":memory:" and next(iter(mode))[0] != "wal":
            # Without WAL, synchronous=NORMAL would not keep the durability promise above.
            raise StoreError(f"{self._path}: SQLite could not switch to WAL mode (network FS?)")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        async with self._lock:  # let a batch in flight finish first
            with _translated("close"):
                await conn.execute("PRAGMA optimize")
                await conn.close()

    def _require(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreError(f"the store {self._path} is not open")
        return self._conn

    # -- writes ---------------------------------------------------------------------------

    async def apply(self, batch: WriteBatch) -> None:
        if not batch:
            return
        conn = self._require()
        async with self._lock:
            # Once BEGIN is sent the transaction ends here, committed or rolled back, even if the
            # caller is cancelled: the connection must not be left inside it.
            with anyio.CancelScope(shield=True):
                seqs = await self._apply_locked(conn, batch)
        for event, seq in zip(batch.audits, seqs, strict=True):
            event.seq = seq

    async def _apply_locked(self, conn: aiosqlite.Connection, batch: WriteBatch) -> list[int]:
        try:
            try:
                await conn.execute("BEGIN IMMEDIATE")
                seqs = await self._write(conn, batch)
                await conn.execute("COMMIT")
                return seqs
            except BaseException:
                # Unconditional: after a native asyncio cancel the statement we were awaiting
                # (even BEGIN) may still be queued on the connection's thread, so in_transaction
                # cannot be trusted yet. The thread runs ROLLBACK after it, in order; "no
                # transaction is active" (the COMMIT got through) is harmless.
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")
                raise
        except _Missed as missed:
            with _translated("find the row a batch missed"):
                raise await self._diagnose(conn, batch, missed) from missed.cause
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite failed to apply a batch: {exc}") from exc

    async def _many(
        self, conn: aiosqlite.Connection, stage: str, sql: str, params: Sequence[Params]
    ) -> int:
        """executemany; returns the number of rows changed."""
        try:
            cursor = await conn.executemany(sql, params)
        except sqlite3.IntegrityError as exc:
            if exc.sqlite_errorname in _UNIQUE_ERRORS:
                raise _Missed(stage, exc) from exc
            # A foreign key (a row whose parent does not exist), NOT NULL...: a caller's bug.
            raise StoreError(f"{stage}: {exc} ({exc.sqlite_errorname})") from exc
        return cursor.rowcount

    async def _write(self, conn: aiosqlite.Connection, batch: WriteBatch) -> list[int]:
        q = self._q
        if batch.new_posts:
            await self._many(
                conn, "new_posts", q["insert_post"], [rows.post_params(p) for p in batch.new_posts]
            )
        if batch.post_writes:
            params = [
                {**rows.post_params(w.post), "expected": cas.status_token(w.expected_statuses)}
                for w in batch.post_writes
            ]
            if await self._many(conn, "post_writes", q["update_post"], params) != len(params):
                raise _Missed("post_writes")
        if batch.new_jobs:
            await self._many(
                conn, "new_jobs", q["insert_job"], [rows.job_params(j) for j in batch.new_jobs]
            )
        if batch.job_writes:
            params = [
                {
                    **rows.job_params(w.job),
                    "expected": cas.status_token(w.expected_statuses),
                    "expected_epoch": w.expected_epoch,
                }
                for w in batch.job_writes
            ]
            if await self._many(conn, "job_writes", q["update_job"], params) != len(params):
                raise _Missed("job_writes")
        if batch.runs:
            await self._many(
                conn, "runs", q["upsert_run"], [rows.run_params(r) for r in batch.runs]
            )
        if batch.logs:
            params = [rows.log_params(run_id, entry) for run_id, entry in batch.logs]
            await self._many(conn, "logs", q["insert_log"], params)
        if batch.screenshots:
            params = [rows.screenshot_params(run_id, shot) for run_id, shot in batch.screenshots]
            await self._many(conn, "screenshots", q["insert_screenshot"], params)
        seqs: list[int] = []
        if batch.audits:
            params = [rows.audit_params(e) for e in batch.audits]
            await self._many(conn, "audits", q["insert_audit"], params)
            # One write lock, no explicit seqs: AUTOINCREMENT handed out consecutive numbers.
            last = next(iter(await conn.execute_fetchall(q["last_seq"])))[0]
            seqs = list(range(last - len(params) + 1, last + 1))
        if batch.devices:
            params = [rows.device_params(d) for d in batch.devices]
            await self._many(conn, "devices", q["upsert_device"], params)
        if batch.gates:
            await self._many(
                conn, "gates", q["upsert_gate"], [rows.gate_params(g) for g in batch.gates]
            )
        if batch.operator_tokens:
            params = [access_rows.operator_token_params(t) for t in batch.operator_tokens]
            await self._many(conn, "operator_tokens", q["upsert_operator_token"], params)
        if batch.enrollments:
            params = [access_rows.enrollment_params(e) for e in batch.enrollments]
            await self._many(conn, "enrollments", q["upsert_enrollment"], params)
        if batch.deleted_posts:
            params = [{"post_id": post_id} for post_id in batch.deleted_posts]
            for stage in DELETE_POST_STAGES:  # children first: no row is left without its parent
                await self._many(conn, stage, q[stage], params)
        return seqs

    async def _diagnose(
        self, conn: aiosqlite.Connection, batch: WriteBatch, missed: _Missed
    ) -> ConcurrentUpdate:
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

    @staticmethod
    async def _rows(
        conn: aiosqlite.Connection, name: str, params: Mapping[str, Any] | None = None
    ) -> list[sqlite3.Row]:
        return list(await conn.execute_fetchall(_QUERIES[name], params or {}))

    async def _fetch(self, name: str, params: Mapping[str, Any] | None = None) -> list[sqlite3.Row]:
        conn = self._require()
        async with self._lock:
            with _translated(f"run {name}"):
                return await self._rows(conn, name, params)

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
            **_cursor(before),
            "status": None if flt.status is None else flt.status.value,
            "platform": flt.platform,
            "account": flt.account,
            "post_id": flt.post_id,
            "device_id": flt.device_id,
            "limit": limit,
            "offset": offset,
        }
        return [rows.job_from_row(r) for r in await self._fetch("list_jobs", params)]

    async def load_active_jobs(self) -> list[Job]:
        statuses = rows.dumps(sorted(s.value for s in ACTIVE_JOB_STATUSES))
        found = await self._fetch("load_active_jobs", {"statuses": statuses})
        return [rows.job_from_row(r) for r in found]

    async def get_runs(self, job_id: str) -> list[Run]:
        conn = self._require()
        params = {"job_id": job_id}
        async with self._lock:
            with _translated("read runs"):
                runs = [
                    rows.run_from_row(r) for r in await self._rows(conn, "runs_for_job", params)
                ]
                logs = await self._rows(conn, "logs_for_job", params)
                shots = await self._rows(conn, "screenshots_for_job", params)
        by_id = {run.id: run for run in runs}
        for row in logs:
            by_id[row["run_id"]].logs.append(rows.log_from_row(row))
        for row in shots:
            by_id[row["run_id"]].screenshots.append(rows.screenshot_from_row(row))
        return runs

    async def list_audit(
        self, *, since: float | None, subject_id: str, action: str, after_seq: int, limit: int
    ) -> list[AuditEvent]:
        params = {
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
        return int(found[0][0])

    async def list_operator_tokens(self) -> list[OperatorToken]:
        found = await self._fetch("list_operator_tokens")
        return [access_rows.operator_token_from_row(r) for r in found]

    async def list_enrollments(self) -> list[DeviceEnrollment]:
        return [access_rows.enrollment_from_row(r) for r in await self._fetch("list_enrollments")]
