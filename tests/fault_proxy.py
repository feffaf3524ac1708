"""A reverse proxy in front of real platform software (the Bluesky PDS, mastodon-mock) that can
answer for it, or pass a request on and then hang: the faults those servers cannot make.

    with FaultProxy(upstream="http://127.0.0.1:PDS") as proxy:
        proxy.url                                   # give this to the worker as base_url
        proxy.add(Rule("POST", r"createRecord$", reply=Reply(503, {...})))
        proxy.add(Rule("POST", r"/statuses$", forward_then_hang=True))   # posted, no answer
        proxy.add(Rule("POST", r"/statuses$", after_forward=Reply(502)))  # posted, answer lost
        proxy.requests("POST", r"createSession$")   # what the worker sent, in order

It runs uvicorn on 127.0.0.1, port chosen by the OS, in a thread of the test process, and stops
(releasing any hanging request) on exit. Rules match in the order added; each fires `count`
times (None: forever).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
from asgi_thread import ThreadedServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_HOP_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}
)


@dataclass(frozen=True)
class Reply:
    status: int
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Rule:
    method: str
    path: str  # a regular expression searched in the request's path
    reply: Reply | None = None
    forward_then_hang: bool = False
    # Forward, then answer this instead of the platform's answer (the answer was lost).
    after_forward: Reply | None = None
    count: int | None = 1
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.count is not None and self.fired >= self.count:
            return False
        return method == self.method and re.search(self.path, path) is not None


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._rules: list[Rule] = []
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._release: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hanging = 0
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=_METHODS)])
        self._server = ThreadedServer(app, name="fault-proxy")
        self.url = self._server.url

    # ---- control, from the test's thread -------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def requests(self, method: str | None = None, path: str = "") -> list[Seen]:
        with self._lock:
            return [
                s
                for s in self._seen
                if (method is None or s.method == method) and re.search(path, s.path)
            ]

    @property
    def hanging(self) -> int:
        return self._hanging

    # ---- the server ----------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        if self._release is None:
            self._release = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        body = await request.body()
        path = request.url.path
        with self._lock:
            self._seen.append(Seen(request.method, path, dict(request.headers), body))
            rule = next((r for r in self._rules if r.matches(request.method, path)), None)
            if rule is not None:
                rule.fired += 1
        if rule is not None and rule.reply is not None:
            return _answer(rule.reply)
        upstream = await self._forward(request, body)
        if rule is not None and rule.forward_then_hang:
            self._hanging += 1
            await self._release.wait()
            return Response(b"", status_code=502)
        if rule is not None and rule.after_forward is not None:
            return _answer(rule.after_forward)
        return upstream

    async def _forward(self, request: Request, body: bytes) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        url = self.upstream + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        async with httpx.AsyncClient(timeout=30.0) as client:
            answer = await client.request(request.method, url, headers=headers, content=body)
        out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS}
        return Response(answer.content, status_code=answer.status_code, headers=out)

    # ---- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self._server.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.request_stop()
        if self._release is not None and self._loop is not None:
            # Wake hanging requests, on the server's own loop, so the server can stop.
            self._loop.call_soon_threadsafe(self._release.set)
        self._server.stop()


def _answer(reply: Reply) -> Response:
    content = b"" if reply.json is None else json.dumps(reply.json).encode()
    headers = {"content-type": "application/json", **reply.headers}
    return Response(content, status_code=reply.status, headers=headers)


_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
