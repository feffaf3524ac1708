"""postroom_cli: the `postroom` command, built on the Python client `postroom.Client`.

Errors, one root: the client's `postroom.PostroomError` (called `CliError` here, see
`client.py`), printed as "error: CODE: message", exit 1:

PostroomError(code, message)
├── NotFound, FailedPrecondition, Unavailable, …   a failed call, by gRPC status
├── NeedsPerson                                     nothing happens by itself: exit 3
└── (itself) OSError when writing files, answers the CLI cannot use (a stream that ends
    early, a corrupt asset), a token file it cannot read

Usage errors are argparse's: "usage: ..." and exit 2.
"""

from __future__ import annotations

from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("postroom")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


__version__ = _version()
