"""PostgreSQL for the tests: databases of their own on the machine's server, dropped after use.

The server is POSTROOM_TEST_PG (an admin URL; default the project machine's
postgresql://postgres@127.0.0.1:5432/postgres, trust auth). Every database made here is named
postroom_test_<random>; no other database is touched. Where the server cannot be reached the
PostgreSQL cases fail in CI (CI=true), with what to do, and skip elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import pytest

from coordinator.store import PostgresStore
from coordinator.store.ownership import ShardOwnership
from postroom_cli.cluster import ClusterConfig, LocalCluster

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE_PREFIX = "postroom_test_"
CONNECT_TIMEOUT_S = 5.0
T = TypeVar("T")


def admin_url() -> str:
    return os.environ.get("POSTROOM_TEST_PG", DEFAULT_ADMIN_URL)


def database_url(name: str) -> str:
    """The admin URL with its database replaced by `name`."""
    return urlsplit(admin_url())._replace(path=f"/{name}").geturl()


def unreachable(exc: BaseException) -> NoReturn:
    message = (
        f"PostgreSQL at {admin_url()} is unreachable ({exc}); start it with "
        "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
        "(`make test` does), or point POSTROOM_TEST_PG at a server"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


async def _admin(sql: str) -> None:
    try:
        conn = await asyncpg.connect(admin_url(), timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        unreachable(exc)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_database() -> str:
    name = f"{DATABASE_PREFIX}{secrets.token_hex(6)}"
    await _admin(f'CREATE DATABASE "{name}"')
    return name


async def drop_database(name: str) -> None:
    assert name.startswith(DATABASE_PREFIX)  # never anything else
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped on exit."""
    name = await create_database()
    try:
        yield database_url(name)
    finally:
        await drop_database(name)


async def empty_tables(url: str) -> None:
    """Remove every row a test left (the schema and its recorded migrations stay)."""
    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'schema_migrations'"
        )
        if tables:
            names = ", ".join(f'"{t["tablename"]}"' for t in tables)
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


def run_apart(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on an event loop of its own thread: the caller may be inside a running loop (an async
    fixture asking for pg_database through request.getfixturevalue)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@contextmanager
def own_database() -> Iterator[str]:
    """The URL of a new database, dropped on exit; for sync fixtures (any scope)."""
    name = run_apart(create_database())
    try:
        yield database_url(name)
    finally:
        run_apart(drop_database(name))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """One database for the whole run (tests empty it with empty_tables); its URL."""
    with own_database() as url:
        yield url


@pytest.fixture
async def pg_store(pg_database: str) -> AsyncIterator[PostgresStore]:
    """The PostgreSQL store on pg_database, emptied of what earlier tests left; closed after."""
    await empty_tables(pg_database)
    store = PostgresStore(pg_database)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def shard_ownership(pg_store: PostgresStore, shard_count: int) -> ShardOwnership:
    """Shard ownership on pg_store, over the test module's `shard_count` fixture's shards."""
    ownership = ShardOwnership(pg_store, shard_count=shard_count)
    await ownership.open()
    return ownership


async def post_texts(url: str) -> list[str]:
    """The text of every post in the database at `url`, sorted."""
    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    try:
        return [r["text"] for r in await conn.fetch("SELECT text FROM posts ORDER BY text")]
    finally:
        await conn.close()


@contextmanager
def cluster_on_own_database(
    tmp_path: Path, config: ClusterConfig, *, coordinators: int, placement: str
) -> Iterator[LocalCluster]:
    """A LocalCluster (sandbox started, `coordinators` coordinators of `placement`) on a new
    database of its own, dropped after the cluster's processes stopped."""
    with contextlib.ExitStack() as stack:  # the database outlives the cluster's processes
        url = stack.enter_context(own_database())
        cluster = stack.enter_context(LocalCluster(tmp_path, config))
        cluster.db_url = url
        cluster.start_sandbox()
        cluster.start_coordinators(coordinators, ["--placement", placement])
        yield cluster
