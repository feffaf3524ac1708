"""The LinkedIn stand-in for tests: served on a real port (uvicorn in a thread of the test
process), and a small client for its admin API. LinkedIn tests share these.

    with serve_standin() as base_url:               # http://127.0.0.1:PORT (the stand-in alone)
        admin = StandinAdmin(base_url)
        admin.member("urn:li:person:a", access_token="...", refresh_token="...", ...)
        admin.fault(kind="rate_limit", member="urn:li:person:a")
        admin.posts(author="urn:li:person:a")       # what LinkedIn would show, with its text
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
from asgi_thread import serve_in_thread

from sandbox.standins.linkedin import create_app

VERSION = "202609"
HEADERS = {"LinkedIn-Version": VERSION, "X-Restli-Protocol-Version": "2.0.0"}


@contextlib.contextmanager
def serve_standin() -> Iterator[str]:
    """A fresh stand-in on 127.0.0.1 (port chosen by the OS) until the block ends."""
    with serve_in_thread(create_app(), name="linkedin-standin") as url:
        yield url


class StandinAdmin:
    """The stand-in's `/_standin` API; base_url is where the stand-in is (`{sandbox}/linkedin`)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=10.0)

    def close(self) -> None:
        self._http.close()

    def member(
        self,
        member: str,
        *,
        access_token: str,
        refresh_token: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        organizations: tuple[str, ...] = (),
    ) -> None:
        body: dict[str, Any] = {
            "member": member,
            "access_token": access_token,
            "organizations": list(organizations),
        }
        for key, value in (
            ("refresh_token", refresh_token),
            ("client_id", client_id),
            ("client_secret", client_secret),
        ):
            if value is not None:
                body[key] = value
        self._http.post("/_standin/tokens", json=body).raise_for_status()

    def issued_tokens(self, member: str) -> list[str]:
        response = self._http.get("/_standin/tokens", params={"member": member})
        issued: list[str] = response.raise_for_status().json()["issued"]
        return issued

    def fault(self, **spec: Any) -> None:
        self._http.post("/_standin/faults", json=spec).raise_for_status()

    def posts(self, author: str | None = None) -> list[dict[str, Any]]:
        params = {"author": author} if author else {}
        posts: list[dict[str, Any]] = (
            self._http.get("/_standin/posts", params=params).raise_for_status().json()["posts"]
        )
        return posts

    def requests(self, member: str) -> dict[str, int]:
        stats = self._http.get("/_standin/stats").raise_for_status().json()
        by_member: dict[str, int] = stats["by_member"].get(member, {})
        return by_member

    def create_post(self, token: str, author: str, commentary: str) -> httpx.Response:
        """A post made directly through the API (as another app of the same member would)."""
        body = {
            "author": author,
            "commentary": commentary,
            "visibility": "PUBLIC",
            "distribution": {
                "feedDistribution": "MAIN_FEED",
                "targetEntities": [],
                "thirdPartyDistributionChannels": [],
            },
            "lifecycleState": "PUBLISHED",
            "isReshareDisabledByAuthor": False,
        }
        headers = {**HEADERS, "Authorization": f"Bearer {token}"}
        return self._http.post("/rest/posts", json=body, headers=headers)
