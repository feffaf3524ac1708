"""SqliteStore: the Store on one aiosqlite connection (aiosqlite runs it in its own thread).

Durability: WAL journal with synchronous=NORMAL. COMMIT returns once the transaction is appended
to the WAL file (in the OS page cache), so a killed process (SIGKILL, a crash) loses no
committed transaction; only an OS crash or power cut can lose the last few, as fsync waits for
checkpoints. That trade buys group commits without an fsync each.

Every operation holds one lock: a read must not see a batch that is half written on the same
connection. apply() runs the batch (sqlbase.py's stages) in one BEGIN IMMEDIATE transaction with
one executemany per kind of row, learns from rowcounts whether a compare-and-set missed, and only
then (rolled back) asks the database which row moved. sqlite3 errors are translated here, once:
a unique clash is ConcurrentUpdate, anything else StoreError.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar, cast

import aiosqlite
import anyio

from coordinator.errors import StoreError
from coordinator.store.base import WriteBatch, refuse_post_tasks
from coordinator.store.migrations import apply_migrations, load_migrations, load_queries
from coordinator.store.rows import Params, Row
from coordinator.store.sqlbase import Missed, SqlStore, Stage, write_plan

DEFAULT_BUSY_TIMEOUT_MS = 5_000
_UNIQUE_ERRORS = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})
_QUERIES = load_queries()
T = TypeVar("T")


@contextlib.contextmanager
def _translated(doing: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"sqlite failed to {doing}: {exc}") from exc


async def _in_thread(conn: aiosqlite.Connection, fn: Callable[..., T], *args: object) -> T:
    """`fn(sqlite3_connection, *args)` on the connection's own thread: one hand-off.
    (aiosqlite's `_execute` is what its public methods use; it has no public name.)"""
    result = await conn._execute(fn, conn._conn, *args)  # type: ignore[no-untyped-call]
    return cast(T, result)


def _write_batch(
    db: sqlite3.Connection,
    queries: Mapping[str, str],
    before: Sequence[Stage],
    audits: Sequence[Params],
    after: Sequence[Stage],
) -> list[int]:
    """BEGIN IMMEDIATE, one executemany per kind of row, COMMIT, on the connection's thread;
    the audit rows' seqs. Any error rolls it back and is raised (a missed compare-and-set or a
    unique clash as Missed, for the caller to diagnose)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        _write_stages(db, queries, before)
        seqs: list[int] = []
        if audits:
            _execute_many(db, queries, "audits", "insert_audit", audits)
            # One write lock, no explicit seqs: AUTOINCREMENT handed out consecutive numbers.
            last = int(db.execute(queries["last_seq"]).fetchone()[0])
            seqs = list(range(last - len(audits) + 1, last + 1))
        _write_stages(db, queries, after)
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # "no transaction is active": nothing to undo
            db.execute("ROLLBACK")
        raise
    return seqs


def _write_stages(
    db: sqlite3.Connection, queries: Mapping[str, str], stages: Sequence[Stage]
) -> None:
    for stage, name, params, compare_and_set in stages:
        if not params:
            continue
        changed = _execute_many(db, queries, stage, name, params)
        if compare_and_set and changed != len(params):
            raise Missed(stage)


def _execute_many(
    db: sqlite3.Connection,
    queries: Mapping[str, str],
    stage: str,
    name: str,
    params: Sequence[Params],
) -> int:
    """executemany; returns the number of rows changed."""
    try:
        return db.executemany(queries[name], params).rowcount
    except sqlite3.IntegrityError as exc:
        if exc.sqlite_errorname in _UNIQUE_ERRORS:
            raise Missed(stage, exc) from exc
        # A foreign key (a row whose parent does not exist), NOT NULL...: a caller's bug.
        raise StoreError(f"{stage}: {exc} ({exc.sqlite_errorname})") from exc


class SqliteStore(SqlStore[aiosqlite.Connection]):
    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
    ) -> None:
        self._path = os.fspath(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: aiosqlite.Connection | None = None
        self._lock = anyio.Lock(fast_acquire=True)  # a free lock: no event-loop turn
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
        refuse_post_tasks(batch)
        conn = self._require()
        async with self._lock:
            # Once BEGIN is sent the transaction ends here, committed or rolled back, even if the
            # caller is cancelled: the connection must not be left inside it.
            with anyio.CancelScope(shield=True):
                seqs = await self._apply_locked(conn, batch)
        for event, seq in zip(batch.audits, seqs, strict=True):
            event.seq = seq

    async def _apply_locked(self, conn: aiosqlite.Connection, batch: WriteBatch) -> list[int]:
        before, audits, after = write_plan(batch)  # rows -> parameters here, on the event loop
        try:
            # The whole transaction is one call on the connection's thread (one hand-off per
            # commit, not one per statement): a cancelled caller cannot leave it half done.
            return await _in_thread(conn, _write_batch, self._q, before, audits, after)
        except Missed as missed:
            with _translated("find the row a batch missed"):
                raise await self._diagnose(conn, batch, missed) from missed.cause
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite failed to apply a batch: {exc}") from exc

    # SqlStore's statement-at-a-time writes (apply() above writes a batch in one call).

    async def _many(
        self, conn: aiosqlite.Connection, stage: str, name: str, params: Sequence[Params]
    ) -> None:
        await _in_thread(conn, _execute_many, self._q, stage, name, params)

    async def _cas(
        self, conn: aiosqlite.Connection, stage: str, name: str, params: Sequence[Params]
    ) -> None:
        changed = await _in_thread(conn, _execute_many, self._q, stage, name, params)
        if changed != len(params):
            raise Missed(stage)

    async def _insert_audits(
        self, conn: aiosqlite.Connection, params: Sequence[Params]
    ) -> list[int]:
        await self._many(conn, "audits", "insert_audit", params)
        last = next(iter(await conn.execute_fetchall(self._q["last_seq"])))[0]
        return list(range(last - len(params) + 1, last + 1))

    # -- reads ----------------------------------------------------------------------------

    async def _rows(
        self, conn: aiosqlite.Connection, name: str, params: Params | None = None
    ) -> list[Row]:
        return list(await conn.execute_fetchall(self._q[name], params or {}))

    async def _read(self, queries: Sequence[tuple[str, Params]]) -> list[list[Row]]:
        conn = self._require()
        async with self._lock:
            with _translated(f"run {', '.join(name for name, _ in queries)}"):
                return [await self._rows(conn, name, params) for name, params in queries]
