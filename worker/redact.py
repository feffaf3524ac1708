"""Scrubbing credential values out of everything the worker says.

Every resolved credential (and every refreshed token) is added to the worker's one `Redactor`.
Adapters already never print credentials; this is the second line: a platform that echoes a
token in an error body, or an exception whose repr holds a header, still shows `[redacted]`.
It is applied to log records (`RedactingFilter`), to step logs and error messages sent to the
coordinator, and to the lines of proof screenshots.
"""

from __future__ import annotations

import logging

REDACTED = "[redacted]"
# Shorter values would scrub ordinary words; no real credential is this short.
MIN_SECRET_CHARS = 6


class Redactor:
    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._ordered: list[str] = []

    def add(self, value: str) -> None:
        if len(value) < MIN_SECRET_CHARS or value in self._secrets:
            return
        self._secrets.add(value)
        # Longest first, so a secret that contains another is scrubbed whole.
        self._ordered = sorted(self._secrets, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def __bool__(self) -> bool:
        return bool(self._secrets)


class RedactingFilter(logging.Filter):
    """Formats the record's message once and scrubs it (and any exception text)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._redactor:
            return True
        record.msg = self._redactor(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redactor(record.exc_text)
        return True
