"""SQL as data: numbered migration files and named queries, read from a package's resources.

A backend's SQL lives in one package (`coordinator.store.sql.sqlite`, `...postgres`):
`NNNN_name.sql` files are migrations, applied in version order, each once; `queries.sql` holds
the named queries the store runs (`-- name: <name>` starts each), beside the ones both dialects
run as they are (`coordinator/store/sql/shared_queries.sql`).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import aiosqlite

from coordinator.errors import StoreError

SQL_PACKAGE = "coordinator.store.sql"
SHARED_QUERIES = "shared_queries.sql"
SQLITE_SQL_PACKAGE = "coordinator.store.sql.sqlite"
POSTGRES_SQL_PACKAGE = "coordinator.store.sql.postgres"
_MIGRATION_FILE = re.compile(r"^(\d{4})_\w+\.sql$")
_QUERY_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def load_migrations(package: str = SQLITE_SQL_PACKAGE, *, split: bool = True) -> list[Migration]:
    """With `split=False` each script stays one statement (PostgreSQL runs a whole script)."""
    migrations: list[Migration] = []
    for entry in resources.files(package).iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            script = entry.read_text(encoding="utf-8")
            statements = split_statements(script) if split else (script,)
            migrations.append(Migration(int(match[1]), entry.name, statements))
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise StoreError(f"two migration files share a version in {package}: {versions}")
    return migrations


def split_statements(script: str) -> tuple[str, ...]:
    """Statements of a script, split where a line completes one.

    executescript() would be simpler, but it commits any open transaction before it starts, so
    a migration could not run inside the transaction that also records it. complete_statement
    knows about string literals, comments and trigger bodies; a line must not hold two statements.
    """
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if _strip_comments(pending):
        raise StoreError(f"unterminated SQL statement: {pending.strip()[:80]!r}")
    return tuple(statements)


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines()).strip()


def load_queries(package: str = SQLITE_SQL_PACKAGE) -> Mapping[str, str]:
    """The package's `queries.sql` and the queries both dialects share (`shared_queries.sql`)."""
    own = _parse_queries(resources.files(package).joinpath("queries.sql"), package)
    shared = _parse_queries(resources.files(SQL_PACKAGE).joinpath(SHARED_QUERIES), SQL_PACKAGE)
    if both := sorted(own.keys() & shared.keys()):
        raise StoreError(f"{package}/queries.sql repeats shared queries: {both}")
    return {**shared, **own}


def _parse_queries(source: Traversable, where: str) -> dict[str, str]:
    parts = _QUERY_NAME.split(source.read_text(encoding="utf-8"))
    # parts = [preamble, name1, body1, name2, body2, ...]
    queries = {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
    if len(queries) != len(parts) // 2:
        raise StoreError(f"a query name is used twice in {where}/{source.name}")
    return queries


def check_known(applied: set[int], migrations: list[Migration]) -> None:
    """Refuse a database migrated by a newer postroom."""
    known = {m.version for m in migrations}
    if applied - known:
        raise StoreError(
            f"the database has schema versions {sorted(applied - known)} that this postroom does "
            f"not know (it knows up to {max(known, default=0)}); upgrade postroom"
        )


async def apply_migrations(
    conn: aiosqlite.Connection, queries: Mapping[str, str], migrations: list[Migration]
) -> list[int]:
    """Apply every migration not yet recorded in schema_migrations; return the versions applied.

    Each runs in its own BEGIN IMMEDIATE transaction and the version is re-checked inside it, so
    two processes opening one fresh database do not both apply it.
    """
    await conn.execute(queries["create_schema_migrations"])
    applied = {row[0] for row in await conn.execute_fetchall(queries["applied_migrations"])}
    check_known(applied, migrations)
    done: list[int] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        try:
            await conn.execute("BEGIN IMMEDIATE")
            rows = await conn.execute_fetchall(queries["applied_migrations"])
            if migration.version not in {row[0] for row in rows}:
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute(
                    queries["record_migration"],
                    {"version": migration.version, "applied_at": time.time()},
                )
                done.append(migration.version)
            await conn.execute("COMMIT")
        except BaseException:
            # Unconditional, as in SqliteStore.apply: a statement may still be queued.
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
            raise
    return done
