"""The sandbox's admin API behind its token: refused without it (401, the token never echoed),
served with it; the platform APIs and stand-in media stay open; beyond loopback the sandbox
will not start without a token unless told."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from conftest import REPO_ROOT

from sandbox.app import create_app

pytestmark = pytest.mark.anyio
TOKEN = "sandbox-admin-canary-0123456789"


async def test_admin_paths_need_the_token_and_the_platform_api_does_not() -> None:
    transport = httpx.ASGITransport(app=create_app(admin_token=TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as http:
        for method, path in (
            ("GET", "/admin/posts"),
            ("POST", "/admin/reset"),
            ("GET", "/x/_standin/tweets"),
            ("POST", "/meta/_standin/reset"),
        ):
            refused = await http.request(method, path)
            assert refused.status_code == 401, path
            assert TOKEN not in refused.text and "Bearer" in refused.text
            wrong = await http.request(method, path, headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 401
        ok = await http.get("/admin/posts", headers={"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["count"] == 0
        posted = await http.post(  # the platform's own bearer token, not the admin one
            "/api/sandbox/accounts/acme/posts",
            json={"text": "hi", "client_key": "k1"},
            headers={"authorization": "Bearer platform-token"},
        )
        assert posted.status_code < 400, posted.text
        media = await http.get("/meta/_standin/media/nothing.jpg")
        assert media.status_code != 401
        assert (await http.get("/healthz")).status_code == 200


def test_beyond_loopback_the_sandbox_wants_an_admin_token() -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "sandbox", "--listen", "0.0.0.0:0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "--admin-token-file" in refused.stderr and "--insecure-no-admin-token" in refused.stderr
