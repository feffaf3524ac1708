"""The X stand-in's OAuth 2.0 token endpoint and its admin API.

`POST /2/oauth2/token` with grant_type=refresh_token, refresh_token, client_id (a confidential
client also sends HTTP Basic client_id:client_secret) answers new tokens and retires the old
ones: X rotates refresh tokens, so a refresh token works once
(https://docs.x.com/fundamentals/authentication/oauth-2-0/authorization-code). Errors are
OAuth-shaped: 400 {"error": "invalid_request", "error_description": "Value passed for the token
was invalid."}; 401 {"error": "unauthorized_client", ...} without a valid Basic header.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from sandbox.standins.x_faults import (
    FaultError,
    FaultKind,
    Op,
    fault_reply,
    oauth_error,
    parse_fault,
    problem,
)
from sandbox.standins.x_gate import ok, send
from sandbox.standins.x_state import (
    DEFAULT_TOKEN_TTL_S,
    DEFAULT_USER_TWEETS_PER_DAY,
    Account,
    XState,
)

INVALID_TOKEN = "Value passed for the token was invalid."
NO_BASIC = "Missing valid authorization header"


class TokenApi:
    def __init__(self, state: XState) -> None:
        self.state = state

    async def token(self, request: Request) -> Response:
        self.state.count("token")
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        if form.get("grant_type") != "refresh_token":
            return send(oauth_error(400, "unsupported_grant_type", "Only refresh_token here."))
        offered = form.get("refresh_token", "")
        account = next(
            (
                a
                for a in self.state.accounts.values()
                if offered and secrets.compare_digest(a.refresh_token, offered)
            ),
            None,
        )
        if account is None:
            return send(
                oauth_error(400, "invalid_request", "Value passed for the token was invalid.")
            )
        if form.get("client_id") != account.client_id:
            return send(
                oauth_error(400, "invalid_request", "Missing required parameter [client_id].")
            )
        if account.client_secret is not None and not _basic_ok(request, account):
            return send(
                oauth_error(401, "unauthorized_client", "Missing valid authorization header")
            )
        fault = self.state.faults.take(account.username, Op.TOKEN)
        if fault is not None and fault.kind is FaultKind.REFRESH_REFUSED:
            return send(fault_reply(fault))
        if fault is not None and fault.kind is FaultKind.UNAVAILABLE:
            return send(problem(fault.status, fault.detail))
        return ok(self.state.refresh(account), headers={"cache-control": "no-store"})


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _basic_ok(request: Request, account: Account) -> bool:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    expected = f"{account.client_id}:{account.client_secret}"
    return secrets.compare_digest(decoded, expected)


class AdminApi:
    def __init__(self, state: XState) -> None:
        self.state = state

    async def add_account(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        required = ("username", "access_token", "refresh_token", "client_id")
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in required):
            return ok({"error": f"give {', '.join(required)} (strings)"}, 400)
        secret = body.get("client_secret")
        try:
            ttl_s = float(body.get("token_ttl_s", DEFAULT_TOKEN_TTL_S))
            per_day = int(body.get("tweets_per_day", DEFAULT_USER_TWEETS_PER_DAY))
        except (TypeError, ValueError):
            return ok({"error": "token_ttl_s and tweets_per_day are numbers"}, 400)
        account = Account(
            username=body["username"],
            user_id=str(body.get("user_id") or self.state.new_id()),
            client_id=body["client_id"],
            client_secret=secret if isinstance(secret, str) else None,
            access_token=body["access_token"],
            refresh_token=body["refresh_token"],
            access_expires_at=None,
            token_ttl_s=ttl_s,
            tweets_per_day=per_day,
            requests_per_window=_positive(body.get("requests_per_window")),
        )
        self.state.add_account(account)
        return ok(account.public_json(), 201)

    def _account(self, request: Request) -> Account | Response:
        account = self.state.accounts.get(request.path_params["username"])
        return account if account is not None else ok({"error": "no such account"}, 404)

    async def get_account(self, request: Request) -> Response:
        account = self._account(request)
        if isinstance(account, Response):
            return account
        tokens = {
            "access_token": account.access_token,
            "refresh_token": account.refresh_token,
            "access_expires_at": account.access_expires_at,
            "issued": account.issued,
        }
        return ok({**account.public_json(), **tokens})

    async def expire(self, request: Request) -> Response:
        account = self._account(request)
        if isinstance(account, Response):
            return account
        account.access_expires_at = self.state.clock()
        return ok({"expired": True})

    async def revoke(self, request: Request) -> Response:
        """The user revoked the app: neither token works any more."""
        account = self._account(request)
        if isinstance(account, Response):
            return account
        account.access_token = f"revoked-{secrets.token_hex(8)}"
        account.refresh_token = f"revoked-{secrets.token_hex(8)}"
        account.access_expires_at = self.state.clock()
        return ok({"revoked": True})

    async def add_fault(self, request: Request) -> Response:
        try:
            fault = parse_fault(await request.json())
        except ValueError as exc:
            message = str(exc) if isinstance(exc, FaultError) else "body is not valid JSON"
            return ok({"error": message}, 400)
        self.state.faults.add(fault)
        return ok(fault.to_json(), 201)

    async def list_faults(self, request: Request) -> Response:
        return ok({"faults": self.state.faults.pending(), "fired": self.state.fired})

    async def clear_faults(self, request: Request) -> Response:
        return ok({"cleared": self.state.faults.clear()})

    async def tweets(self, request: Request) -> Response:
        username = request.query_params.get("username")
        tweets: list[dict[str, Any]] = [
            t.admin_json() for t in self.state.tweets if username in (None, t.username)
        ]
        return ok({"tweets": tweets, "count": len(tweets)})

    async def stats(self, request: Request) -> Response:
        return ok(
            {
                "requests": self.state.requests,
                "by_user": self.state.by_user,
                "tweets": len(self.state.tweets),
            }
        )
