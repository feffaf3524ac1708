"""The sandbox's admin API behind a bearer token: `/admin/...` and every stand-in's `_standin/...`
(faults, accounts, recorded posts), which can make a rehearsal lie or read what was posted.

With no token configured (the default on loopback) the admin API is open, as before; a sandbox
listening beyond loopback refuses to start without one (server.py). Stand-in media
(`GET .../_standin/media/...`) stay open: the platform stand-ins fetch them as Instagram fetches
an image URL.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox import ENV_ADMIN_TOKEN


def is_admin_path(method: str, path: str) -> bool:
    if path.startswith("/admin/") or path == "/admin":
        return True
    if "/_standin/" not in path:
        return False
    return not (method in ("GET", "HEAD") and "/_standin/media/" in path)


class AdminToken:
    """ASGI middleware: admin paths need `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_admin_path(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": "the sandbox admin API needs 'Authorization: Bearer TOKEN' (the token "
                f"of `postroom sandbox --admin-token-file`, or {ENV_ADMIN_TOKEN})"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
