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

Several coordinators each owning some shards (phase 2, "spread"): apply_fenced(derive_posts=True)
re-derives, inside the batch's transaction, the status of every post whose jobs it wrote from
ALL the post's jobs, whichever coordinator wrote them. The post rows are locked before the
batch's writes (in id order), and its jobs read after them by a statement of its own: under
READ COMMITTED that sees every batch that held the lock before, so of two coordinators
finishing a post's last two jobs at once, the second to commit sees both: PUBLISHED.

Post tasks (base.py: PostTask) are rows of post_tasks; a batch inserting some notifies
`postroom_post_tasks` with each shard at commit, which listen_post_tasks() hands on. A batch
writing operator tokens or device enrollments notifies `postroom_credentials`
(listen_credentials(): every coordinator reloads them, coordinator/cluster/credentials.py).
A device's row is merged, not replaced (queries.sql: merge_device): several coordinators write
it, each from its own memory, and one's stale login badges must not undo another's newer ones;
last seen is the latest any of them wrote. ONLINE/OFFLINE is not stored: each coordinator
answers ListDevices from its own sessions (reads.py devices_from_store, `online`). Under
"spread" a worker's one stream is fanned out to every owner (cluster/fanout.py), and any leg
ending ends them all, so a device is ONLINE at every serving coordinator while any has its
stream, and OFFLINE at all once it is gone (they disagree only for the moment a stream takes to
end or reconnect). A DEVICE_DISCONNECTED row from one owner therefore never hides a stream
another holds: only last seen and the badges are written, both merged.

asyncpg and connection errors are translated here, once: a unique clash is ConcurrentUpdate,
anything else StoreError.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
import asyncpg  # type: ignore[import-untyped]
from anyio.streams.memory import MemoryObjectReceiveStream

from coordinator.domain import AuditEvent, PostStatus
from coordinator.errors import StoreError
from coordinator.store import rows
from coordinator.store.base import PostTask, WriteBatch
from coordinator.store.migrations import (
    POSTGRES_SQL_PACKAGE,
    check_known,
    load_migrations,
    load_queries,
)
from coordinator.store.rows import Params, Row
from coordinator.store.shards import Fence, hold
from coordinator.store.sqlbase import (
    Missed,
    SqlStore,
    derived_statuses,
    post_task_from_row,
    post_task_params,
    posts_to_derive,
)

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
POST_TASKS_CHANNEL = "postroom_post_tasks"
CREDENTIALS_CHANNEL = "postroom_credentials"
DEFAULT_PENDING_POST_TASKS = 500
# Notices a listener has not read yet; more are dropped: each only says "look at shard N", and
# the consumer scans its shards anyway.
DEFAULT_NOTICE_BUFFER = 256
T = TypeVar("T")
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
    DEVICE_UPSERT = "merge_device"

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

    async def apply_fenced(
        self, batch: WriteBatch, fence: Fence, *, derive_posts: bool = False
    ) -> None:
        """apply(batch), only while every lease of the fence stands (shards.py); else
        OwnershipLost and nothing written. With `derive_posts`, the status of each post whose
        jobs the batch wrote is derived from all its jobs in the same transaction (module
        docstring); its POST_STATUS_CHANGED audits are appended to batch.audits, seqs set."""
        fence.check_batch(batch)
        await self._apply(batch, fence, derive_posts)

    async def _apply(self, batch: WriteBatch, fence: Fence | None, derive: bool = False) -> None:
        if not batch:
            return
        self._require()
        tasks = [post_task_params(t) for t in batch.post_tasks]  # a bad args is refused here
        seqs, derived = await asyncio.shield(self._apply_alone(batch, fence, derive, tasks))
        for event, seq in zip(batch.audits, seqs, strict=True):
            event.seq = seq
        batch.audits += derived

    async def _apply_alone(
        self, batch: WriteBatch, fence: Fence | None, derive: bool, tasks: list[Params]
    ) -> tuple[list[int], list[AuditEvent]]:
        async with self._write_lock:
            with _translated("apply a batch"):
                conn = await self._writer_connection()
                try:
                    async with conn.transaction():
                        if fence is not None:
                            await hold(fence, functools.partial(self._rows, conn))
                        locked = await self._lock_posts(conn, batch) if derive else []
                        seqs = await self._write(conn, batch)
                        derived = await self._derive_posts(conn, batch, locked) if locked else []
                        await self._write_post_tasks(conn, batch, tasks)
                        if batch.operator_tokens or batch.enrollments:
                            await self._rows(conn, "notify_credentials")  # sent at commit
                        return seqs, derived
                except Missed as missed:  # rolled back by now
                    raise await self._diagnose(conn, batch, missed) from missed.cause

    async def _lock_posts(self, conn: Any, batch: WriteBatch) -> list[str]:
        """Before the batch's writes: lock the posts to derive, with those it writes, in id
        order, so every transaction locks posts in one order and all before the audit table
        (sqlbase.py writes audits mid-batch): no cycle. The ids to derive."""
        ids = posts_to_derive(batch)
        if ids:
            every = sorted({*ids, *(w.post.id for w in batch.post_writes)})
            await self._rows(conn, "lock_posts", {"ids": rows.dumps(every)})
        return ids

    async def _derive_posts(self, conn: Any, batch: WriteBatch, ids: list[str]) -> list[AuditEvent]:
        """After the batch's writes: the status of the posts `ids` derived from all their jobs;
        the audits of those whose status moved."""
        # Statements of their own after the lock: they see what its earlier holders committed.
        states = await self._rows(conn, "post_states_in", {"ids": rows.dumps(ids)})
        stored = {r["id"]: PostStatus(r["status"]) for r in states}
        found = await self._rows(conn, "jobs_for_posts", {"post_ids": rows.dumps(sorted(stored))})
        writes, audits = derived_statuses(batch, stored, [rows.job_from_row(r) for r in found])
        if writes:
            await self._many(conn, "derived_posts", "set_post_status", writes)
            seqs = await self._insert_audits(conn, [rows.audit_params(a) for a in audits])
            for event, seq in zip(audits, seqs, strict=True):
                event.seq = seq
        return audits

    async def _write_post_tasks(self, conn: Any, batch: WriteBatch, tasks: list[Params]) -> None:
        if tasks:
            await self._many(conn, "post_tasks", "insert_post_task", tasks)
            shards = sorted({t.shard for t in batch.post_tasks})
            await self._many(
                conn, "post_tasks", "notify_post_tasks", [{"shard": s} for s in shards]
            )
        if batch.done_post_tasks:
            done = [{"id": t.id, "shard": t.shard} for t in batch.done_post_tasks]
            await self._many(conn, "done_post_tasks", "delete_post_task", done)

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

    # -- post tasks -----------------------------------------------------------------------

    async def pending_post_tasks(
        self, shards: Iterable[int], *, limit: int = DEFAULT_PENDING_POST_TASKS
    ) -> list[PostTask]:
        """The post tasks of these shards not yet done, oldest first, at most `limit`."""
        params = {"shards": rows.dumps(sorted(set(shards))), "limit": limit}
        return [post_task_from_row(r) for r in await self._fetch("pending_post_tasks", params)]

    async def post_tasks_pending_for(self, post_id: str) -> int:
        """How many post tasks of this post are not yet done (in any shard)."""
        return int((await self._fetch("post_tasks_of_post", {"post_id": post_id}))[0]["n"])

    def listen_post_tasks(
        self, *, buffer: int = DEFAULT_NOTICE_BUFFER
    ) -> contextlib.AbstractAsyncContextManager[MemoryObjectReceiveStream[int]]:
        """`async with store.listen_post_tasks() as notified:` the shards that got new post
        tasks, each as a batch inserting them commits (a hint: read pending_post_tasks). On a
        connection of its own, closed on exit. The stream ends if the server drops that
        connection: listen again, and scan, since notices sent meanwhile are lost."""
        return self._listen(POST_TASKS_CHANNEL, int, "post tasks", buffer)

    def listen_credentials(
        self, *, buffer: int = DEFAULT_NOTICE_BUFFER
    ) -> contextlib.AbstractAsyncContextManager[MemoryObjectReceiveStream[str]]:
        """`async with store.listen_credentials() as notified:` one notice (empty) each time a
        batch writing operator tokens or device enrollments commits: read them again. As
        listen_post_tasks: the stream ends if the server drops the connection, and notices
        sent before listening again are lost (reload then)."""
        return self._listen(CREDENTIALS_CHANNEL, str, "credentials", buffer)

    @contextlib.asynccontextmanager
    async def _listen(
        self, channel: str, parse: Callable[[str], T], what: str, buffer: int
    ) -> AsyncIterator[MemoryObjectReceiveStream[T]]:
        self._require()
        send, receive = anyio.create_memory_object_stream[T](buffer)

        def notified(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            # Full: the listener is behind and will scan anyway. Closed: it has left.
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError, ValueError):
                send.send_nowait(parse(payload))

        with _translated(f"listen for {what}"):
            conn = await asyncpg.connect(self._url, timeout=self._connect_timeout_s)
        try:
            conn.add_termination_listener(lambda _conn: send.close())
            with _translated(f"listen for {what}"):
                await conn.add_listener(channel, notified)
            with receive:
                yield receive
        finally:
            send.close()
            with anyio.CancelScope(shield=True), contextlib.suppress(*_DRIVER_ERRORS):
                await conn.close()

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
