"""Typed reading of a playbook's TOML tables: every error names the file and the key."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping


class PlaybookError(ValueError):
    """A playbook file is wrong; the message names the file, the key and what to write."""


class Reader:
    """Typed access to one table, with errors naming the file and the key."""

    def __init__(self, data: Mapping[str, object], where: str) -> None:
        self.data = data
        self.where = where

    def known(self, keys: set[str]) -> None:
        unknown = sorted(set(self.data) - keys)
        if unknown:
            raise PlaybookError(
                f"{self.where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(keys))}"
            )

    def sub(self, key: str, *, required: bool = False) -> Reader:
        table = self.table(key)
        if table is None:
            if required:
                raise PlaybookError(f"{self.where}: [{key}] is required")
            table = {}
        return Reader(table, f"{self.where} [{key}]")

    def table(self, key: str) -> Mapping[str, object] | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, dict):
            raise PlaybookError(f"{self.where}: {key!r} must be a table")
        return value

    def table_list(self, key: str) -> list[Mapping[str, object]]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise PlaybookError(f"{self.where}: {key!r} must be [[{key}]] tables")
        return value

    def optional_string(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise PlaybookError(f"{self.where}: {key!r} must be a non-empty string")
        return value

    def string(self, key: str) -> str:
        value = self.optional_string(key)
        if value is None:
            raise PlaybookError(f"{self.where}: {key!r} is required (a string)")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise PlaybookError(f"{self.where}: {key!r} must be a list of strings")
        return tuple(value)

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.optional_string(key) or default
        if value not in choices:
            raise PlaybookError(f"{self.where}: {key!r} must be one of {', '.join(choices)}")
        return value

    def positive_int(self, key: str, default: int | None) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise PlaybookError(f"{self.where}: {key!r} must be a positive integer")
        return value

    def regex(self, key: str, *, required: bool = False) -> re.Pattern[str] | None:
        text = self.string(key) if required else self.optional_string(key)
        if text is None:
            return None
        try:
            return re.compile(text)
        except re.error as exc:
            raise PlaybookError(f"{self.where}: {key!r} is not a valid regex: {exc}") from None

    def template(self, key: str, fields: frozenset[str]) -> str:
        value = self.optional_template(key, fields)
        if value is None:
            raise PlaybookError(f"{self.where}: {key!r} is required (a string)")
        return value

    def optional_template(self, key: str, fields: frozenset[str]) -> str | None:
        value = self.optional_string(key)
        if value is not None:
            check_template(value, fields, f"{self.where}: {key!r}")
        return value


def check_template(text: str, fields: frozenset[str], where: str) -> None:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise PlaybookError(
            f"{where}: bad template {text!r}: {exc} (write {{{{ for a brace)"
        ) from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in fields or spec or conversion:
            raise PlaybookError(
                f"{where}: unknown placeholder {{{field}}} in {text!r}; "
                f"this place offers {', '.join('{' + f + '}' for f in sorted(fields))}"
            )
