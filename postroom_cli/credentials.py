"""Where the CLI finds its operator token and TLS settings: environment and files, never a flag
value (a command line shows in `ps` and in shell history).

    POSTROOM_TOKEN=prt_…            the operator token itself
    --token-file PATH               or POSTROOM_TOKEN_FILE: a file holding it (chmod 600)
    --ca PATH / POSTROOM_CA         the CA that signed the coordinator's certificate
    --tls-cert/--tls-key            a client certificate, where the coordinator asks for one

The reading itself is the Python client's (`postroom.client.settings`), so scripts and the CLI
find the same token.
"""

from __future__ import annotations

from postroom.client.settings import ENV_TOKEN, ENV_TOKEN_FILE, operator_token, read_secret_file

__all__ = ["ENV_TOKEN", "ENV_TOKEN_FILE", "operator_token", "read_secret_file"]
