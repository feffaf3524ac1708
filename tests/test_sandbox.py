"""The sandbox: platform-shaped APIs, every fault kind, the duplicate record, real HTTP serving."""

from __future__ import annotations

import hashlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import anyio
import httpx
import pytest

from sandbox.admin import AdminError, SandboxAdmin
from sandbox.app import create_app
from sandbox.server import main, serve

NOW = 1_700_000_000.4  # a fractional "now" shows that retry instants are rounded up
AUTH = {"Authorization": "Bearer token-1"}
POSTS = "/api/sandbox/accounts/acme/posts"
POLL_DEADLINE_SECONDS = 3.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn, and so `serve`, needs asyncio


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
async def client(clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(clock=clock))
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox.test") as client:
        yield client


async def create(
    client: httpx.AsyncClient, text: str = "hello", *, key: str = "k1", account: str = "acme"
) -> httpx.Response:
    body = {"text": text, "media": [], "client_key": key}
    return await client.post(f"/api/sandbox/accounts/{account}/posts", json=body, headers=AUTH)


async def inject(client: httpx.AsyncClient, kind: str, **fields: Any) -> str:
    response = await client.post(
        "/admin/faults", json={"platform": "sandbox", "kind": kind, **fields}
    )
    assert response.status_code == 201, response.text
    fault_id = response.json()["id"]
    assert isinstance(fault_id, str)
    return fault_id


async def recorded(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    body = (await client.get("/admin/posts")).json()
    assert body["count"] == len(body["posts"])
    posts: list[dict[str, Any]] = body["posts"]
    return posts


# Platform API ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_create_records_the_post_and_its_page_resolves(client: httpx.AsyncClient) -> None:
    response = await client.post(
        POSTS, json={"text": "Launch <day>", "media": ["a.png"], "client_key": "k1"}, headers=AUTH
    )
    assert response.status_code == 201
    created = response.json()
    assert created == {
        "id": "sandbox-1",
        "url": "http://sandbox.test/p/sandbox/acme/sandbox-1",
        "created_at": "2023-11-14T22:13:20.400Z",
    }
    [post] = await recorded(client)
    assert post["text"] == "Launch <day>" and post["media"] == ["a.png"]
    assert post["fingerprint"] == hashlib.sha256(b"Launch <day>").hexdigest()
    page = await client.get(created["url"])
    assert page.status_code == 200 and "Launch &lt;day&gt;" in page.text
    assert (await client.get("/p/sandbox/acme/sandbox-99")).status_code == 404


@pytest.mark.anyio
async def test_create_without_bearer_token_is_refused_and_not_recorded(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(POSTS, json={"text": "hello", "client_key": "k1"})
    assert response.status_code == 401 and response.json()["error"] == "auth_required"
    assert await recorded(client) == []


@pytest.mark.anyio
async def test_idempotency_key_header_stands_in_for_a_missing_client_key(
    client: httpx.AsyncClient,
) -> None:
    headers = {**AUTH, "Idempotency-Key": "idem-7"}
    assert (await client.post(POSTS, json={"text": "hi"}, headers=headers)).status_code == 201
    [post] = await recorded(client)
    assert post["client_key"] == "idem-7"


@pytest.mark.anyio
async def test_content_is_validated_like_a_platform(client: httpx.AsyncClient) -> None:
    empty = await create(client, "   ")
    assert empty.status_code == 400
    assert empty.json() == {"error": "invalid_content", "message": "text is empty"}
    too_long = await create(client, "x" * 512)
    assert too_long.status_code == 400
    assert too_long.json()["message"] == "text is 512 characters; the limit is 500"
    assert (await create(client, "x" * 500)).status_code == 201
    malformed = await client.post(POSTS, content=b"not json", headers=AUTH)
    assert malformed.status_code == 400 and malformed.json()["error"] == "invalid_request"
    assert len(await recorded(client)) == 1


@pytest.mark.anyio
async def test_the_sandbox_never_deduplicates_and_reports_duplicates(
    client: httpx.AsyncClient,
) -> None:
    first, second = await create(client, key="k1"), await create(client, key="k1")
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    await create(client, "same words", key="")
    await create(client, "same words", key="")
    await create(client, key="k2")  # a different key is a different post
    duplicates = (await client.get("/admin/duplicates")).json()["duplicates"]
    assert duplicates == [
        {
            "platform": "sandbox",
            "account": "acme",
            "client_key": "k1",
            "count": 2,
            "ids": ["sandbox-1", "sandbox-2"],
        },
        {
            "platform": "sandbox",
            "account": "acme",
            "client_key": "",
            "count": 2,
            "ids": ["sandbox-3", "sandbox-4"],
        },
    ]


@pytest.mark.anyio
async def test_lookup_finds_an_earlier_post_by_client_key_or_fingerprint(
    client: httpx.AsyncClient,
) -> None:
    created = (await create(client, "reconcile me", key="job-1")).json()
    await create(client, "something else", key="job-2")
    by_key = await client.get(POSTS, params={"client_key": "job-1"}, headers=AUTH)
    assert by_key.status_code == 200
    assert by_key.json() == {
        "posts": [
            {
                "id": created["id"],
                "url": created["url"],
                "text": "reconcile me",
                "client_key": "job-1",
                "created_at": created["created_at"],
            }
        ]
    }
    digest = hashlib.sha256(b"reconcile me").hexdigest()
    by_text = await client.get(POSTS, params={"fingerprint": digest}, headers=AUTH)
    assert [post["id"] for post in by_text.json()["posts"]] == [created["id"]]
    missing = await client.get(POSTS, params={"client_key": "job-3"}, headers=AUTH)
    assert missing.status_code == 200 and missing.json() == {"posts": []}
    other_account = await client.get(
        "/api/sandbox/accounts/other/posts", params={"client_key": "job-1"}, headers=AUTH
    )
    assert other_account.json() == {"posts": []}


@pytest.mark.anyio
async def test_me_reports_login_state_set_by_admin(client: httpx.AsyncClient) -> None:
    me = "/api/sandbox/accounts/acme/me"
    assert (await client.get(me, headers=AUTH)).json() == {"account": "acme", "logged_in": True}
    await client.post("/admin/accounts/sandbox/acme/logout")
    logged_out = await client.get(me, headers=AUTH)
    assert logged_out.status_code == 401
    assert logged_out.json() == {
        "error": "auth_required",
        "message": "session expired; log in again",
    }
    assert (await create(client)).status_code == 401  # an expired session cannot post either
    await client.post("/admin/accounts/sandbox/acme/login")
    assert (await client.get(me, headers=AUTH)).status_code == 200


# Faults ---------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", ["seconds", "http_date", "reset_unix"])
async def test_rate_limit_says_when_to_come_back(client: httpx.AsyncClient, fmt: str) -> None:
    await inject(client, "rate_limit", retry_after_seconds=2.5, retry_after_format=fmt)
    limited = await create(client)
    assert limited.status_code == 429
    assert limited.json() == {
        "error": "rate_limited",
        "message": "Rate limit exceeded. Please try again in 3 seconds.",
        "retry_after": 3,
    }
    back_at = math.ceil(NOW + 2.5)
    if fmt == "seconds":
        assert limited.headers["Retry-After"] == "3"
    elif fmt == "http_date":
        assert parsedate_to_datetime(limited.headers["Retry-After"]).timestamp() == back_at
    else:
        assert "Retry-After" not in limited.headers
        assert limited.headers["X-RateLimit-Reset"] == str(back_at)
    assert await recorded(client) == []
    assert (await create(client)).status_code == 201  # the fault was used up


@pytest.mark.anyio
async def test_auth_fault_logs_the_account_out_until_login(client: httpx.AsyncClient) -> None:
    await inject(client, "auth", account="acme")
    refused = await create(client)
    assert refused.status_code == 401 and refused.json()["error"] == "auth_required"
    me = await client.get("/api/sandbox/accounts/acme/me", headers=AUTH)
    assert me.status_code == 401
    assert (await create(client)).status_code == 401  # no fault left, but still logged out
    await client.post("/admin/accounts/sandbox/acme/login")
    assert (await create(client)).status_code == 201


@pytest.mark.anyio
async def test_invalid_fault_rejects_the_content(client: httpx.AsyncClient) -> None:
    await inject(client, "invalid", message="links are not allowed")
    response = await create(client)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_content", "message": "links are not allowed"}
    assert await recorded(client) == []


@pytest.mark.anyio
async def test_server_error_fault_uses_the_requested_status(client: httpx.AsyncClient) -> None:
    await inject(client, "server_error")
    await inject(client, "server_error", status=503)
    assert (await create(client)).status_code == 500
    unavailable = await create(client)
    assert unavailable.status_code == 503 and unavailable.json()["error"] == "server_error"
    assert await recorded(client) == []


@pytest.mark.anyio
async def test_hang_answers_504_only_after_the_hang(client: httpx.AsyncClient) -> None:
    await inject(client, "hang", hang_seconds=0.2)
    started = time.monotonic()
    response = await create(client)
    assert time.monotonic() - started >= 0.2
    assert response.status_code == 504 and response.json()["error"] == "timeout"
    assert await recorded(client) == []


@pytest.mark.anyio
async def test_duplicate_fault_points_at_the_existing_post(client: httpx.AsyncClient) -> None:
    await inject(client, "duplicate")
    first_try = await create(client, key="k1")
    assert first_try.status_code == 409 and first_try.json()["existing_id"] is None
    existing = (await create(client, key="k1")).json()["id"]
    await inject(client, "duplicate")
    again = await create(client, key="k1")
    assert again.status_code == 409
    assert again.json() == {
        "error": "duplicate",
        "message": "this post already exists",
        "existing_id": existing,
    }
    assert [post["id"] for post in await recorded(client)] == [existing]


@pytest.mark.anyio
async def test_accept_then_fail_records_the_post_the_client_never_hears_of(
    client: httpx.AsyncClient,
) -> None:
    await inject(client, "accept_then_fail")
    response = await create(client, "lost response", key="job-9")
    assert response.status_code == 500
    [post] = await recorded(client)
    assert post["client_key"] == "job-9"
    # This is what a reconciling retry must find instead of posting again.
    found = await client.get(POSTS, params={"client_key": "job-9"}, headers=AUTH)
    assert [p["id"] for p in found.json()["posts"]] == [post["id"]]


@pytest.mark.anyio
async def test_accept_then_hang_records_the_post_and_never_answers_in_time(
    client: httpx.AsyncClient,
) -> None:
    await inject(client, "accept_then_hang", hang_seconds=30)
    answered: list[httpx.Response] = []
    async with anyio.create_task_group() as tg:

        async def send() -> None:
            answered.append(await create(client, "made, then silence", key="job-10"))

        tg.start_soon(send)
        posts: list[dict[str, Any]] = []
        with anyio.fail_after(5):
            while not posts:  # the post is made while the client still waits for an answer
                posts = await recorded(client)
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert answered == []
    assert [p["client_key"] for p in posts] == ["job-10"]


@pytest.mark.anyio
async def test_faults_fire_in_order_count_down_and_match_any_account(
    client: httpx.AsyncClient,
) -> None:
    wildcard = await inject(client, "server_error", account="*", count=2)
    await inject(client, "rate_limit", account="acme")
    await inject(client, "invalid", account="other-brand")
    pending = (await client.get("/admin/faults")).json()["faults"]
    assert [(f["id"], f["kind"], f["remaining"]) for f in pending] == [
        (wildcard, "server_error", 2),
        (ANY, "rate_limit", 1),
        (ANY, "invalid", 1),
    ]
    assert (await create(client, account="zeta")).status_code == 500
    remaining = (await client.get("/admin/faults")).json()["faults"][0]["remaining"]
    assert remaining == 1
    assert (await create(client, account="acme")).status_code == 500
    assert (await create(client, account="acme")).status_code == 429
    assert (await create(client, account="acme")).status_code == 201
    [left] = (await client.get("/admin/faults")).json()["faults"]
    assert left["account"] == "other-brand"
    assert (await client.delete("/admin/faults")).json() == {"cleared": 1}
    assert (await create(client, account="other-brand")).status_code == 201


@pytest.mark.anyio
async def test_faults_only_hit_the_operation_they_name(client: httpx.AsyncClient) -> None:
    await inject(client, "server_error", op="lookup")
    assert (await create(client)).status_code == 201
    assert (await client.get(POSTS, headers=AUTH)).status_code == 500
    await inject(client, "rate_limit", op="any")
    assert (await client.get("/api/sandbox/accounts/acme/me", headers=AUTH)).status_code == 429
    stats = (await client.get("/admin/stats")).json()
    assert stats["requests"] == {"create": 1, "lookup": 1, "me": 1}
    assert stats["faults_fired"] == {"server_error": 1, "rate_limit": 1}
    assert stats["posts"] == 1


@pytest.mark.anyio
async def test_a_mistyped_fault_is_refused(client: httpx.AsyncClient) -> None:
    typo = await client.post("/admin/faults", json={"kind": "rate_limit", "retry_after": 5})
    assert typo.status_code == 400 and "retry_after" in typo.json()["message"]
    unknown = await client.post("/admin/faults", json={"kind": "meltdown"})
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_fault"
    assert (await client.get("/admin/faults")).json() == {"faults": []}


@pytest.mark.anyio
async def test_reset_forgets_everything_but_never_reuses_an_id(client: httpx.AsyncClient) -> None:
    await create(client)
    await inject(client, "server_error")
    await client.post("/admin/accounts/sandbox/acme/logout")
    assert (await client.post("/admin/reset")).status_code == 200
    assert await recorded(client) == []
    assert (await client.get("/admin/faults")).json() == {"faults": []}
    stats = (await client.get("/admin/stats")).json()
    assert stats["requests"] == {} and stats["posts"] == 0
    after = await create(client)
    assert after.status_code == 201  # logged in again and no fault left
    assert after.json()["id"] == "sandbox-2"
    assert (await client.get("/healthz")).text == "ok"


# Real HTTP ------------------------------------------------------------------------------------


async def hanging(http: httpx.AsyncClient, base: str, expected: int) -> bool:
    return bool((await http.get(f"{base}/admin/stats")).json()["hanging"] == expected)


async def poll_until(check: Callable[[], Awaitable[bool]]) -> None:
    with anyio.fail_after(POLL_DEADLINE_SECONDS):
        while not await check():  # noqa: ASYNC110 - the state is in a server; there is no event
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_real_server_client_timeout_on_hang_and_prompt_shutdown() -> None:
    answers: list[int] = []
    async with httpx.AsyncClient(headers=AUTH) as http, anyio.create_task_group() as clients:
        async with anyio.create_task_group() as server:
            base = (await server.start(partial(serve, port=0))).base_url
            await http.post(f"{base}/admin/faults", json={"kind": "hang", "hang_seconds": 30})
            with pytest.raises(httpx.ReadTimeout):
                await http.post(f"{base}{POSTS}", json={"text": "x"}, timeout=0.2)
            # The server notices the client gave up and stops hanging on its behalf.
            await poll_until(lambda: hanging(http, base, 0))
            assert (await http.post(f"{base}{POSTS}", json={"text": "x"})).status_code == 201

            async def patient_client() -> None:
                response = await http.post(f"{base}{POSTS}", json={"text": "y"}, timeout=30)
                answers.append(response.status_code)

            await http.post(f"{base}/admin/faults", json={"kind": "hang", "hang_seconds": 30})
            clients.start_soon(patient_client)
            await poll_until(lambda: hanging(http, base, 1))
            stopping = time.monotonic()
            server.cancel_scope.cancel()
        # Stopping does not wait out the 30 s hang: the hung request is answered at once.
        assert time.monotonic() - stopping < 1.5
    assert answers == [504]


@pytest.fixture
def sandbox_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    ready_file = tmp_path / "sandbox.port"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox",
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not ready_file.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "sandbox did not become ready"
            time.sleep(0.02)
        yield process, f"http://127.0.0.1:{int(ready_file.read_text())}"
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.communicate()


def test_sandbox_process_serves_posts_and_admin_over_real_http(
    sandbox_process: tuple[subprocess.Popen[str], str],
) -> None:
    process, base_url = sandbox_process
    with SandboxAdmin(base_url) as admin, httpx.Client(base_url=base_url, headers=AUTH) as http:
        assert admin.stats()["posts"] == 0
        created = http.post(POSTS, json={"text": "over the wire", "client_key": "k1"}).json()
        assert http.get(created["url"]).status_code == 200
        http.post(POSTS, json={"text": "over the wire", "client_key": "k1"})
        assert [post["id"] for post in admin.posts(account="acme")] == [created["id"], "sandbox-2"]
        assert admin.posts(platform="x") == []
        [group] = admin.duplicates()
        assert group["client_key"] == "k1" and group["count"] == 2

        fault_id = admin.inject("rate_limit", account="acme", retry_after_seconds=7)
        assert [fault["id"] for fault in admin.faults()] == [fault_id]
        limited = http.post(POSTS, json={"text": "later", "client_key": "k2"})
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
        admin.inject("server_error", count=3)
        admin.clear_faults()
        assert admin.faults() == []

        admin.set_logged_in("sandbox", "acme", False)
        assert http.get("/api/sandbox/accounts/acme/me").status_code == 401
        admin.set_logged_in("sandbox", "acme", True)
        assert http.get("/api/sandbox/accounts/acme/me").status_code == 200

        admin.reset()
        assert admin.posts() == [] and admin.duplicates() == []
        # Many posts on one keep-alive connection, as the soak sends them (speed is measured by
        # `make bench`, not asserted here).
        for n in range(100):
            http.post(POSTS, json={"text": f"soak {n}", "client_key": f"soak-{n}"})
        assert admin.stats()["posts"] == 100 and admin.duplicates() == []
        with pytest.raises(AdminError) as refused:
            admin.inject("rate_limit", status=404)
        assert refused.value.status == 400

    os.kill(process.pid, signal.SIGTERM)
    stdout, _ = process.communicate(timeout=5)
    assert process.returncode == 0
    assert stdout == f"sandbox listening on {base_url}\n"


def test_sandbox_refuses_a_busy_port_with_a_clear_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["--listen", f"127.0.0.1:{port}"]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
