"""The X adapter without processes: how X's answers map to error classes (bodies and headers as
X documents them, or as X was seen sending them), whether a timeline tweet is the job's post,
media rules, and the client against the X stand-in in process (refresh once, rotation written
back, chunked upload with processing, reconciliation through t.co links)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from postroom.clock import FakeClock, SystemClock
from sandbox.standins.x import create_app, x_state
from worker.accounts import AccountConfig, Secret
from worker.adapters.base import JobSpec
from worker.adapters.png import render_card
from worker.errors import AuthRequired, Duplicate, InvalidContent, RateLimited, Transient
from worker.media import MediaFile, MediaLoader
from worker.platforms.base import PlatformContext, Transcript
from worker.platforms.x import XClient
from worker.platforms.x_rules import check_media, same_post
from worker.redact import Redactor

pytestmark = pytest.mark.anyio
BASE = "http://x.test"
NOW = 1_682_422_100.0  # shortly before the resets quoted below (April 2023)


def client_for(
    *,
    clock: FakeClock | SystemClock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    credentials: Mapping[str, str] | None = None,
    files: Mapping[str, Path] | None = None,
    media_dir: Path | None = None,
    options: Mapping[str, int] | None = None,
) -> XClient:
    redactor = Redactor()
    values = dict(credentials or {"access_token": "AT-1", "refresh_token": "RT-1"})
    values.setdefault("client_id", "client-1")
    secrets = {
        name: Secret(
            value,
            name=name,
            source=f"file:{files[name]}" if files and name in files else "inline",
            redactor=redactor,
            path=files.get(name) if files else None,
        )
        for name, value in values.items()
    }
    account = AccountConfig(
        platform="x",
        account="acme",
        base_url=BASE,
        credentials=secrets,
        options=dict(options or {}),
    )
    ctx = PlatformContext(
        clock=clock or FakeClock(NOW),
        media=MediaLoader(media_dirs=[media_dir] if media_dir else []),
        redactor=redactor,
        transport=transport,
    )
    return XClient(account, ctx)


def answer(status: int, body: object = None, headers: Mapping[str, str] | None = None) -> Any:
    content = b"" if body is None else json.dumps(body).encode()
    request = httpx.Request("POST", f"{BASE}/2/tweets")
    return httpx.Response(status, content=content, headers=headers, request=request)


# ---- error mapping: X's bodies -------------------------------------------------------------------

DUPLICATE_BODY = {  # seen from api.x.com, 2026 (akrherz/iembot#163)
    "detail": "You are not allowed to create a Tweet with duplicate content.",
    "type": "about:blank",
    "title": "Forbidden",
    "status": 403,
}
NOT_PERMITTED_BODY = {
    "detail": "You are not permitted to perform this action.",
    "type": "about:blank",
    "title": "Forbidden",
    "status": 403,
}
CLIENT_FORBIDDEN_BODY = {
    "client_id": "12345",
    "detail": "When authenticating requests to the Twitter API v2 endpoints, you must use keys "
    "and tokens from a Twitter developer App that is attached to a Project.",
    "registration_url": "https://developer.twitter.com/en/docs/projects/overview",
    "title": "Client Forbidden",
    "required_enrollment": "Appropriate Level of API Access",
    "reason": "client-not-enrolled",
    "type": "https://api.twitter.com/2/problems/client-forbidden",
}
INVALID_BODY = {
    "errors": [
        {"parameters": {"media.media_ids": ["1"]}, "message": "Your media IDs are invalid."}
    ],
    "title": "Invalid Request",
    "detail": "One or more parameters to your request was invalid.",
    "type": "https://api.x.com/2/problems/invalid-request",
}


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    body: object
    expected: type[Exception]


ERROR_CASES = [
    Case("duplicate content", 403, DUPLICATE_BODY, Duplicate),
    Case(
        "v1.1 duplicate",
        403,
        {"errors": [{"code": 187, "message": "Status is a duplicate."}]},
        Duplicate,
    ),
    Case("not permitted", 403, NOT_PERMITTED_BODY, AuthRequired),
    Case("client forbidden", 403, CLIENT_FORBIDDEN_BODY, AuthRequired),
    Case(
        "unauthorized",
        401,
        {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"},
        AuthRequired,
    ),
    Case("invalid request", 400, INVALID_BODY, InvalidContent),
    Case(
        "not found",
        404,
        {"title": "Not Found", "type": "about:blank", "status": 404},
        InvalidContent,
    ),
    Case(
        "service unavailable",
        503,
        {"title": "Service Unavailable", "type": "about:blank"},
        Transient,
    ),
    Case("internal error", 500, None, Transient),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c.name)
def test_error_classes_from_x_bodies(case: Case) -> None:
    error = client_for().error_for(answer(case.status, case.body))
    assert type(error) is case.expected
    assert error.http_status == case.status
    assert error.message.startswith(f"x: HTTP {case.status}")


def test_messages_say_what_x_said() -> None:
    invalid = client_for().error_for(answer(400, INVALID_BODY))
    assert "Your media IDs are invalid." in invalid.message
    assert "Invalid Request" in invalid.message
    auth = client_for().error_for(answer(403, NOT_PERMITTED_BODY))
    assert "You are not permitted to perform this action." in auth.message
    assert "tweet.write" in auth.message  # the hint: what the account owner must fix


# ---- error mapping: X's rate-limit headers ------------------------------------------------

TOO_MANY = {
    "title": "Too Many Requests",
    "detail": "Too Many Requests",
    "type": "about:blank",
    "status": 429,
}


def rate_limited(headers: Mapping[str, str], body: object = TOO_MANY) -> RateLimited:
    error = client_for().error_for(answer(429, body, headers))
    assert isinstance(error, RateLimited)
    return error


def test_429_throttle_closes_until_x_rate_limit_reset() -> None:
    # Headers as X sends them on POST /2/tweets (plhery/node-twitter-api-v2#469, 2023-04-25).
    error = rate_limited(
        {
            "x-rate-limit-limit": "40000",
            "x-rate-limit-remaining": "0",
            "x-rate-limit-reset": "1682422975",
        }
    )
    assert error.retry_at == 1682422975
    assert not error.quota_cap
    assert "throttled" in error.message


def test_429_docs_example_with_errors_body() -> None:
    # docs.x.com/fundamentals/rate-limits: headers and the `errors` body of its example.
    error = rate_limited(
        {
            "x-rate-limit-limit": "900",
            "x-rate-limit-remaining": "0",
            "x-rate-limit-reset": "1682423800",
        },
        {"errors": [{"code": 88, "message": "Rate limit exceeded"}]},
    )
    assert error.retry_at == 1682423800
    assert "Rate limit exceeded" in error.message


def test_429_user_24_hour_cap_closes_until_its_reset() -> None:
    # The 15-minute window still has room; the user's 24-hour allowance is spent.
    error = rate_limited(
        {
            "x-rate-limit-limit": "100",
            "x-rate-limit-remaining": "97",
            "x-rate-limit-reset": "1682422900",
            "x-user-limit-24hour-limit": "100",
            "x-user-limit-24hour-remaining": "0",
            "x-user-limit-24hour-reset": "1682500000",
            "x-app-limit-24hour-limit": "1667",
            "x-app-limit-24hour-remaining": "1200",
            "x-app-limit-24hour-reset": "1682490000",
        }
    )
    assert error.retry_at == 1682500000
    assert error.quota_cap
    assert "quota cap" in error.message


def test_429_app_24_hour_cap_closes_until_its_reset() -> None:
    error = rate_limited(
        {
            "x-rate-limit-reset": "1682422900",
            "x-app-limit-24hour-limit": "1667",
            "x-app-limit-24hour-remaining": "0",
            "x-app-limit-24hour-reset": "1682490000",
        }
    )
    assert (error.retry_at, error.quota_cap) == (1682490000, True)


def test_429_without_headers_waits_the_default() -> None:
    error = rate_limited({})
    assert error.retry_at == NOW + 60 and not error.quota_cap


# ---- is this tweet the job's post? ------------------------------------------------------------


@pytest.mark.parametrize(
    ("job_text", "has_media", "shown", "same"),
    [
        ("Hello world!", False, "Hello world!", True),
        (
            "Launch: https://example.com/a?b=1 today",
            False,
            "Launch: https://t.co/abcDEF1234 today",
            True,
        ),
        ("see postroom.dev.", False, "see https://t.co/abcDEF1234.", True),
        ("Q&A <live>", False, "Q&amp;A &lt;live&gt;", True),
        ("line one\nline two ", False, "line one\nline two", True),
        ("with a picture", True, "with a picture https://t.co/xYz0123456", True),
        ("", True, "https://t.co/xYz0123456", True),
        ("with a picture", False, "with a picture https://t.co/xYz0123456", False),
        ("Hello world!", False, "Hello world", False),
        ("Launch day", False, "Launch day 2", False),
    ],
)
def test_same_post(job_text: str, has_media: bool, shown: str, same: bool) -> None:
    assert same_post(job_text, has_media, shown) is same


# ---- media rules -------------------------------------------------------------------------------


def media(content_type: str, size: int = 10) -> MediaFile:
    return MediaFile(reference="r", filename="f", content_type=content_type, data=b"\0" * size)


def test_media_rules() -> None:
    check_media([media("image/png")] * 4)
    check_media([media("video/mp4")])
    with pytest.raises(InvalidContent, match="at most 4 images"):
        check_media([media("image/png")] * 5)
    with pytest.raises(InvalidContent, match="one GIF or one video"):
        check_media([media("image/gif"), media("image/png")])
    with pytest.raises(InvalidContent, match="at most 5242880"):
        check_media([media("image/jpeg", 5 * 2**20 + 1)])


# ---- the client against the stand-in, in process ------------------------------------------------


@dataclass
class Bench:
    app: Starlette
    http: httpx.AsyncClient

    async def account(self, username: str, **extra: object) -> dict[str, Any]:
        body = {
            "username": username,
            "access_token": f"{username}-AT",
            "refresh_token": f"{username}-RT",
            "client_id": "client-1",
            **extra,
        }
        response = await self.http.post("/_standin/accounts", json=body)
        assert response.status_code == 201
        return body

    async def get(self, path: str) -> Any:
        return (await self.http.get(path)).json()

    async def fault(self, **fault: object) -> None:
        assert (await self.http.post("/_standin/faults", json=fault)).status_code == 201

    def client(self, creds: dict[str, Any], **kwargs: Any) -> XClient:
        wanted = {k: creds[k] for k in ("access_token", "refresh_token", "client_id")}
        if "client_secret" in creds:
            wanted["client_secret"] = creds["client_secret"]
        return client_for(
            clock=SystemClock(),
            transport=httpx.ASGITransport(app=self.app),
            credentials=wanted,
            **kwargs,
        )


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    app = create_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        yield Bench(app, http)


def job(text: str, media_refs: tuple[str, ...] = ()) -> JobSpec:
    return JobSpec(job_id="j1", platform="x", account="acme", text=text, media=media_refs)


async def test_concurrent_401s_refresh_once(bench: Bench) -> None:
    creds = await bench.account("alice", client_secret="s3cret-value")
    client = bench.client(creds)
    await bench.http.post("/_standin/accounts/alice/expire")

    async def publish(n: int) -> None:
        prepared = await client.prepare(job(f"post {n}"), Transcript(Redactor()))
        await client.commit(job(f"post {n}"), prepared, Transcript(Redactor()))

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(publish, n)
    stats = await bench.get("/_standin/stats")
    assert stats["requests"]["token_refresh"] == 1  # one refresh served all three
    assert stats["tweets"] == 3
    current = await bench.get("/_standin/accounts/alice")
    assert client._access.reveal() == current["access_token"]


async def test_rotated_refresh_token_is_written_to_its_file(bench: Bench, tmp_path: Path) -> None:
    creds = await bench.account("bob")
    token_file = tmp_path / "x-refresh-token"
    token_file.write_text(creds["refresh_token"] + "\n")
    client = bench.client(creds, files={"refresh_token": token_file})
    await bench.http.post("/_standin/accounts/bob/expire")
    t = Transcript(Redactor())
    assert await client.check_login(t)
    current = await bench.get("/_standin/accounts/bob")
    assert token_file.read_text() == current["refresh_token"] + "\n"
    assert current["refresh_token"] != creds["refresh_token"]
    assert any(f"written to file:{token_file}" in line for line in t.lines)


async def test_refresh_refused_is_auth_required(bench: Bench) -> None:
    creds = await bench.account("carol")
    client = bench.client(creds)
    await bench.http.post("/_standin/accounts/carol/revoke")
    with pytest.raises(AuthRequired, match="Value passed for the token was invalid"):
        await client.commit(
            job("hi"),
            (await client.prepare(job("hi"), Transcript(Redactor()))),
            Transcript(Redactor()),
        )
    assert not await client.check_login(Transcript(Redactor()))


async def test_video_upload_in_chunks_waits_for_processing(bench: Bench, tmp_path: Path) -> None:
    creds = await bench.account("dave")
    video = b"\0\0\0\x18ftypmp42" + bytes(range(256)) * 4
    (tmp_path / "clip.mp4").write_bytes(video)
    client = bench.client(creds, media_dir=tmp_path, options={"media_chunk_bytes": 300})
    t = Transcript(Redactor())
    prepared = await client.prepare(job("a clip", ("clip.mp4",)), t)
    appends = [
        line for line in t.lines if line.startswith("POST /2/media/upload/") and "/append" in line
    ]
    assert len(appends) == 4  # 1036 bytes in 300-byte segments
    assert any(line.startswith("GET /2/media/upload?command=STATUS") for line in t.lines)
    published = await client.commit(job("a clip", ("clip.mp4",)), prepared, t)
    [tweet] = (await bench.get("/_standin/tweets?username=dave"))["tweets"]
    assert tweet["id"] == published.post_id
    assert prepared.payload["media"] == {"media_ids": tweet["media_ids"]}


async def test_media_processing_failure_is_invalid_content(bench: Bench, tmp_path: Path) -> None:
    creds = await bench.account("erin")
    (tmp_path / "card.png").write_bytes(render_card("t", ["x"]))
    await bench.fault(kind="processing_failed", username="erin", op="media")
    client = bench.client(creds, media_dir=tmp_path)
    with pytest.raises(InvalidContent, match=r"could not process card\.png"):
        await client.prepare(job("pic", ("card.png",)), Transcript(Redactor()))


async def test_verify_finds_the_tweet_through_tco_links_and_media(
    bench: Bench, tmp_path: Path
) -> None:
    creds = await bench.account("frank")
    (tmp_path / "card.png").write_bytes(render_card("t", ["x"]))
    client = bench.client(creds, media_dir=tmp_path)
    text = "Read https://example.com/launch?x=1 & postroom.dev <3"
    spec = job(text, ("card.png",))
    published = await client.commit(
        spec, await client.prepare(spec, Transcript(Redactor())), Transcript(Redactor())
    )
    [tweet] = (await bench.get("/_standin/tweets?username=frank"))["tweets"]
    assert "t.co" in tweet["shown_text"] and "&amp;" in tweet["shown_text"]
    assert await client.verify(spec, Transcript(Redactor())) == published
    assert await client.verify(job("something else"), Transcript(Redactor())) is None


async def test_standin_429_headers_become_the_gate_instant(bench: Bench) -> None:
    creds = await bench.account("gina")
    client = bench.client(creds)
    await bench.fault(kind="user_cap", username="gina", reset_in_s=3600)
    with pytest.raises(RateLimited) as caught:
        await client.commit(
            job("capped"),
            await client.prepare(job("capped"), Transcript(Redactor())),
            Transcript(Redactor()),
        )
    assert caught.value.quota_cap
    assert caught.value.retry_at == pytest.approx(x_state(bench.app).clock() + 3600, abs=2)


async def test_standin_enforces_the_users_24_hour_tweet_cap(bench: Bench) -> None:
    creds = await bench.account("hank", tweets_per_day=1)
    client = bench.client(creds)
    await client.commit(
        job("one"), await client.prepare(job("one"), Transcript(Redactor())), Transcript(Redactor())
    )
    t = Transcript(Redactor())
    with pytest.raises(RateLimited) as caught:
        await client.commit(job("two"), await client.prepare(job("two"), t), t)
    assert caught.value.quota_cap
    assert "< x-user-limit-24hour-remaining: 0" in t.lines
    reset = next(line for line in t.lines if line.startswith("< x-user-limit-24hour-reset: "))
    assert caught.value.retry_at == int(reset.rpartition(" ")[2])
