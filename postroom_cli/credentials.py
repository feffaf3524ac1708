"""Where the CLI finds its operator token and TLS settings: environment and files, never a flag
value (a command line shows in `ps` and in shell history).

    POSTROOM_TOKEN=prt_…            the operator token itself
    --token-file PATH               or POSTROOM_TOKEN_FILE: a file holding it (chmod 600)
    --ca PATH / POSTROOM_CA         the CA that signed the coordinator's certificate
    --tls-cert/--tls-key            a client certificate, where the coordinator asks for one
"""

from __future__ import annotations

import os
from pathlib import Path

from postroom_cli.client import CliError

ENV_TOKEN = "POSTROOM_TOKEN"
ENV_TOKEN_FILE = "POSTROOM_TOKEN_FILE"


def read_secret_file(path: Path, what: str) -> str:
    """The secret in a file: its first line, stripped. Errors name the file, never its content."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise CliError("TOKEN", f"cannot read the {what} file {path}: {reason}") from None
    secret = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise CliError("TOKEN", f"the {what} file {path} is empty")
    return secret


def operator_token(token_file: Path | None) -> str:
    """--token-file, else POSTROOM_TOKEN, else POSTROOM_TOKEN_FILE; "" when none is set (a
    coordinator without authentication on loopback needs none)."""
    if token_file is not None:
        return read_secret_file(token_file, "token")
    token = os.environ.get(ENV_TOKEN, "").strip()
    if token:
        return token
    env_file = os.environ.get(ENV_TOKEN_FILE, "").strip()
    return read_secret_file(Path(env_file), "token") if env_file else ""
