"""The Mastodon adapter in-process: its text rules, its error mapping of Mastodon's real answers,
media processing, and its calls against mastodon-mock (a process) without the coordinator.

The error cases are the bodies and headers Mastodon documents (docs.joinmastodon.org/methods/
statuses, /methods/media, /api/rate-limits) and those mastodon-mock sends. The asynchronous
media processing (202 then 206 until done) is something mastodon-mock never does (it processes
every upload at once), so a small fake instance serves it here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from postroom.clock import Clock, FakeClock, SystemClock
from sandbox.local.mastodon import MastodonMock
from worker.accounts import AccountConfig, AccountsError, OptionValue, Secret
from worker.adapters.base import JobSpec
from worker.adapters.png import render_card
from worker.errors import AuthRequired, InvalidContent, RateLimited, Transient
from worker.media import MediaLoader
from worker.platforms.base import PlatformContext, Transcript
from worker.platforms.mastodon import MastodonClient
from worker.platforms.mastodon_text import status_length, text_of_html
from worker.redact import Redactor

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0
TOKENS = {"alice": "tok-alice", "bob": "tok-bob", "carol": "tok-carol"}


def client(
    base_url: str = "https://mastodon.example",
    *,
    token: str = "tok-alice",
    options: Mapping[str, OptionValue] | None = None,
    clock: Clock | None = None,
    handler: Callable[[httpx.Request], httpx.Response] | None = None,
    media_dir: Path | None = None,
) -> MastodonClient:
    redactor = Redactor()
    secret = Secret(token, name="access_token", source="env:TOKEN", redactor=redactor)
    account = AccountConfig(
        platform="mastodon",
        account="acme",
        base_url=base_url,
        credentials={"access_token": secret} if token else {},
        options=options or {},
    )
    ctx = PlatformContext(
        clock=clock or SystemClock(),
        media=MediaLoader(media_dirs=[media_dir] if media_dir else []),
        redactor=redactor,
        transport=httpx.MockTransport(handler) if handler else None,
    )
    return MastodonClient(account, ctx)


def job(text: str, *, key: str = "pr-key-1", media: tuple[str, ...] = ()) -> JobSpec:
    return JobSpec(
        job_id="job-1",
        platform="mastodon",
        account="acme",
        text=text,
        media=media,
        platform_key=key,
    )


def transcript() -> Transcript:
    return Transcript(Redactor())


def answer(
    status: int, body: object = None, headers: Mapping[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return handle


# ---- text rules (docs.joinmastodon.org/user/posting/#text) ------------------------------------


@pytest.mark.parametrize(
    ("text", "counted"),
    [
        ("a" * 500, 500),
        ("see https://example.com/" + "x" * 200, 4 + 23),  # every URL counts 23
        ("see https://example.com/page.", 4 + 23 + 1),  # the full stop is not the URL's
        ("example.com/path", 16),  # no scheme, no concession
        ("hi @Gargron@mastodon.social", 3 + 8),  # a remote mention counts @username only
        ("hi @Gargron", 3 + 8),
        ("mail me: a@b.org", 16),  # an e-mail address is not a mention
        ("👍🏽 é", 3),  # grapheme clusters: skin tone, combining accent
    ],
)
def test_status_length_counts_as_mastodon_does(text: str, counted: int) -> None:
    assert status_length(text) == counted


def test_text_of_html_reads_mastodons_markup_back() -> None:
    # A status's content as Mastodon renders it: a shortened link, a mention, a hashtag.
    content = (
        '<p>Launch day! <a href="https://example.com/launch/notes" rel="nofollow noopener" '
        'target="_blank"><span class="invisible">https://</span><span class="ellipsis">'
        'example.com/launch/no</span><span class="invisible">tes</span></a></p><p>with '
        '<span class="h-card"><a href="https://mastodon.social/@Gargron" class="u-url mention">'
        '@<span>Gargron</span></a></span> &amp; <a href="https://x.example/tags/postroom" '
        'class="mention hashtag" rel="tag">#<span>postroom</span></a><br />bye</p>'
    )
    assert text_of_html(content) == (
        "Launch day! https://example.com/launch/notes\n\nwith @Gargron & #postroom\nbye"
    )


# ---- configuration ----------------------------------------------------------------------------


def test_a_missing_token_or_a_bad_option_is_refused_at_start() -> None:
    with pytest.raises(AccountsError, match="access_token"):
        client(token="")
    with pytest.raises(AccountsError, match="visibility"):
        client(options={"visibility": "everyone"})
    with pytest.raises(AccountsError, match="max_characters"):
        client(options={"max_characters": 0})


# ---- Mastodon's answers -> error classes ------------------------------------------------------


def error_of(status: int, body: object, headers: Mapping[str, str] | None = None) -> Exception:
    response = httpx.Response(status, json=body, headers=headers)
    return client(clock=FakeClock(NOW)).error_for(response)


def test_auth_errors() -> None:
    invalid = error_of(401, {"error": "The access token is invalid"})
    assert isinstance(invalid, AuthRequired)
    assert invalid.message == "mastodon: HTTP 401: The access token is invalid"
    suspended = error_of(403, {"error": "Your login is currently disabled"})
    assert isinstance(suspended, AuthRequired)
    scope = error_of(403, {"error": "This action is outside the authorized scopes"})
    assert isinstance(scope, AuthRequired)


def test_content_errors_are_terminal() -> None:
    too_long = error_of(422, {"error": "Validation failed: Text character limit of 500 exceeded"})
    assert isinstance(too_long, InvalidContent)
    assert "Text character limit of 500 exceeded" in too_long.message
    bad_file = error_of(422, {"error": "Validation failed: File content type is invalid"})
    assert isinstance(bad_file, InvalidContent)
    assert isinstance(error_of(413, None), InvalidContent)  # the proxy's "too large"


def test_server_errors_are_transient() -> None:
    unavailable = error_of(503, {"error": "Service temporarily unavailable"})
    assert isinstance(unavailable, Transient)
    thumbnail = error_of(500, {"error": "Error processing thumbnail for uploaded media"})
    assert isinstance(thumbnail, Transient)
    html = httpx.Response(502, text="<html><body>Bad Gateway</body></html>")
    bad_gateway = client(clock=FakeClock(NOW)).error_for(html)
    assert isinstance(bad_gateway, Transient)
    assert bad_gateway.message == "mastodon: HTTP 502: Bad Gateway"


def test_rate_limit_with_mastodons_iso_reset() -> None:
    # Mastodon's own 429: X-RateLimit-Reset an ISO 8601 time, no Retry-After.
    headers = {
        "X-RateLimit-Limit": "300",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "2027-01-15T08:05:00.019685Z",
    }
    limited = error_of(429, {"error": "Too many requests"}, headers)
    assert isinstance(limited, RateLimited)
    reset = datetime(2027, 1, 15, 8, 5, 0, 19685, tzinfo=UTC).timestamp()
    assert limited.retry_at == reset


def test_rate_limit_with_epoch_reset_and_retry_after() -> None:
    # mastodon-mock's 429: epoch seconds and Retry-After; the later instant wins.
    headers = {"X-RateLimit-Reset": str(int(NOW) + 120), "Retry-After": "300"}
    limited = error_of(429, {"error": "Too many requests"}, headers)
    assert isinstance(limited, RateLimited)
    assert limited.retry_at == NOW + 300
    assert not limited.quota_cap


def test_the_three_hour_status_limit_is_a_quota_cap() -> None:
    # 300 statuses per 3 hours per account: the reset is hours away.
    headers = {"X-RateLimit-Reset": datetime.fromtimestamp(NOW + 2 * 3600, UTC).isoformat()}
    limited = error_of(429, {"error": "Too many requests"}, headers)
    assert isinstance(limited, RateLimited)
    assert limited.quota_cap
    assert limited.retry_at == NOW + 2 * 3600


# ---- prepare: limits and media processing (a fake instance) -----------------------------------


async def test_too_long_or_too_many_attachments_is_refused_before_any_request() -> None:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    c = client(handler=record)
    with pytest.raises(InvalidContent, match="counts 501 characters; this instance allows 500"):
        await c.prepare(job("x" * 501), transcript())
    with pytest.raises(InvalidContent, match="5 attachments; this instance allows 4"):
        await c.prepare(job("five", media=("a.png",) * 5), transcript())
    bigger = client(handler=record, options={"max_characters": 1000})
    assert (await bigger.prepare(job("x" * 501), transcript())).payload["status"] == "x" * 501
    assert sent == []


class ProcessingInstance:
    """`POST /api/v2/media` answers 202 with `url: null`; `GET /api/v1/media/:id` answers 206
    `pending` times, then 200 with the url (or `final` instead)."""

    def __init__(self, pending: int, *, final: httpx.Response | None = None) -> None:
        self.pending = pending
        self.final = final
        self.polls = 0
        self.uploads: list[httpx.Request] = []
        self.on_poll: Callable[[], None] = lambda: None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        attachment = {"id": "7001", "type": "image", "url": None, "preview_url": "p.png"}
        if request.method == "POST" and request.url.path == "/api/v2/media":
            self.uploads.append(request)
            return httpx.Response(202, json=attachment)
        assert request.url.path == "/api/v1/media/7001"
        self.polls += 1
        self.on_poll()
        if self.polls <= self.pending:
            return httpx.Response(206, json=attachment)
        if self.final is not None:
            return self.final
        return httpx.Response(200, json={**attachment, "url": "https://files.example/7001.png"})


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    (tmp_path / "pic.png").write_bytes(render_card("t", ["x"]))
    return tmp_path


async def test_waits_for_media_processing(media_dir: Path) -> None:
    instance = ProcessingInstance(pending=2)
    c = client(handler=instance, media_dir=media_dir)
    prepared = await c.prepare(job("with a picture", media=("pic.png",)), transcript())
    assert prepared.payload["media_ids"] == ["7001"]
    assert instance.polls == 3
    (upload,) = instance.uploads
    assert b'name="file"; filename="pic.png"' in upload.content
    assert upload.headers["authorization"] == "Bearer tok-alice"


async def test_media_that_never_finishes_processing_is_transient(media_dir: Path) -> None:
    clock = FakeClock(NOW)
    instance = ProcessingInstance(pending=1000)
    instance.on_poll = lambda: clock.advance(100.0)  # each poll "takes" 100 s of the client clock
    c = client(handler=instance, media_dir=media_dir, clock=clock)
    with pytest.raises(Transient, match="media 7001 still processing after 120s"):
        await c.prepare(job("with a picture", media=("pic.png",)), transcript())
    assert instance.polls == 2


async def test_media_that_fails_processing_is_invalid(media_dir: Path) -> None:
    failed = httpx.Response(422, json={"error": "Validation failed: File content type is invalid"})
    c = client(handler=ProcessingInstance(pending=0, final=failed), media_dir=media_dir)
    with pytest.raises(InvalidContent, match="File content type is invalid"):
        await c.prepare(job("with a picture", media=("pic.png",)), transcript())


async def test_a_success_without_a_status_id_is_transient() -> None:
    c = client(handler=answer(200, {"unexpected": True}))
    prepared = await c.prepare(job("hello"), transcript())
    with pytest.raises(Transient, match="without a status id"):
        await c.commit(job("hello"), prepared, transcript())


# ---- against mastodon-mock --------------------------------------------------------------------


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MastodonMock]:
    with MastodonMock(tmp_path_factory.mktemp("mastodon-unit"), TOKENS) as m:
        yield m


async def test_one_idempotency_key_makes_one_status(mock: MastodonMock) -> None:
    c = client(mock.url, token=TOKENS["alice"])
    spec = job("twice sent, once posted")
    prepared = await c.prepare(spec, transcript())
    first = await c.commit(spec, prepared, transcript())
    again = await c.commit(spec, prepared, transcript())
    assert again == first
    assert [s["id"] for s in mock.statuses(TOKENS["alice"])] == [first.post_id]
    # The key is what makes the difference: another key posts a second status.
    other = await c.commit(job("twice sent, once posted", key="pr-key-2"), prepared, transcript())
    assert other.post_id != first.post_id
    assert len(mock.statuses(TOKENS["alice"])) == 2
    await c.aclose()


async def test_verify_finds_the_status_by_its_source_text(mock: MastodonMock) -> None:
    # Text whose HTML loses information: markup characters, a remote mention's domain.
    text = "**Bold** plans with @dave@remote.example\nhttps://example.com/a?b=c"
    c = client(mock.url, token=TOKENS["bob"])
    published = await c.commit(job(text), await c.prepare(job(text), transcript()), transcript())
    t = transcript()
    assert await c.verify(job(text, key="another-attempt"), t) == published
    assert await c.verify(job(text + "!"), transcript()) is None
    assert await c.verify(job(text, media=("pic.png",)), transcript()) is None
    assert not any(line.startswith("POST") for line in t.lines), "verify only reads"
    await c.aclose()


async def test_verify_looks_only_inside_its_window(mock: MastodonMock) -> None:
    text = "posted long before this attempt"
    c = client(mock.url, token=TOKENS["carol"])
    await c.commit(job(text), await c.prepare(job(text), transcript()), transcript())
    days_later = FakeClock(datetime.now(UTC).timestamp() + 2 * 86400)
    late = client(mock.url, token=TOKENS["carol"], clock=days_later)
    assert await late.verify(job(text), transcript()) is None
    await c.aclose()
    await late.aclose()


async def test_check_login(mock: MastodonMock) -> None:
    good = client(mock.url, token=TOKENS["alice"])
    bad = client(mock.url, token="tok-nobody")
    assert await good.check_login(transcript()) is True
    assert await bad.check_login(transcript()) is False
    await good.aclose()
    await bad.aclose()
