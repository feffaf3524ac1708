"""One coordinator per database: an exclusive lock on `<database>.lock`, held for its life.

Two coordinators on one SQLite file would each believe they own every lease and hand the same
jobs to different workers, which is how a post goes out twice. `flock` is released by the
kernel when the process ends, however it ends (a SIGKILLed coordinator leaves no stale lock), and
it is taken before the store is opened, so the second process touches nothing.

SQLite only: on PostgreSQL several coordinators share a database, one active and the others
standing by, fenced by shard leases (coordinator/cluster/).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from coordinator.errors import CoordinatorError


class DatabaseInUse(CoordinatorError):
    """Another process holds the database's lock."""


class DatabaseLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, database: str | os.PathLike[str]) -> DatabaseLock:
        """Lock `database` + ".lock"; raises DatabaseInUse naming the holder's pid."""
        path = Path(f"{os.fspath(database)}.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise DatabaseInUse(
                f"another coordinator (pid {holder}) is using {os.fspath(database)}: stop it "
                f"first; two coordinators on one database would hand out the same jobs "
                f"(lock {path})"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the last descriptor releases the flock
