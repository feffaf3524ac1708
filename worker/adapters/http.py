"""The HTTP boundary of API adapters: httpx errors and platform answers -> `worker.errors`.

Every API adapter sends through `send` (which counts requests by status for the metrics and turns
timeouts and connection errors into `Transient`) and turns a non-success answer into an exception
with `error_for`. Nothing above this module sees an httpx exception. `send` also makes every new
connection close abortively and, inside a commit, carries the commit fence (worker/fence.py): a
request the lease no longer allows is never written and raises `LeaseLost`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import httpx

from worker.adapters import ratelimit
from worker.errors import (
    AdapterError,
    AuthRequired,
    Duplicate,
    InvalidContent,
    Transient,
)
from worker.fence import request_trace

RequestStatus = int | Literal["timeout", "error"]
# Told about every request: (platform, HTTP status or why none came back).
RequestObserver = Callable[[str, RequestStatus], None]


def ignore_request(platform: str, status: RequestStatus) -> None:
    """A `RequestObserver` that counts nothing."""


async def send(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    platform: str,
    observe: RequestObserver = ignore_request,
) -> httpx.Response:
    # New connections close abortively; inside a commit the lease is checked again just before
    # the request's first byte leaves (worker/fence.py).
    trace = request_trace(f"{request.method} {request.url.path}", request.extensions.get("trace"))
    request.extensions = {**request.extensions, "trace": trace}
    try:
        response = await client.send(request)
    except httpx.TimeoutException as exc:
        observe(platform, "timeout")
        raise Transient(f"{platform}: {request.method} timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        observe(platform, "error")
        raise Transient(f"{platform}: {request.method} failed: {exc!r}") from exc
    observe(platform, response.status_code)
    return response


def json_body(response: httpx.Response) -> Mapping[str, object]:
    """The answer's JSON object, or {} when it is not one (an HTML error page, say)."""
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def error_for(
    response: httpx.Response, *, platform: str, now: float, daily_quota: bool = False
) -> AdapterError:
    """The exception for a non-success answer (the caller raises it)."""
    status = response.status_code
    body = json_body(response)
    detail = body.get("message") or body.get("error") or response.reason_phrase
    message = f"{platform}: HTTP {status}: {detail}"
    if status == 429:
        limit = ratelimit.normalise(response.headers, now=now, body=body, daily_quota=daily_quota)
        return ratelimit.rate_limited(message, limit, now=now, http_status=status)
    if status in (401, 403):
        return AuthRequired(message, http_status=status)
    if status == 409:
        existing = body.get("existing_id")
        return Duplicate(
            message, existing_id=existing if isinstance(existing, str) else None, http_status=status
        )
    if status == 408 or status >= 500:
        # The sandbox documents `"created": false` on a 5xx as "nothing was made".
        return Transient(message, http_status=status, not_created=body.get("created") is False)
    # 400, 422 and the other 4xx: the request itself is wrong; retrying the same cannot help.
    return InvalidContent(message, http_status=status)
