"""Who is using the console: each person signs in with their own operator token.

The token is checked with WhoAmI and kept on the server, in memory; the browser holds only a
random session id in a signed, HttpOnly, SameSite=Strict cookie. Every call to the coordinator is
made with the person's token, so the coordinator enforces their role and the audit log names
them. A single-user console (`--token`) skips the login and uses that token for everyone who can
reach it (it listens on loopback only).

Forms carry a per-session CSRF token: a cookie alone never authorises an action.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "postroom_console"
DEFAULT_SESSION_IDLE_S = 12 * 3600.0
MAX_SESSIONS = 10_000


@dataclass(slots=True)
class Session:
    token: str
    actor: str  # as the coordinator names this person ("user:alice"), from WhoAmI
    role: int  # postroom.v1.Role
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    last_used: float = 0.0
    # Messages for the next page (an action's outcome after its redirect).
    flash: list[str] = field(default_factory=list)


class Sessions:
    """The signed-in people of one console process (lost on restart: sign in again)."""

    def __init__(
        self,
        *,
        idle_s: float = DEFAULT_SESSION_IDLE_S,
        clock: Callable[[], float] = time.monotonic,
        single_user: Session | None = None,
    ) -> None:
        self._key = secrets.token_bytes(32)
        self._by_id: dict[str, Session] = {}
        self._idle_s = idle_s
        self._clock = clock
        self.single_user = single_user

    def _mac(self, session_id: str) -> str:
        return hmac.new(self._key, session_id.encode(), hashlib.sha256).hexdigest()[:32]

    def create(self, session: Session) -> str:
        """Keep `session`; the cookie value that names it."""
        self._expire()
        if len(self._by_id) >= MAX_SESSIONS:  # a flood of logins cannot grow memory forever
            oldest = min(self._by_id, key=lambda k: self._by_id[k].last_used)
            del self._by_id[oldest]
        session_id = secrets.token_urlsafe(24)
        session.last_used = self._clock()
        self._by_id[session_id] = session
        return f"{session_id}.{self._mac(session_id)}"

    def get(self, cookie: str | None) -> Session | None:
        if self.single_user is not None:
            return self.single_user
        session_id = self._verified(cookie)
        session = self._by_id.get(session_id) if session_id else None
        if session is None:
            return None
        now = self._clock()
        if now - session.last_used > self._idle_s:
            del self._by_id[session_id]
            return None
        session.last_used = now
        return session

    def drop(self, cookie: str | None) -> None:
        session_id = self._verified(cookie)
        if session_id:
            self._by_id.pop(session_id, None)

    def _verified(self, cookie: str | None) -> str:
        session_id, _, mac = (cookie or "").partition(".")
        if not session_id or not hmac.compare_digest(mac, self._mac(session_id)):
            return ""
        return session_id

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._by_id.items() if now - s.last_used > self._idle_s]:
            del self._by_id[key]


def csrf_ok(session: Session, submitted: str) -> bool:
    return hmac.compare_digest(session.csrf.encode(), submitted.encode())
