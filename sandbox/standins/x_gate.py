"""The front door of every X stand-in API request: the bearer token, an injected fault, the
15-minute rate-limit window; and the JSON answers (X serves problems as application/json)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandbox.standins.x_faults import (
    Fault,
    FaultKind,
    Op,
    Reply,
    Window,
    fault_reply,
    problem,
    rate_limit_headers,
    rate_limited,
)
from sandbox.standins.x_state import Account, XState

JSON = "application/json; charset=utf-8"


def send(reply: Reply, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        reply.body, reply.status, headers={**reply.headers, **(headers or {})}, media_type=JSON
    )


def ok(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status, headers=headers, media_type=JSON)


class Gate:
    """What every API request goes through first: the bearer token, an injected fault, the
    15-minute window. Returns the account, or the answer that ends the request."""

    def __init__(self, state: XState) -> None:
        self.state = state

    def enter(
        self, request: Request, op: Op, *, finalize: bool = False
    ) -> tuple[Account, Fault | None, Window] | Response:
        state = self.state
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        account = state.bearer(token.strip()) if scheme.lower() == "bearer" else None
        if account is None:
            state.count(op.value)
            return send(problem(401))
        state.count(op.value, account.username)
        fault = state.faults.take(account.username, op, finalize=finalize)
        if fault is not None:
            state.count(f"fault:{fault.kind.value}", account.username)
            if fault.kind is FaultKind.EXPIRED_TOKEN:
                account.access_expires_at = state.clock()
        rate = state.rate(account, op)
        if fault is None and rate.remaining < 0:
            return send(problem(429), rate_limit_headers(Window(rate.limit, 0, rate.reset)))
        if fault is None or fault.kind in (
            FaultKind.ACCEPT_THEN_HANG,
            FaultKind.PROCESSING_FAILED,
        ):
            return account, fault, rate
        if fault.kind in (FaultKind.THROTTLE, FaultKind.USER_CAP, FaultKind.APP_CAP):
            day = (state.user_day(account), state.app_day()) if op is Op.CREATE else (None, None)
            now = state.clock()
            reply = rate_limited(fault, now=now, rate=rate, user_day=day[0], app_day=day[1])
        else:
            reply = fault_reply(fault)
            reply = Reply(reply.status, reply.body, rate_limit_headers(rate))
        state.fired.append(
            {
                "kind": fault.kind.value,
                "username": account.username,
                "status": reply.status,
                "headers": reply.headers,
            }
        )
        return send(reply)
