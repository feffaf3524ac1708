"""Connection settings from the environment, the same variables the `postroom` CLI reads:

POSTROOM_COORDINATOR     HOST:PORT of the coordinator (default 127.0.0.1:50051)
POSTROOM_TOKEN           the operator token itself, or
POSTROOM_TOKEN_FILE      a file holding it (chmod 600)
POSTROOM_CA              the CA that signed the coordinator's certificate
POSTROOM_TLS_CERT/KEY    a client certificate, where the coordinator asks for one
POSTROOM_ACTOR           who the audit log names where the coordinator runs without tokens
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from postroom.client.errors import PostroomError

DEFAULT_COORDINATOR = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 10.0
ENV_COORDINATOR = "POSTROOM_COORDINATOR"
ENV_TOKEN = "POSTROOM_TOKEN"
ENV_TOKEN_FILE = "POSTROOM_TOKEN_FILE"
ENV_ACTOR = "POSTROOM_ACTOR"


def coordinator_address() -> str:
    return os.environ.get(ENV_COORDINATOR) or DEFAULT_COORDINATOR


def default_actor() -> str:
    try:
        return os.environ.get(ENV_ACTOR) or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        return "operator"


def read_secret_file(path: Path, what: str) -> str:
    """The secret in a file: its first line, stripped. Errors name the file, never its content."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise PostroomError("TOKEN", f"cannot read the {what} file {path}: {reason}") from None
    secret = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise PostroomError("TOKEN", f"the {what} file {path} is empty")
    return secret


def operator_token(token_file: Path | None = None) -> str:
    """`token_file`, else POSTROOM_TOKEN, else POSTROOM_TOKEN_FILE; "" when none is set (a
    coordinator without authentication on loopback needs none)."""
    if token_file is not None:
        return read_secret_file(token_file, "token")
    token = os.environ.get(ENV_TOKEN, "").strip()
    if token:
        return token
    env_file = os.environ.get(ENV_TOKEN_FILE, "").strip()
    return read_secret_file(Path(env_file), "token") if env_file else ""
