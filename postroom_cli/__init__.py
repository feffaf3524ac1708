"""postroom_cli: the `postroom` command, a gRPC client of `postroom.v1.Publishing`.

Errors, one root (see `client.py`):

CliError(code, message)      printed as "error: CODE: message", exit 1
└── raised from grpc.RpcError at the client boundary, from OSError when writing files,
    and for answers the CLI cannot use (a stream that ends early, a corrupt asset).

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
