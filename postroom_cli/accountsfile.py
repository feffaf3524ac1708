"""Writing a worker's accounts file (worker/accounts.py reads it) the way users should: every
credential as an `env:NAME` reference whose value goes into the worker's environment, or as a
`file:PATH` reference left as it is. Used by the demo and the tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import tomli_w

FILE_REFERENCE = "file:"


@dataclass(frozen=True)
class AccountEntry:
    platform: str
    account: str
    base_url: str
    # name -> the value itself (passed through the environment), or "file:PATH" (kept as is)
    credentials: Mapping[str, str]
    options: Mapping[str, str | int | bool] = field(default_factory=dict)


def render_accounts(
    accounts: Sequence[AccountEntry], *, env_prefix: str = "POSTROOM_CREDENTIAL"
) -> tuple[str, dict[str, str]]:
    """The accounts file's text and the environment that holds its credential values."""
    env: dict[str, str] = {}
    tables: list[dict[str, object]] = []
    for n, entry in enumerate(accounts):
        credentials: dict[str, str] = {}
        for name, value in entry.credentials.items():
            if value.startswith(FILE_REFERENCE):  # rotated tokens are written back there
                credentials[name] = value
                continue
            var = f"{env_prefix}_{n}_{name.upper()}"
            env[var] = value
            credentials[name] = f"env:{var}"
        tables.append(
            {
                "platform": entry.platform,
                "account": entry.account,
                "base_url": entry.base_url,
                **entry.options,
                "credentials": credentials,
            }
        )
    return tomli_w.dumps({"account": tables}), env
