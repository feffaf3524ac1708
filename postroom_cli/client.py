"""The CLI's side of the client: `postroom.Client` (one client for scripts and the CLI), exit
codes, and the CLI's names for the client's error.

Every failed call raises a `PostroomError` (alias `CliError` here); `main` prints it as
`error: CODE: message` and exits with its `exit_code` (1 unless it says otherwise).
"""

from __future__ import annotations

from postroom.client.errors import PostroomError, translate
from postroom.client.settings import DEFAULT_COORDINATOR, DEFAULT_TIMEOUT_S
from postroom.client.sync import Client

# Exit codes of every command: done; failed; usage (argparse); a person must act first.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NEEDS_PERSON = 3

# The one error the CLI reports; local failures use their own codes ("IO", "TOKEN", …).
CliError = PostroomError
PublishingClient = Client


class NeedsPerson(PostroomError):
    """Nothing more happens by itself (a login wall, say): exit code 3, with what to do."""

    exit_code = EXIT_NEEDS_PERSON

    def __init__(self, message: str, code: str = "NEEDS_LOGIN") -> None:
        super().__init__(code, message)


def exit_code(exc: PostroomError) -> int:
    code: int = getattr(exc, "exit_code", EXIT_FAILED)
    return code


__all__ = [
    "DEFAULT_COORDINATOR",
    "DEFAULT_TIMEOUT_S",
    "EXIT_FAILED",
    "EXIT_NEEDS_PERSON",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "NeedsPerson",
    "PublishingClient",
    "exit_code",
    "translate",
]
