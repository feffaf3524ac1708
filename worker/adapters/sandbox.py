"""The adapter for the sandbox platforms (`postroom sandbox`): real HTTP through httpx.

API (per platform name, per account):
    POST {base}/api/{platform}/accounts/{account}/posts   {"text","media","client_key"}
         + Authorization: Bearer sandbox-token-<account>, Idempotency-Key: <platform_key>
         -> 201 {"id","url","created_at"}; 429/401/400/409/5xx as worker/adapters/http.py maps
    GET  {base}/api/{platform}/accounts/{account}/posts?client_key=K   -> {"posts":[{"id","url"}]}
    GET  {base}/api/{platform}/accounts/{account}/me                   -> 200 or 401

Its "screenshot" is a small PNG card the worker renders itself, describing the last exchange.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from urllib.parse import quote

import httpx

from postroom.clock import Clock
from worker.adapters.base import AFTER_PUBLISH, ON_FAILURE, JobSpec, Prepared, Published
from worker.adapters.http import RequestObserver, error_for, ignore_request, json_body, send
from worker.adapters.png import Tone, render_card
from worker.config import DEFAULT_REQUEST_TIMEOUT_S
from worker.errors import InvalidContent, Transient

_SHOWN_HEADERS = ("idempotency-key", "retry-after", "x-ratelimit-reset", "content-type")


class SandboxAdapter:
    """One job's (or one login check's) conversation with the sandbox."""

    def __init__(
        self,
        *,
        platform: str,
        base_url: str,
        clock: Clock,
        timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        observe: RequestObserver = ignore_request,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.platform = platform
        self._clock = clock
        self._observe = observe
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport
        )
        self._last: list[str] = []  # the last exchange, for the screenshot
        self._last_ok = True

    async def prepare(self, job: JobSpec) -> Prepared:
        if not job.text.strip() and not job.media:
            raise InvalidContent(f"{self.platform}: nothing to post (no text, no media)")
        payload: dict[str, object] = {
            "text": job.text,
            "media": list(job.media),
            "client_key": job.platform_key,
        }
        path = self._path(job.account, "posts")
        self._last = [f"READY TO POST {path}", *_describe_text(job), f"key {job.platform_key}"]
        self._last_ok = True
        return Prepared(
            payload=payload,
            summary=f"POST {path}: {len(job.text)} chars, {len(job.media)} media",
        )

    async def commit(self, job: JobSpec, prepared: Prepared) -> Published:
        headers = self._auth(job.account)
        if job.platform_key:
            headers["Idempotency-Key"] = job.platform_key
        request = self._client.build_request(
            "POST", self._path(job.account, "posts"), json=dict(prepared.payload), headers=headers
        )
        response = await self._exchange(request)
        if response.status_code not in (200, 201):
            raise error_for(response, platform=self.platform, now=self._clock.now())
        body = json_body(response)
        post_id, url = body.get("id"), body.get("url")
        if not isinstance(post_id, str) or not post_id:
            # It may well have posted: Transient makes the coordinator verify on the next attempt.
            raise Transient(f"{self.platform}: 2xx answer without a post id: {response.text[:200]}")
        return Published(post_id=post_id, url=url if isinstance(url, str) else "")

    async def verify(self, job: JobSpec) -> Published | None:
        params = (
            {"client_key": job.platform_key}
            if job.platform_key
            else {"fingerprint": hashlib.sha256(job.text.encode("utf-8")).hexdigest()}
        )
        request = self._client.build_request(
            "GET", self._path(job.account, "posts"), params=params, headers=self._auth(job.account)
        )
        response = await self._exchange(request)
        if response.status_code != 200:
            raise error_for(response, platform=self.platform, now=self._clock.now())
        posts = json_body(response).get("posts")
        for post in posts if isinstance(posts, list) else []:
            if isinstance(post, dict) and isinstance(post.get("id"), str):
                url = post.get("url")
                return Published(post_id=post["id"], url=url if isinstance(url, str) else "")
        return None

    async def check_login(self, account: str) -> bool:
        request = self._client.build_request(
            "GET", self._path(account, "me"), headers=self._auth(account)
        )
        response = await self._exchange(request)
        if response.status_code == 200:
            return True
        if response.status_code in (401, 403):
            return False
        raise error_for(response, platform=self.platform, now=self._clock.now())

    async def screenshot(self, label: str) -> bytes | None:
        if not self._last:
            return None
        tone: Tone = "error" if label == ON_FAILURE or not self._last_ok else "info"
        if label == AFTER_PUBLISH and self._last_ok:
            tone = "ok"
        return render_card(f"{self.platform} {label}", self._last, tone=tone)

    async def close(self) -> None:
        await self._client.aclose()

    def _path(self, account: str, leaf: str) -> str:
        return f"/api/{quote(self.platform, safe='')}/accounts/{quote(account, safe='')}/{leaf}"

    @staticmethod
    def _auth(account: str) -> dict[str, str]:
        # The credential never leaves the worker; the sandbox accepts any bearer of this shape.
        return {"Authorization": f"Bearer sandbox-token-{account}"}

    async def _exchange(self, request: httpx.Request) -> httpx.Response:
        target = request.url.path + (f"?{request.url.query.decode()}" if request.url.query else "")
        self._last = [f"{request.method} {target}"]
        self._last += [f"> {k}: {v}" for k, v in request.headers.items() if k in _SHOWN_HEADERS]
        if request.content:
            self._last.append(f"> {request.content[:160].decode('utf-8', 'replace')}")
        try:
            response = await send(
                self._client, request, platform=self.platform, observe=self._observe
            )
        except Transient as exc:
            self._last += [f"< no answer: {exc}"]
            self._last_ok = False
            raise
        self._last_ok = response.is_success
        self._last.append(f"< HTTP {response.status_code} {response.reason_phrase}")
        self._last += [f"< {k}: {v}" for k, v in response.headers.items() if k in _SHOWN_HEADERS]
        self._last.append(f"< {response.text[:300]}")
        return response


def _describe_text(job: JobSpec) -> list[str]:
    text = json.dumps(job.text, ensure_ascii=False)
    return [f"{job.platform}/{job.account} text {text[:80]}", f"media {len(job.media)}"]


def sandbox_factory(
    *,
    base_url: str,
    clock: Clock,
    timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    observe: RequestObserver = ignore_request,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Callable[[str], SandboxAdapter]:
    """An `AdapterFactory` routing every platform name it is registered for to the sandbox."""

    def make(platform: str) -> SandboxAdapter:
        return SandboxAdapter(
            platform=platform,
            base_url=base_url,
            clock=clock,
            timeout_s=timeout_s,
            observe=observe,
            transport=transport,
        )

    return make
