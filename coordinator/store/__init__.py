"""The coordinator's storage: the Store interface, its backends, and open_store(url).

store = open_store("sqlite:///var/postroom.db")
await store.open()          # connects and migrates
await store.apply(WriteBatch(new_posts=[post]))
"""

from __future__ import annotations

from coordinator.errors import InvalidArgument
from coordinator.store.base import JobFilter, JobWrite, PostWrite, Store, WriteBatch
from coordinator.store.memory import InMemoryStore
from coordinator.store.postgres import PostgresStore
from coordinator.store.sqlite import SqliteStore

__all__ = [
    "InMemoryStore",
    "JobFilter",
    "JobWrite",
    "PostWrite",
    "PostgresStore",
    "SqliteStore",
    "Store",
    "WriteBatch",
    "open_store",
]

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+")


def open_store(url: str) -> Store:
    """The store a URL names, not yet opened (call `await store.open()`).

    - `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` (the path is everything after
      the third slash, as in SQLAlchemy URLs), or a bare filesystem path: SqliteStore.
    - `memory://`: InMemoryStore, which keeps nothing across restarts.
    - `postgresql://user@host:5432/dbname` (or `postgres://`, `postgresql+asyncpg://`, and any
      libpq-style query parameters asyncpg takes): PostgresStore, shared: several coordinators
      may run on one database, one active and the others standing by (coordinator/cluster/).
    """
    url = url.strip()
    if url.startswith(_SQLITE_PREFIX):
        path = url[len(_SQLITE_PREFIX) :]
        if not path:
            raise InvalidArgument(f"{url!r} names no database file; use sqlite:///PATH")
        return SqliteStore(path)
    if url == "memory://":
        return InMemoryStore()
    if url.startswith(_POSTGRES_SCHEMES):
        return PostgresStore(url)
    if "://" in url or url.startswith("sqlite:"):
        raise InvalidArgument(
            f"unsupported store URL {url!r}: use sqlite:///PATH, a bare PATH, memory://, or "
            "postgresql://USER@HOST:PORT/DBNAME"
        )
    if not url:
        raise InvalidArgument("empty store URL: use sqlite:///PATH")
    return SqliteStore(url)
