"""A small synchronous client for the sandbox's admin API (tests, the demo, the chaos checker).

Synchronous on purpose: callers are test bodies and scripts. Do not call it from the event loop
that runs an in-process `serve()`: it would block the loop that has to answer it.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any, Literal, Self, TypedDict, cast
from urllib.parse import quote

import httpx

from sandbox import ENV_ADMIN_TOKEN, SandboxError

DEFAULT_TIMEOUT_SECONDS = 5.0

FaultKindName = Literal[
    "rate_limit",
    "auth",
    "invalid",
    "server_error",
    "upstream_error",
    "hang",
    "duplicate",
    "accept_then_fail",
    "accept_then_hang",
    "renamed_selector",
    "slow_page",
    "challenge",
]
OpName = Literal["create", "lookup", "me", "page", "any"]
RetryAfterFormatName = Literal["seconds", "http_date", "reset_unix"]


class AdminError(SandboxError):
    """An admin call failed: the sandbox was unreachable or answered with an error status."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RecordedPost(TypedDict):
    id: str
    platform: str
    account: str
    text: str
    media: list[str]
    client_key: str
    fingerprint: str
    created_at: str
    url: str


class DuplicateGroup(TypedDict):
    platform: str
    account: str
    client_key: str
    count: int
    ids: list[str]


class PendingFault(TypedDict):
    id: str
    remaining: int
    platform: str
    account: str
    kind: FaultKindName
    count: int
    op: OpName
    retry_after_seconds: float
    retry_after_format: RetryAfterFormatName
    status: int
    hang_seconds: float
    message: str | None


class Stats(TypedDict):
    requests: dict[str, int]
    faults_fired: dict[str, int]
    posts: int
    hanging: int


class SandboxAdmin:
    """``SandboxAdmin("http://127.0.0.1:8787")``; use as a context manager or call `close()`."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        token: str | None = None,
    ) -> None:
        """`token`: the sandbox's admin token (default: env POSTROOM_SANDBOX_ADMIN_TOKEN; none
        for a sandbox without one)."""
        self.base_url = base_url.rstrip("/")
        token = os.environ.get(ENV_ADMIN_TOKEN, "") if token is None else token
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            base_url=self.base_url, timeout=timeout_seconds, headers=headers
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def inject(
        self,
        kind: FaultKindName,
        *,
        platform: str = "sandbox",
        account: str = "*",
        count: int = 1,
        op: OpName | None = None,
        retry_after_seconds: float | None = None,
        retry_after_format: RetryAfterFormatName | None = None,
        status: int | None = None,
        hang_seconds: float | None = None,
        message: str | None = None,
    ) -> str:
        """Queue a fault for the next `count` matching requests; returns the fault's id. `op`
        defaults to "page" for the page kinds (renamed_selector, slow_page, challenge), else
        "create"."""
        body: dict[str, Any] = {
            "kind": kind,
            "platform": platform,
            "account": account,
            "count": count,
        }
        optional = {
            "op": op,
            "retry_after_seconds": retry_after_seconds,
            "retry_after_format": retry_after_format,
            "status": status,
            "hang_seconds": hang_seconds,
            "message": message,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        return cast(str, self._call("POST", "/admin/faults", json=body)["id"])

    def faults(self) -> list[PendingFault]:
        return cast(list[PendingFault], self._call("GET", "/admin/faults")["faults"])

    def clear_faults(self) -> None:
        self._call("DELETE", "/admin/faults")

    def posts(self, platform: str | None = None, account: str | None = None) -> list[RecordedPost]:
        params = {
            key: value
            for key, value in (("platform", platform), ("account", account))
            if value is not None
        }
        return cast(list[RecordedPost], self._call("GET", "/admin/posts", params=params)["posts"])

    def duplicates(self) -> list[DuplicateGroup]:
        return cast(list[DuplicateGroup], self._call("GET", "/admin/duplicates")["duplicates"])

    def stats(self) -> Stats:
        return cast(Stats, self._call("GET", "/admin/stats"))

    def reset(self) -> None:
        self._call("POST", "/admin/reset")

    def set_logged_in(self, platform: str, account: str, logged_in: bool) -> None:
        action = "login" if logged_in else "logout"
        self._call(
            "POST", f"/admin/accounts/{quote(platform, safe='')}/{quote(account, safe='')}/{action}"
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        try:
            response = self._client.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            raise AdminError(f"{method} {self.base_url}{path}: {exc}") from exc
        if response.is_error:
            raise AdminError(
                f"{method} {path} answered {response.status_code}: {response.text}",
                status=response.status_code,
            )
        return cast(dict[str, Any], response.json())
