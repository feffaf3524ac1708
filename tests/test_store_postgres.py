"""PostgreSQL's own promises, beyond the Store contract (test_store.py runs that on it too):
migrations produce a schema equivalent to SQLite's, once; a database from a newer postroom and
an unreachable server are refused with a message that says so; and two stores on one database
(two coordinator processes) keep compare-and-set and audit numbering whole between them."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest
from pg_rig import scratch_database
from test_store import (
    EXPECTED_COLUMNS,
    EXPECTED_FOREIGN_KEYS,
    EXPECTED_INDEXES,
    all_audit,
    audit,
    make_job,
    seed,
)

from coordinator.domain import JobStatus
from coordinator.errors import ConcurrentUpdate, StoreError
from coordinator.store import JobWrite, PostgresStore, WriteBatch
from coordinator.store.migrations import POSTGRES_SQL_PACKAGE, load_migrations
from coordinator.store.postgres import compile_query, redacted

pytestmark = pytest.mark.anyio

# PostgreSQL's names for SQLite's declared types (both integer widths count as INTEGER).
_TYPES = {"text": "TEXT", "double precision": "REAL", "integer": "INTEGER", "bigint": "INTEGER"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg is asyncio only


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with scratch_database() as database_url:
        yield database_url


def expected_columns() -> dict[str, str]:
    """SQLite's schema as PostgreSQL has it: key columns are NOT NULL there, and runs keep a
    seq where SQLite orders them by its implicit rowid."""
    columns: dict[str, str] = {}
    for table, spec in EXPECTED_COLUMNS.items():
        cols = [re.sub(r"^(\w+ \w+) PK$", r"\1! PK", c) for c in spec.split(", ")]
        columns[table] = ", ".join(c.replace("!! PK", "! PK") for c in cols)
    columns["runs"] += ", seq INTEGER!"
    # PostgreSQL only (0002_ownership.sql): shard owners, duty leaders, coordinators alive.
    columns["shard_owners"] = (
        "shard INTEGER! PK, owner TEXT!, epoch INTEGER!, heartbeat_at REAL!, expires_at REAL!"
    )
    columns["leaders"] = (
        "duty TEXT! PK, owner TEXT!, epoch INTEGER!, elected_at REAL!, expires_at REAL!"
    )
    # 0003: the address each coordinator advertises (coordinator/cluster/).
    columns["coordinators"] = "owner TEXT! PK, heartbeat_at REAL!, expires_at REAL!, address TEXT!"
    # 0005: post tasks for the owners of other shards (store/base.py: PostTask).
    columns["post_tasks"] = (
        "id INTEGER! PK, shard INTEGER!, post_id TEXT!, kind TEXT!, args TEXT!, created_at REAL!"
    )
    return columns


async def read_schema(url: str) -> tuple[dict[str, str], set[str], set[str]]:
    conn = await asyncpg.connect(url)
    try:
        keys = {
            (r["table_name"], r["column_name"])
            for r in await conn.fetch(
                "SELECT tc.table_name, k.column_name FROM information_schema.table_constraints tc"
                " JOIN information_schema.key_column_usage k USING (constraint_schema,"
                " constraint_name) WHERE tc.table_schema = 'public'"
                " AND tc.constraint_type = 'PRIMARY KEY'"
            )
        }
        columns: dict[str, list[str]] = {}
        for r in await conn.fetch(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        ):
            table, name = r["table_name"], r["column_name"]
            notnull = "!" if r["is_nullable"] == "NO" else ""
            pk = " PK" if (table, name) in keys else ""
            columns.setdefault(table, []).append(f"{name} {_TYPES[r['data_type']]}{notnull}{pk}")
        unique = {r["conname"] for r in await conn.fetch("SELECT conname FROM pg_constraint")}
        indexes = set()
        for r in await conn.fetch(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            " AND tablename <> 'schema_migrations'"
        ):
            table, index = r["tablename"], r["indexname"]
            label = "PK" if index == f"{table}_pkey" else "UNIQUE" if index in unique else index
            cols = re.search(r"\((.*)\)$", r["indexdef"])
            assert cols is not None
            indexes.add(f"{table} {label} ({cols[1]})")
        fks = {
            f"{r['src']}.{r['col']} -> {r['dst']}.{r['ref']}"
            for r in await conn.fetch(
                "SELECT c.conrelid::regclass::text AS src, a.attname AS col,"
                " c.confrelid::regclass::text AS dst, b.attname AS ref FROM pg_constraint c"
                " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
                " JOIN pg_attribute b ON b.attrelid = c.confrelid AND b.attnum = c.confkey[1]"
                " WHERE c.contype = 'f'"
            )
        }
    finally:
        await conn.close()
    return {t: ", ".join(c) for t, c in columns.items()}, indexes, fks


async def test_migrations_produce_the_schema_of_sqlite_once(url: str) -> None:
    for _ in range(2):  # re-opening applies nothing again
        store = PostgresStore(url)
        await store.open()
        await store.close()
    columns, indexes, fks = await read_schema(url)
    assert columns == expected_columns()
    # SQLite's INTEGER PRIMARY KEY is the rowid itself; PostgreSQL indexes those keys.
    rowid_keys = {"step_logs PK (seq)", "screenshots PK (seq)", "audit_events PK (seq)"}
    ownership = {"shard_owners PK (shard)", "leaders PK (duty)", "coordinators PK (owner)"}
    tasks = {"post_tasks PK (id)", "post_tasks post_tasks_shard_idx (shard, id)"}
    assert indexes == EXPECTED_INDEXES | rowid_keys | ownership | tasks
    assert fks == EXPECTED_FOREIGN_KEYS
    conn = await asyncpg.connect(url)
    try:
        applied = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
    finally:
        await conn.close()
    assert applied == [m.version for m in load_migrations(POSTGRES_SQL_PACKAGE)] == [1, 2, 3, 4, 5]


async def test_a_database_from_a_newer_release_is_refused(url: str) -> None:
    store = PostgresStore(url)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO schema_migrations VALUES (9999, 0)")
    finally:
        await conn.close()
    with pytest.raises(StoreError, match="9999"):
        await PostgresStore(url).open()


async def test_an_unreachable_server_is_a_store_error_without_the_password() -> None:
    store = PostgresStore("postgresql://alice:s3cret@127.0.0.1:1/postroom", connect_timeout_s=2)
    with pytest.raises(StoreError, match=r"open postgresql://alice@127\.0\.0\.1:1/postroom") as err:
        await store.open()
    assert "s3cret" not in str(err.value)
    assert redacted("postgres://db/x") == "postgres://db/x"
    assert redacted("postgresql://db/x?sslmode=require&password=pw") == (
        "postgresql://db/x?sslmode=require"
    )
    assert redacted("sqlite:////var/lib/postroom.db") == "sqlite:////var/lib/postroom.db"


def test_named_parameters_are_numbered_once_and_casts_left_alone() -> None:
    query = compile_query(
        "-- :ignored in a comment\nSELECT :a::text, :b, :a FROM t WHERE x = ':'::text"
    )
    assert query.sql == "SELECT $1::text, $2, $1 FROM t WHERE x = ':'::text"
    assert query.args({"b": 2, "a": 1, "ignored": 0}) == [1, 2]


async def test_two_stores_on_one_database_keep_cas_and_audit_order_whole(url: str) -> None:
    """Two coordinator processes' stores: one job claimed by both at once goes to exactly one,
    and audit seqs stay consecutive, each batch's events together, in commit order."""
    first, second = PostgresStore(url), PostgresStore(url)
    await first.open()
    await second.open()
    try:
        job = make_job()
        await seed(first, job)
        outcomes: list[str] = []

        async def claim(store: PostgresStore, device: str) -> None:
            claimed = dataclasses.replace(job, status=JobStatus.CLAIMED, lease_epoch=1)
            write = JobWrite(claimed, frozenset({JobStatus.QUEUED}), 0)
            try:
                await store.apply(WriteBatch(job_writes=[write], audits=[audit(device)]))
                outcomes.append(device)
            except ConcurrentUpdate:
                outcomes.append("refused")

        async def write_audits(store: PostgresStore, n: int) -> None:
            await store.apply(WriteBatch(audits=[audit(f"b{n}") for _ in range(3)]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(claim, first, "dev-1")
            tg.start_soon(claim, second, "dev-2")
            for n in range(10):
                tg.start_soon(write_audits, (first, second)[n % 2], n)
        assert sorted(outcomes) in (["dev-1", "refused"], ["dev-2", "refused"])
        events = await all_audit(second)
        assert [e.seq for e in events] == list(range(1, 32))
        batches = [e.action for e in events if e.action.startswith("b")]
        assert all(batches[i] == batches[i + 1] == batches[i + 2] for i in range(0, 30, 3))
    finally:
        await first.close()
        await second.close()


async def test_the_store_reconnects_after_the_server_drops_its_connections(url: str) -> None:
    store = PostgresStore(url)
    await store.open()
    try:
        await store.apply(WriteBatch(audits=[audit("before")]))
        conn = await asyncpg.connect(url)
        try:  # what a server restart or an idle-connection reaper does
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        outcomes = []
        for n in range(2):  # the first may find its connection dead: UNAVAILABLE, not a crash
            try:
                await store.apply(WriteBatch(audits=[audit(f"after-{n}")]))
                outcomes.append("written")
            except StoreError as exc:
                outcomes.append(f"unavailable: {exc}")
        assert outcomes[-1] == "written", outcomes
        assert next(e.action for e in await all_audit(store)) == "before"
        assert await store.list_audit(
            since=None, subject_id="", action="after-1", after_seq=0, limit=9
        )
    finally:
        await store.close()


async def test_an_exclusive_store_keeps_a_second_one_out_until_it_is_gone(url: str) -> None:
    first = PostgresStore(url, exclusive=True)
    await first.open()
    try:
        second = PostgresStore(url, exclusive=True, lock_wait_s=0.2)
        with pytest.raises(StoreError, match=r"another coordinator is using .* \(server pid \d+"):
            await second.open()
        await first.apply(WriteBatch(audits=[audit()]))  # the holder goes on writing
    finally:
        await first.close()
    await second.open()  # the lock went with the first one's session
    await second.close()
