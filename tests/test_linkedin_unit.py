"""LinkedIn adapter without processes: the little text format (cases from LinkedIn's docs, and a
property: what a reader sees is what the author wrote), error mapping from LinkedIn's real
answers, account configuration, and the client against the stand-in in-process (token refresh
one at a time, reconciling, a bare 429's midnight)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom.clock import FakeClock
from sandbox.standins.linkedin import create_app
from sandbox.standins.linkedin_model import render
from worker.accounts import AccountConfig, AccountsError, Secret
from worker.adapters.base import JobSpec
from worker.errors import AuthRequired, Duplicate, InvalidContent, RateLimited, Transient
from worker.media import MediaLoader
from worker.platforms.base import PlatformContext, Transcript
from worker.platforms.linkedin import LinkedInClient
from worker.platforms.linkedin_text import to_little, to_plain
from worker.redact import Redactor

pytestmark = pytest.mark.anyio

AUTHOR = "urn:li:person:unit1"
BASE = "http://linkedin.test"
NOW = datetime(2026, 11, 29, 17, 0, tzinfo=UTC).timestamp()
NEXT_MIDNIGHT = datetime(2026, 11, 30, tzinfo=UTC).timestamp()

# ---- the little text format ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plain", "little"),
    [
        ("Hello World", "Hello World"),  # TextElement
        ("#hashtag", "{hashtag|\\#|hashtag}"),  # HashtagTemplate, as the docs write it
        ("Our results (Q3)", "Our results \\(Q3\\)"),  # unescaped, LinkedIn cuts the post here
        (
            "a|b{c}d@e[f]g(h)i<j>k#l*m_n~o\\p",
            "a\\|b\\{c\\}d\\@e\\[f\\]g\\(h\\)i\\<j\\>k\\#l\\*m\\_n\\~o\\\\p",
        ),
        (
            "@[Eddy](urn:li:person:1234)",
            "\\@\\[Eddy\\]\\(urn:li:person:1234\\)",
        ),  # text, not a mention
        ("C# and #1 stay text", "C\\# and \\#1 stay text"),
        ("#foo_bar is not a tag", "\\#foo\\_bar is not a tag"),
        ("Unicode #café ✅", "Unicode {hashtag|\\#|café} ✅"),
    ],
)
def test_little_escapes_every_reserved_character(plain: str, little: str) -> None:
    assert to_little(plain) == little
    assert to_plain(little) == plain


def test_plain_reads_the_docs_elements() -> None:
    assert to_plain("Hi @[Eddy](urn:li:person:1234) {hashtag|\\#|launch}") == "Hi Eddy #launch"


@given(st.text())
def test_what_a_reader_sees_is_what_the_author_wrote(text: str) -> None:
    little = to_little(text)
    assert to_plain(little) == text
    # The stand-in's own reading of little (written apart from the adapter's) agrees, and
    # finds nothing it would cut.
    assert render(little) == (text, False)


def test_the_standin_cuts_at_an_unescaped_reserved_character() -> None:
    assert render("Our results (Q3) are in") == ("Our results ", True)
    assert render("#launch day") == ("#launch day", False)


# ---- error mapping ----------------------------------------------------------------------------


def make_client(
    *,
    options: Mapping[str, str | int] | None = None,
    credentials: Mapping[str, str] | None = None,
    clock: FakeClock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    base_url: str = BASE,
    token_file: Path | None = None,
) -> LinkedInClient:
    redactor = Redactor()
    creds = dict(credentials or {"access_token": "AQXunit-access-token"})
    secrets = {
        name: Secret(
            value,
            name=name,
            source="inline",
            redactor=redactor,
            path=token_file if name == "access_token" else None,
        )
        for name, value in creds.items()
    }
    account = AccountConfig(
        platform="linkedin",
        account="unit",
        base_url=base_url,
        credentials=secrets,
        options={"author": AUTHOR, **(options or {})},
    )
    ctx = PlatformContext(
        clock=clock or FakeClock(NOW),
        media=MediaLoader(),
        redactor=redactor,
        transport=transport,
    )
    return LinkedInClient(account, ctx)


def answer(status: int, body: object, headers: Mapping[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=json.dumps(body).encode(), headers=headers)


# The answer LinkedIn gave a repeated post (as reported in Arisamiga/Linkedin-RSS issue 5).
REAL_DUPLICATE = {
    "errorDetailType": "com.linkedin.common.error.BadRequest",
    "message": "com.linkedin.content.common.exception.BadRequestResponseException: "
    "Content is a duplicate of urn:li:share:7141138937766391808",
    "errorDetails": {
        "inputErrors": [
            {"description": "Duplicate post is detected", "input": {}, "code": "DUPLICATE_POST"}
        ]
    },
    "status": 422,
}


def test_422_duplicate_names_the_existing_post() -> None:
    error = make_client().error_for(answer(422, REAL_DUPLICATE))
    assert isinstance(error, Duplicate)
    assert error.existing_id == "urn:li:share:7141138937766391808"
    assert "BadRequestResponseException" not in error.message


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"status": 401, "serviceErrorCode": 65600, "code": "INVALID_ACCESS_TOKEN",
               "message": "Invalid access token"}, AuthRequired),
        (401, {"status": 401, "serviceErrorCode": 65601, "code": "REVOKED_ACCESS_TOKEN",
               "message": "The token used in the request has been revoked by the user"},
         AuthRequired),
        (403, {"status": 403, "serviceErrorCode": 100, "code": "ACCESS_DENIED",
               "message": "Not enough permissions to access: partnerApiPostsExternal.CREATE"},
         AuthRequired),
        (422, {"status": 422, "code": "UNPROCESSABLE_ENTITY",
               "message": "ERROR :: /commentary :: length exceeds 3000\n"}, InvalidContent),
        (400, {"status": 400, "code": "INVALID_ARGUMENT", "message": "Invalid request"},
         InvalidContent),
        (500, {"message": "Internal Server Error", "status": 500}, Transient),
        (503, {"message": "Service Unavailable", "status": 503}, Transient),
        (504, {"message": "Gateway Timeout", "status": 504}, Transient),
    ],
)  # fmt: skip
def test_error_classes(status: int, body: dict[str, Any], expected: type[Exception]) -> None:
    error = make_client().error_for(answer(status, body))
    assert type(error) is expected
    assert str(body["message"]).strip() in error.message
    if isinstance(error, Transient):
        assert not error.not_created  # LinkedIn never says a 5xx made nothing: verify first


def test_sunset_version_says_what_to_change() -> None:
    body = {
        "status": 426,
        "code": "NONEXISTENT_VERSION",
        "message": "Requested version 202411 is not active",
    }
    error = make_client().error_for(answer(426, body))
    assert isinstance(error, InvalidContent)
    assert "linkedin_version" in error.message


def test_bare_429_is_a_daily_quota_until_midnight_utc() -> None:
    body = {"status": 429, "serviceErrorCode": 101, "code": "TOO_MANY_REQUESTS",
            "message": "Resource level throttle APPLICATION DAY limit for calls to this resource "
            "is reached."}  # fmt: skip
    error = make_client().error_for(answer(429, body))
    assert isinstance(error, RateLimited)
    assert error.retry_at == NEXT_MIDNIGHT
    assert error.quota_cap


def test_429_with_retry_after_is_a_short_throttle() -> None:
    error = make_client().error_for(answer(429, {"status": 429}, {"Retry-After": "30"}))
    assert isinstance(error, RateLimited)
    assert error.retry_at == NOW + 30
    assert not error.quota_cap


# ---- account configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "credentials", "says"),
    [
        ({"author": "me"}, None, "urn:li:person:ID"),
        ({"linkedin_version": "2024-11"}, None, "YYYYMM"),
        ({}, {"access_token": "AQXunit-a", "refresh_token": "AQXunit-r"}, "client_id"),
        ({}, {"refresh_token": "AQXunit-r"}, "access_token"),
    ],
)
def test_bad_account_config_is_refused_at_start(
    options: dict[str, str], credentials: dict[str, str] | None, says: str
) -> None:
    with pytest.raises(AccountsError, match=says):
        make_client(options=options, credentials=credentials)


def test_a_numeric_version_in_toml_is_accepted() -> None:
    assert make_client(options={"linkedin_version": 202609}).version == "202609"


def test_the_token_goes_only_to_linkedin_hosts() -> None:
    client = make_client(base_url="https://api.linkedin.com")
    may = client._may_send_token_to  # a security boundary worth a direct look
    assert may(httpx.URL("https://www.linkedin.com/dms-uploads/x/uploaded-image/0"))
    assert may(httpx.URL("https://api.linkedin.com/rest/images"))
    assert not may(httpx.URL("https://evil.example/linkedin.com"))
    assert not may(httpx.URL("https://notlinkedin.com/upload"))
    assert not may(httpx.URL("http://www.linkedin.com/upload"))


# ---- the client against the stand-in, in process ----------------------------------------------


@dataclass
class Rig:
    clock: FakeClock
    admin: httpx.AsyncClient
    transport: httpx.ASGITransport

    async def member(self, **tokens: str) -> None:
        response = await self.admin.post("/_standin/tokens", json={"member": AUTHOR, **tokens})
        response.raise_for_status()

    async def fault(self, **spec: Any) -> None:
        (await self.admin.post("/_standin/faults", json=spec)).raise_for_status()

    async def requests(self, op: str) -> int:
        """Requests of `op` the stand-in saw (from anyone: a refused refresh names nobody)."""
        stats = (await self.admin.get("/_standin/stats")).json()
        count: int = stats["requests"].get(op, 0)
        return count

    def client(self, **kwargs: Any) -> LinkedInClient:
        return make_client(
            clock=self.clock,
            transport=self.transport,
            options={"oauth_url": f"{BASE}/oauth/v2/accessToken"},
            **kwargs,
        )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock(NOW)
    transport = httpx.ASGITransport(app=create_app(clock=clock.now))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as admin:
        yield Rig(clock, admin, transport)


REFRESHABLE = {
    "access_token": "AQXunit-access-1",
    "refresh_token": "AQXunit-refresh-1",
    "client_id": "unit-client",
    "client_secret": "unit-client-secret",
}


def job(text: str, key: str = "key-1") -> JobSpec:
    return JobSpec(job_id=f"job-{key}", platform="linkedin", account="unit", text=text,
                   platform_key=key)  # fmt: skip


async def test_concurrent_401s_refresh_once(rig: Rig) -> None:
    await rig.member(**REFRESHABLE)
    await rig.fault(kind="auth", op="any")  # the token expires under five jobs at once
    client = rig.client(credentials=REFRESHABLE)
    results: list[bool] = []

    async def look() -> None:
        results.append(await client.check_login(Transcript(Redactor())))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(look)

    assert results == [True] * 5
    assert await rig.requests("token") == 1


async def test_a_refused_refresh_is_auth_required_and_not_asked_again(rig: Rig) -> None:
    await rig.member(**{**REFRESHABLE, "refresh_token": "AQXunit-other-refresh"})
    await rig.fault(kind="auth", op="create")
    client = rig.client(credentials=REFRESHABLE)
    prepared = await client.prepare(job("refused refresh"), Transcript(Redactor()))

    for _ in range(2):
        with pytest.raises(AuthRequired, match="log in again"):
            await client.commit(job("refused refresh"), prepared, Transcript(Redactor()))
    assert await rig.requests("token") == 1


async def test_a_refreshed_token_is_written_back_to_its_file(rig: Rig, tmp_path: Path) -> None:
    token_file = tmp_path / "linkedin-access-token"
    token_file.write_text(REFRESHABLE["access_token"] + "\n")
    await rig.member(**REFRESHABLE)
    await rig.fault(kind="auth", op="create")
    client = rig.client(credentials=REFRESHABLE, token_file=token_file)
    t = Transcript(Redactor())

    published = await client.commit(
        job("kept fresh"), await client.prepare(job("kept fresh"), t), t
    )

    issued = (await rig.admin.get("/_standin/tokens", params={"member": AUTHOR})).json()["issued"]
    assert token_file.read_text() == f"{issued[-1]}\n"
    assert published.post_id.startswith("urn:li:share:")
    assert issued[-1] not in "\n".join(t.lines)


async def test_verify_finds_only_this_text_within_the_window(rig: Rig) -> None:
    await rig.member(access_token="AQXunit-access-token")
    client = rig.client()
    t = Transcript(Redactor())
    text = "Launch (day 1) #launch, 50% off *today*"
    made = await client.commit(job(text), await client.prepare(job(text), t), t)

    assert await client.verify(job(text), t) == made
    assert await client.verify(job(text + "!"), t) is None
    rig.clock.advance(client.verify_window_s + 1)
    assert await client.verify(job(text), t) is None


async def test_a_duplicate_is_found_even_when_posts_cannot_be_read(rig: Rig) -> None:
    await rig.member(access_token="AQXunit-access-token")
    client = rig.client()
    t = Transcript(Redactor())
    first = await client.commit(job("said once"), await client.prepare(job("said once"), t), t)
    again = job("said once", key="key-2")
    with pytest.raises(Duplicate) as dup:
        await client.commit(again, await client.prepare(again, t), t)
    assert dup.value.existing_id == first.post_id

    await rig.fault(kind="forbidden", op="read", count=2)
    assert await client.verify(again, t) == first  # LinkedIn's word, though GET was refused
    assert await client.verify(job("said once", key="key-3"), t) is None  # cannot list: None


async def test_bare_429_from_linkedin_closes_until_midnight(rig: Rig) -> None:
    await rig.member(access_token="AQXunit-access-token")
    await rig.fault(kind="rate_limit", op="create")
    client = rig.client()
    t = Transcript(Redactor())

    with pytest.raises(RateLimited) as limited:
        await client.commit(job("too many"), await client.prepare(job("too many"), t), t)

    assert (limited.value.retry_at, limited.value.quota_cap) == (NEXT_MIDNIGHT, True)
    assert "quota cap until 2026-11-30T00:00:00+00:00" in limited.value.message
