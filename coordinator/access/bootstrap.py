"""The first admin token of a deployment that cannot be reached without one.

`postroom coordinator --bootstrap-admin-token-file PATH`: at start-up, when the store holds no
active admin token or PATH does not exist, make an admin token (named `bootstrap-admin`), write
its secret to PATH (mode 0600) and keep only its hash. Otherwise PATH is left alone, so the flag
can stay in a service's command line. It is also the way back in when the admin tokens are lost:
remove PATH (whoever can write the coordinator's files and restart it owns it anyway), restart,
then revoke the lost tokens with the new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path

from coordinator.access.records import (
    OPERATOR_PREFIX,
    OperatorToken,
    Role,
    hash_secret,
    new_secret,
)
from coordinator.access.registry import Credentials
from coordinator.domain import AuditEvent
from coordinator.store.base import Store, WriteBatch

log = logging.getLogger("postroom.coordinator.access")
BOOTSTRAP_NAME = "bootstrap-admin"


class BootstrapError(Exception):
    """The token file cannot be written; nothing was stored."""


def _write_pending(path: Path, secret: str) -> Path:
    """The secret in a temporary file beside `path`, mode 0600 whatever the umask."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, f"{secret}\n".encode())
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise BootstrapError(f"--bootstrap-admin-token-file {path}: {exc.strerror or exc}") from exc
    return tmp


async def bootstrap_admin(store: Store, credentials: Credentials, path: Path, now: float) -> bool:
    """Before the actor runs (start-up: blocking file calls are fine). True if a token was made
    and written to `path`."""
    if credentials.has_active_admin() and os.path.lexists(path):  # noqa: ASYNC240
        log.info("an admin token exists: %s left alone", path)
        return False
    secret = new_secret(OPERATOR_PREFIX)
    tmp = _write_pending(path, secret)
    token = OperatorToken(
        id=f"t-{uuid.uuid4().hex[:12]}",
        name=BOOTSTRAP_NAME,
        role=Role.ADMIN,
        token_hash=hash_secret(secret),
        created_at=now,
        created_by="system",
    )
    details = {"name": BOOTSTRAP_NAME, "role": Role.ADMIN.value, "file": str(path)}
    try:
        await store.apply(
            WriteBatch(
                operator_tokens=[token],
                audits=[AuditEvent("TOKEN_CREATED", token.id, "system", now, details)],
            )
        )
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # Only now the file: a token nobody can read is never stored, a stored one is never lost.
    # The rename replaces whatever was at `path`, a planted symlink included.
    os.replace(tmp, path)
    credentials.put_token(token)
    log.info("wrote the first admin token (%s) to %s", token.id, path)
    return True
