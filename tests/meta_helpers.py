"""Helpers for the Meta (Facebook, Instagram) tests: the stand-in's admin API, a real server for
an app in a thread, accounts for the rig, and a tiny real JPEG (Instagram takes nothing else).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from asgi_thread import serve_in_thread
from platform_rig import Account, PlatformRig
from polling import wait_until
from starlette.applications import Starlette

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.client import PublishingClient


def tiny_jpeg() -> bytes:
    """A real baseline JPEG: 8x8 mid-grey, one block whose DC difference is 0 (Huffman code `0`)
    followed by end-of-block (code `0`); both tables hold a single 1-bit code."""
    segments = [
        b"\xff\xd8",  # SOI
        b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
        b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + b"\x01" * 64,  # DQT 0: all ones
        b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 8, 8, 1) + b"\x01\x11\x00",  # SOF0 8x8 grey
        b"\xff\xc4" + struct.pack(">H", 20) + b"\x00" + b"\x01" + b"\x00" * 15 + b"\x00",  # DC 0
        b"\xff\xc4" + struct.pack(">H", 20) + b"\x10" + b"\x01" + b"\x00" * 15 + b"\x00",  # AC 0
        b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00" + b"\x00\x3f\x00",  # SOS
        b"\x3f",  # DC "0", EOB "0", padded with ones
        b"\xff\xd9",  # EOI
    ]
    return b"".join(segments)


class MetaAdmin:
    """The stand-in's `/_standin` admin API, at `{sandbox}/meta`."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=10.0)

    def close(self) -> None:
        self.http.close()

    def _ok(self, response: httpx.Response) -> Any:
        assert response.is_success, (
            f"{response.request.url}: {response.status_code} {response.text}"
        )
        return response.json()

    def page(self, page_id: str, token: str, **extra: Any) -> None:
        self._ok(self.http.put(f"/_standin/pages/{page_id}", json={"access_token": token, **extra}))

    def ig_user(self, user_id: str, token: str, **extra: Any) -> None:
        body = {"access_token": token, **extra}
        self._ok(self.http.put(f"/_standin/ig_users/{user_id}", json=body))

    def fault(self, **spec: Any) -> str:
        fault_id: str = self._ok(self.http.post("/_standin/faults", json=spec))["id"]
        return fault_id

    def fired(self, fault_id: str) -> dict[str, Any]:
        fired = self._ok(self.http.get("/_standin/faults"))["fired"]
        return next(f for f in fired if f["id"] == fault_id)

    def posts(self, target: str) -> list[dict[str, Any]]:
        posts: list[dict[str, Any]] = self._ok(
            self.http.get("/_standin/posts", params={"target": target})
        )["posts"]
        return posts

    def containers(self, target: str) -> list[dict[str, Any]]:
        containers: list[dict[str, Any]] = self._ok(
            self.http.get("/_standin/containers", params={"target": target})
        )["containers"]
        return containers

    def host(self, name: str, data: bytes) -> str:
        """Put an image where Instagram can fetch it; its public URL."""
        self._ok(self.http.put(f"/_standin/media/{name}", content=data))
        return f"{self.base_url}/_standin/media/{name}"


@contextmanager
def served(app: Starlette) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 (port chosen by the OS) in a thread; its base URL."""
    with serve_in_thread(app, name="meta-standin") as url:
        yield url


def facebook_account(
    name: str, base_url: str, page_id: str, token: str, **options: str | int | bool
) -> Account:
    return Account(
        "facebook",
        name,
        base_url,
        {"page_access_token": token},
        {"page_id": page_id, "api_version": "v21.0", **options},
    )


def instagram_account(
    name: str, base_url: str, user_id: str, token: str, **options: str | int | bool
) -> Account:
    return Account(
        "instagram",
        name,
        base_url,
        {"access_token": token},
        {"ig_user_id": user_id, "api_version": "v21.0", "container_poll_s": "0.05", **options},
    )


def audit_details(client: PublishingClient, job_id: str, action: str) -> list[dict[str, Any]]:
    events = client.list_audit_events(
        pub.ListAuditEventsRequest(subject_id=job_id, action=action, page_size=1000)
    ).events
    return [json.loads(e.details_json or "{}") for e in events]


def wait_for_posts(admin: MetaAdmin, target: str, count: int) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        posts = admin.posts(target)
        return posts if len(posts) >= count else None

    return wait_until(f"{count} post(s) on {target}", enough)


@dataclass
class MetaEnv:
    """A sandbox process (the stand-in at `{sandbox}/meta`), a coordinator and a worker holding
    the module's accounts: one account per test, so tests share no gate, fault or token."""

    rig: PlatformRig
    admin: MetaAdmin
    base_url: str
    nodes: dict[str, str]  # account name -> Page / IG user id

    def gate_closed_until(self, platform: str, account: str) -> float:
        def closed() -> float | None:
            gate = self.rig.gate(platform, account)
            return gate.closed_until.ToNanoseconds() / 1e9 if gate.closed else None

        return wait_until(f"the {platform}:{account} gate to close", closed)


@contextmanager
def meta_env(
    workdir: Path, make: Callable[[MetaAdmin, str], tuple[list[Account], dict[str, str]]]
) -> Iterator[MetaEnv]:
    """`make(admin, base_url)` registers the stand-in's objects and returns the accounts."""
    rig = PlatformRig(workdir)
    admin: MetaAdmin | None = None
    try:
        base_url = f"{rig.cluster.start_sandbox()}/meta"
        admin = MetaAdmin(base_url)
        accounts, nodes = make(admin, base_url)
        rig.start(accounts)
        yield MetaEnv(rig, admin, base_url, nodes)
    finally:
        rig.stop()
        if admin is not None:
            admin.close()


def run_seconds(job: pb.Job) -> list[float]:
    """How long each successful run of the job took, from its lease to its result."""
    return [
        (r.ended_at.ToNanoseconds() - r.started_at.ToNanoseconds()) / 1e9
        for r in job.runs
        if r.outcome == "succeeded"
    ]
