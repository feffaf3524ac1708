"""The accounts a worker publishes to, read once from `--accounts FILE` (TOML).

    [[account]]
    platform = "mastodon"
    account = "acme"                    # the name targets use: mastodon:acme
    base_url = "https://mastodon.social"
    max_characters = 500                # any other key is a platform option (see each adapter)
    [account.credentials]
    access_token = "env:MASTODON_ACME_TOKEN"      # or "file:/etc/postroom/mastodon-acme"

Credentials are references, never values: `env:NAME` reads an environment variable, `file:PATH`
a file (one trailing newline stripped). An inline value is refused unless the worker runs with
`--allow-inline-credentials` (for throwaway local servers). Resolved values are `Secret`s: their
`str`/`repr` never show the value, and every value is registered with the worker's `Redactor`, so
it is scrubbed from logs, step logs, error messages and screenshots even if a platform echoes it.
A rotated token (X, LinkedIn refresh tokens) is written back when its reference is a file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from worker.redact import Redactor

ENV_PREFIX = "env:"
FILE_PREFIX = "file:"
_RESERVED_KEYS = frozenset({"platform", "account", "base_url", "credentials"})

OptionValue = str | int | float | bool


class AccountsError(ValueError):
    """The accounts file is wrong; the message says where and what to write instead."""


class Secret:
    """A credential value that never prints itself."""

    __slots__ = ("_path", "_redactor", "_value", "name", "source")

    def __init__(
        self,
        value: str,
        *,
        name: str,
        source: str,
        redactor: Redactor,
        path: Path | None = None,
    ) -> None:
        self._value = value
        self.name = name
        self.source = source  # "env:NAME", "file:PATH" or "inline": safe to show
        self._path = path
        self._redactor = redactor
        redactor.add(value)

    def reveal(self) -> str:
        """The value, for the one header or body field that needs it."""
        return self._value

    def rotate(self, value: str) -> bool:
        """Replace the value (a refreshed token); persist it when it came from a file.
        Returns whether it was persisted."""
        self._redactor.add(value)
        self._value = value
        if self._path is None:
            return False
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
        os.replace(tmp, self._path)
        return True

    def __repr__(self) -> str:
        return f"Secret({self.name}, from {self.source})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountConfig:
    platform: str
    account: str
    base_url: str
    credentials: Mapping[str, Secret]
    options: Mapping[str, OptionValue] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.platform}:{self.account}"

    def secret(self, name: str) -> Secret:
        try:
            return self.credentials[name]
        except KeyError:
            raise AccountsError(
                f"account {self.label}: credential {name!r} is missing; add it under "
                f'[account.credentials] as {name} = "env:NAME" or "file:PATH"'
            ) from None

    def optional_secret(self, name: str) -> Secret | None:
        return self.credentials.get(name)

    def option(self, name: str, default: OptionValue | None = None) -> OptionValue:
        value = self.options.get(name, default)
        if value is None:
            raise AccountsError(f"account {self.label}: option {name!r} is required")
        return value

    def str_option(self, name: str, default: str | None = None) -> str:
        return str(self.option(name, default))

    def int_option(self, name: str, default: int | None = None) -> int:
        value = self.option(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise AccountsError(f"account {self.label}: option {name!r} must be a number")
        try:
            return int(value)
        except ValueError:
            raise AccountsError(f"account {self.label}: option {name!r} must be a number") from None


def load_accounts(
    path: Path,
    *,
    redactor: Redactor,
    environ: Mapping[str, str] | None = None,
    allow_inline: bool = False,
) -> tuple[AccountConfig, ...]:
    """Parse and resolve the accounts file; raises AccountsError naming what to fix."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise AccountsError(f"cannot read accounts file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AccountsError(f"accounts file {path} is not valid TOML: {exc}") from None
    env = os.environ if environ is None else environ
    entries = data.get("account")
    if not isinstance(entries, list) or not entries:
        raise AccountsError(f"accounts file {path}: no [[account]] tables")
    accounts: list[AccountConfig] = []
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(entries, start=1):
        where = f"{path}: account #{index}"
        if not isinstance(entry, dict):
            raise AccountsError(f"{where}: expected a table")
        platform = _required_str(entry, "platform", where).lower()
        name = _required_str(entry, "account", where)
        where = f"{path}: account {platform}:{name}"
        if (platform, name) in seen:
            raise AccountsError(f"{where}: listed twice; list each account once")
        seen.add((platform, name))
        base_url = _required_str(entry, "base_url", where).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise AccountsError(f"{where}: base_url {base_url!r} must start with https://")
        raw_credentials = entry.get("credentials", {})
        if not isinstance(raw_credentials, dict):
            raise AccountsError(f"{where}: credentials must be a table")
        credentials = {
            key: _resolve(
                key, ref, where=where, env=env, allow_inline=allow_inline, redactor=redactor
            )
            for key, ref in raw_credentials.items()
        }
        options: dict[str, OptionValue] = {}
        for key, value in entry.items():
            if key in _RESERVED_KEYS:
                continue
            if not isinstance(value, str | int | float | bool):
                raise AccountsError(f"{where}: option {key!r} must be a string, number or bool")
            options[key] = value
        accounts.append(
            AccountConfig(
                platform=platform,
                account=name,
                base_url=base_url,
                credentials=credentials,
                options=options,
            )
        )
    return tuple(accounts)


def _required_str(entry: Mapping[str, object], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise AccountsError(f"{where}: {key!r} is required (a non-empty string)")
    return value.strip()


def _resolve(
    key: str,
    ref: object,
    *,
    where: str,
    env: Mapping[str, str],
    allow_inline: bool,
    redactor: Redactor,
) -> Secret:
    # Never put the value itself into an error message: it may be a secret written inline.
    if not isinstance(ref, str) or not ref:
        raise AccountsError(f"{where}: credential {key!r} must be a string like env:NAME")
    if ref.startswith(ENV_PREFIX):
        var = ref.removeprefix(ENV_PREFIX)
        value = env.get(var)
        if not value:
            raise AccountsError(f"{where}: credential {key!r}: environment variable {var} is unset")
        return Secret(value, name=key, source=ref, redactor=redactor)
    if ref.startswith(FILE_PREFIX):
        file = Path(ref.removeprefix(FILE_PREFIX)).expanduser()
        try:
            value = file.read_text().removesuffix("\n")
        except OSError as exc:
            raise AccountsError(
                f"{where}: credential {key!r}: cannot read {file}: {exc.strerror}"
            ) from None
        if not value:
            raise AccountsError(f"{where}: credential {key!r}: {file} is empty")
        return Secret(value, name=key, source=ref, redactor=redactor, path=file)
    if not allow_inline:
        raise AccountsError(
            f"{where}: credential {key!r} is written inline; write env:NAME or file:PATH "
            "(or run the worker with --allow-inline-credentials for a throwaway local server)"
        )
    return Secret(ref, name=key, source="inline", redactor=redactor)
