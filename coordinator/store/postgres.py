"""PostgresStore: the Store on a pool of asyncpg connections.

The SQL is data (coordinator/store/sql/postgres/): the SQLite store's queries by the same names
and the same :named parameters, which are numbered $1, $2... once, when loaded. What a batch
writes, and in what order, is sqlbase.py's, shared with SQLite.

Writes: one batch at a time per process (a lock, as SQLite's), each in one transaction on the
one connection kept for writing; reads run on the pool's connections alongside. A
compare-and-set statement that changes no row raises SQLSTATE PRCAS from the server
(0001_initial.sql: postroom_missed), so a whole stage is one pipelined executemany and still
tells a miss. Audit seqs are max + 1 under a table lock held to commit, so they are consecutive
and in commit order even with several processes writing. A batch once started is seen through
to COMMIT or ROLLBACK in its own task, even if the caller is cancelled (asyncio.shield; close()
waits for it).

asyncpg and connection errors are translated here, once: a unique clash is ConcurrentUpdate,
anything else StoreError.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
import asyncpg  # type: ignore[import-untyped]

from coordinator.errors import StoreError
from coordinator.store.base import WriteBatch
from coordinator.store.migrations import (
    POSTGRES_SQL_PACKAGE,
    check_known,
    load_migrations,
    load_queries,
)
from coordinator.store.rows import Params, Row
from coordinator.store.shards import Fence, hold
from coordinator.store.sqlbase import Missed, SqlStore

DEFAULT_POOL_MAX_SIZE = 10
DEFAULT_CONNECT_TIMEOUT_S = 10.0
CAS_MISSED_SQLSTATE = "PRCAS"
DEFAULT_LOCK_WAIT_S = 2.0
# The server ends a session that sits in an open transaction this long waiting for its client:
# a coordinator paused (SIGSTOP) mid-batch would otherwise keep its shard rows locked, and no
# standby could ever take them over. Half the default ownership TTL (coordinator/cluster/); a
# live coordinator sends a batch's statements back to back.
DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_S = 3.0
LOCK_POLL_S = 0.1
DATABASE_LOCK_KEY = int.from_bytes(b"postroom", "big")  # one advisory lock per database
MIGRATION_LOCK_KEY = int.from_bytes(b"prmigrat", "big")  # held by a migration's transaction
_PARAM = re.compile(r"(?<![:\w]):(\w+)")
_COMMENT = re.compile(r"--[^\n]*")
# What asyncpg raises: server errors, misuse or a closed connection, its own inconsistencies
# (seen when the server drops a connection mid-transaction), and the network's.
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class Query:
    """A named query with its :names numbered: `sql` says $1, $2... for `names` in order."""

    sql: str
    names: tuple[str, ...]

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


def compile_query(text: str) -> Query:
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    # Comments go first: a :name mentioned in one is not a parameter.
    return Query(_PARAM.sub(number, _COMMENT.sub("", text)).strip(), tuple(names))


_QUERIES = {name: compile_query(sql) for name, sql in load_queries(POSTGRES_SQL_PACKAGE).items()}


def redacted(url: str) -> str:
    """The URL without its password (user:PASSWORD@ or ?password=), for messages and logs."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in pairs if k != "password"]
    if parts.password is None and len(query) == len(pairs):
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=f"{user}{netloc}", query=urlencode(query)).geturl()


def _lock_key(key: int) -> Params:
    """An advisory lock's bigint key as its two halves, as pg_locks shows them."""
    return {"hi": key >> 32, "lo": key & 0xFFFFFFFF}


@contextlib.contextmanager
def _translated(doing: str) -> Iterator[None]:
    try:
        yield
    except _DRIVER_ERRORS as exc:
        raise StoreError(f"PostgreSQL failed to {doing}: {exc}") from exc


class PostgresStore(SqlStore[Any]):
    def __init__(
        self,
        url: str,
        *,
        pool_max_size: int = DEFAULT_POOL_MAX_SIZE,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        exclusive: bool = False,
        lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
        idle_in_transaction_timeout_s: float | None = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_S,
    ) -> None:
        """`exclusive`: its writing connection holds a lock on the database for its whole
        session, so a second exclusive store refuses to open until the first is gone; a
        predecessor just killed gets `lock_wait_s` to let go. The coordinator no longer uses it
        (several share a database, fenced by shard leases: coordinator/cluster/).
        `idle_in_transaction_timeout_s`: see DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_S."""
        # SQLAlchemy-style "postgresql+asyncpg://" names the same server.
        self._url = re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url)
        self._pool_max_size = pool_max_size
        self._connect_timeout_s = connect_timeout_s
        self._exclusive = exclusive
        self._lock_wait_s = lock_wait_s
        self._settings = (
            {}
            if idle_in_transaction_timeout_s is None
            else {
                "idle_in_transaction_session_timeout": f"{idle_in_transaction_timeout_s * 1000:.0f}"
            }
        )
        self._pool: Any = None
        # Batches go one at a time through a connection of their own, kept open: no pool
        # acquire and reset per batch.
        self._writer: Any = None
        self._write_lock = anyio.Lock()
        self._q = _QUERIES

    @property
    def url(self) -> str:
        """The database's URL, without its password."""
        return redacted(self._url)

    async def open(self) -> None:
        if self._pool is not None:
            return
        with _translated(f"open {self.url}"):
            pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=max(1, self._pool_max_size - 1),  # and one for writing
                timeout=self._connect_timeout_s,
                server_settings=self._settings,
            )
            try:
                async with pool.acquire() as conn:
                    await self._migrate(conn)
                if self._exclusive:  # refuse now, not at the first write
                    self._writer = await self._connect()
            except BaseException:
                pool.terminate()
                raise
        self._pool = pool

    async def _migrate(self, conn: Any) -> list[int]:
        """Apply, in one transaction, every migration not yet recorded; the versions applied."""
        migrations = load_migrations(POSTGRES_SQL_PACKAGE, split=False)
        done: list[int] = []
        async with conn.transaction():
            # Several coordinators starting at once on a fresh database: one migrates, the
            # others wait here, then find every version applied.
            await self._rows(conn, "lock_migrations", _lock_key(MIGRATION_LOCK_KEY))
            await conn.execute(self._q["create_schema_migrations"].sql)
            await conn.execute(self._q["lock_schema_migrations"].sql)
            applied = {r["version"] for r in await self._rows(conn, "applied_migrations")}
            check_known(applied, migrations)
            for migration in migrations:
                if migration.version not in applied:
                    await conn.execute(migration.statements[0])  # a whole script
                    record = {"version": migration.version, "applied_at": time.time()}
                    await self._many(conn, "migrations", "record_migration", [record])
                    done.append(migration.version)
        return done

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        async with self._write_lock:  # let a batch in flight finish first
            writer, self._writer = self._writer, None
            with _translated("close"):
                if writer is not None:
                    await writer.close()
                await pool.close()

    def _require(self) -> Any:
        if self._pool is None:
            raise StoreError(f"the store {self.url} is not open")
        return self._pool

    # -- writes ---------------------------------------------------------------------------

    async def apply(self, batch: WriteBatch) -> None:
        await self._apply(batch, None)

    async def apply_fenced(self, batch: WriteBatch, fence: Fence) -> None:
        """apply(batch), only while every lease of the fence stands (shards.py); else
        OwnershipLost and nothing written."""
        fence.check_batch(batch)
        await self._apply(batch, fence)

    async def _apply(self, batch: WriteBatch, fence: Fence | None) -> None:
        if not batch:
            return
        self._require()
        seqs = await asyncio.shield(self._apply_alone(batch, fence))
        for event, seq in zip(batch.audits, seqs, strict=True):
            event.seq = seq

    async def _apply_alone(self, batch: WriteBatch, fence: Fence | None) -> list[int]:
        async with self._write_lock:
            with _translated("apply a batch"):
                conn = await self._writer_connection()
                try:
                    async with conn.transaction():
                        if fence is not None:
                            await hold(fence, functools.partial(self._rows, conn))
                        return await self._write(conn, batch)
                except Missed as missed:  # rolled back by now
                    raise await self._diagnose(conn, batch, missed) from missed.cause

    async def _writer_connection(self) -> Any:
        """The writing connection, made again if the server dropped it (a restart, a reaper)."""
        if self._writer is None or self._writer.is_closed():
            self._writer = None
            self._writer = await self._connect()
        return self._writer

    async def _connect(self) -> Any:
        conn = await asyncpg.connect(
            self._url, timeout=self._connect_timeout_s, server_settings=self._settings
        )
        try:
            if self._exclusive:
                await self._lock_database(conn)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _lock_database(self, conn: Any) -> None:
        """Take the one-coordinator lock for this session, or StoreError naming its holder.

        A session-level advisory lock: the server lets go the moment the holder's connection
        ends, a crash included, and a stopped (SIGSTOP) holder keeps it. Like the prepared
        statements it needs session pooling if a PgBouncer is in between."""
        key = _lock_key(DATABASE_LOCK_KEY)
        deadline = time.monotonic() + self._lock_wait_s
        while not (await self._rows(conn, "try_lock_database", key))[0]["ok"]:
            if time.monotonic() >= deadline:
                holders = [
                    f"server pid {r['pid']} for {r['client']}"
                    for r in await self._rows(conn, "database_lock_holder", key)
                ]
                raise StoreError(
                    f"another coordinator is using {self.url} ({', '.join(holders) or 'gone'}); "
                    "one coordinator per database"
                )
            await anyio.sleep(LOCK_POLL_S)

    async def _many(self, conn: Any, stage: str, name: str, params: Sequence[Params]) -> None:
        query = self._q[name]
        try:
            await conn.executemany(query.sql, [query.args(p) for p in params])
        except asyncpg.UniqueViolationError as exc:
            raise Missed(stage, exc) from exc
        except asyncpg.IntegrityConstraintViolationError as exc:
            # A foreign key (a row whose parent does not exist), NOT NULL...: a caller's bug.
            raise StoreError(f"{stage}: {exc} ({exc.sqlstate})") from exc
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == CAS_MISSED_SQLSTATE:
                raise Missed(stage) from exc
            raise

    async def _cas(self, conn: Any, stage: str, name: str, params: Sequence[Params]) -> None:
        # The statement itself raises PRCAS when it changes no row (queries.sql).
        await self._many(conn, stage, name, params)

    async def _insert_audits(self, conn: Any, params: Sequence[Params]) -> list[int]:
        await conn.execute(self._q["lock_audit"].sql)
        first = int((await self._rows(conn, "last_audit_seq"))[0]["n"]) + 1
        seqs = list(range(first, first + len(params)))
        numbered = [{**p, "seq": seq} for p, seq in zip(params, seqs, strict=True)]
        await self._many(conn, "audits", "insert_audit", numbered)
        return seqs

    # -- reads ----------------------------------------------------------------------------

    async def run(self, name: str, params: Params) -> list[Row]:
        """One named statement (queries.sql) on its own, committed; the rows it returns."""
        return await self._fetch(name, params)

    async def _rows(self, conn: Any, name: str, params: Params | None = None) -> list[Row]:
        query = self._q[name]
        return list(await conn.fetch(query.sql, *query.args(params or {})))

    async def _read(self, queries: Sequence[tuple[str, Params]]) -> list[list[Row]]:
        pool = self._require()
        with _translated(f"run {', '.join(name for name, _ in queries)}"):
            async with pool.acquire() as conn:
                if len(queries) == 1:
                    return [await self._rows(conn, *queries[0])]
                # Several queries answer one question: one snapshot for all of them.
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    return [await self._rows(conn, name, params) for name, params in queries]
