"""Meta's error answers and usage headers -> design.md's classes and one "closed until" instant
(cases shaped as in Meta's Graph error-handling, rate-limiting and Instagram error-code pages),
and the adapters' own decisions run in-process against the stand-in (httpx's ASGI transport):
Instagram refuses what it cannot publish before any call, reads the quota's exact reopening
instant, and never makes a second container while one it knows of can still be published.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from meta_helpers import tiny_jpeg

from postroom.clock import FakeClock
from sandbox.standins.meta import create_app
from sandbox.standins.meta_state import MetaState
from worker.accounts import AccountConfig, AccountsError, OptionValue, Secret
from worker.adapters.base import JobSpec
from worker.adapters.png import render_card
from worker.adapters.ratelimit import QUOTA_CAP_THRESHOLD_S
from worker.errors import (
    AdapterError,
    AuthRequired,
    Duplicate,
    InvalidContent,
    RateLimited,
    Transient,
)
from worker.media import MediaLoader
from worker.platforms.base import PlatformContext, Transcript
from worker.platforms.facebook import FacebookClient
from worker.platforms.graph import (
    APP_USAGE_WINDOW_S,
    FALLBACK_WAIT_S,
    graph_error_for,
    meta_rate_limit,
    parse_app_usage,
)
from worker.platforms.instagram import InstagramClient
from worker.redact import Redactor

NOW = 1_800_000_000.0
BASE = "http://graph.test"
PAGE, PAGE_TOKEN = "1001", "unit-page-token-1"
IG, IG_TOKEN = "17841400000000009", "unit-ig-token-1"


def answer(
    status: int, error: Mapping[str, object] | None, headers: Mapping[str, str] | None = None
) -> httpx.Response:
    body = json.dumps({"error": error}).encode() if error is not None else b"<html>oops</html>"
    return httpx.Response(status, content=body, headers=dict(headers or {}))


def meta(code: int, message: str, subcode: int | None = None, **extra: object) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    return {**error, "fbtrace_id": "AbCdEf123", **extra}


def classify(response: httpx.Response) -> AdapterError:
    return graph_error_for(response, platform="facebook", now=NOW)


def buc(*entries: tuple[str, int]) -> str:
    """X-Business-Use-Case-Usage as Meta's docs show it: {business-id: [{type, call_count, ...}]}"""
    return json.dumps(
        {
            business: [
                {
                    "type": "pages",
                    "call_count": 100,
                    "total_cputime": 25,
                    "total_time": 25,
                    "estimated_time_to_regain_access": minutes,
                }
            ]
            for business, minutes in entries
        }
    )


# ---- usage headers ------------------------------------------------------------------------------


def test_app_usage_below_100_percent_says_nothing() -> None:
    assert parse_app_usage('{"call_count": 28, "total_time": 25, "total_cputime": 25}', NOW) is None


@pytest.mark.parametrize("figure", ["call_count", "total_time", "total_cputime"])
def test_app_usage_at_100_percent_of_any_figure_waits_the_rolling_hour(figure: str) -> None:
    usage = {"call_count": 40, "total_time": 40, "total_cputime": 40, figure: 100}
    assert parse_app_usage(json.dumps(usage), NOW) == NOW + APP_USAGE_WINDOW_S


def test_malformed_app_usage_is_ignored() -> None:
    assert parse_app_usage("not json", NOW) is None
    assert parse_app_usage('{"call_count": true}', NOW) is None


def test_buc_minutes_decide_and_the_longest_business_wins() -> None:
    limit = meta_rate_limit({"X-Business-Use-Case-Usage": buc(("1001", 3), ("2002", 19))}, now=NOW)
    assert limit.closed_until == NOW + 19 * 60
    assert limit.source == "x-business-use-case-usage"
    assert limit.quota_cap  # 19 minutes is past the throttle/quota threshold
    short = meta_rate_limit({"x-business-use-case-usage": buc(("1001", 5))}, now=NOW)
    assert (short.closed_until, short.quota_cap) == (NOW + 300, False)


def test_the_latest_signal_wins_and_the_fallback_is_a_floor() -> None:
    both = meta_rate_limit(
        {
            "X-Business-Use-Case-Usage": buc(("1001", 7)),
            "X-App-Usage": '{"call_count": 100, "total_time": 5, "total_cputime": 5}',
        },
        now=NOW,
    )
    assert (both.closed_until, both.source) == (NOW + APP_USAGE_WINDOW_S, "x-app-usage")
    assert NOW + APP_USAGE_WINDOW_S - NOW >= QUOTA_CAP_THRESHOLD_S and both.quota_cap
    zero = meta_rate_limit({"X-Business-Use-Case-Usage": buc(("1001", 0))}, now=NOW)
    assert (zero.closed_until, zero.source, zero.quota_cap) == (
        NOW + FALLBACK_WAIT_S,
        "fallback",
        False,
    )


# ---- error codes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (4, "(#4) Application request limit reached"),
        (17, "(#17) User request limit reached"),
        (32, "(#32) Page request limit reached"),
        (613, "(#613) Calls to this api have exceeded the rate limit."),
        (80001, "(#80001) There have been too many calls to this Page account."),
        (80002, "(#80002) There have been too many calls to this Instagram account."),
    ],
)
def test_throttling_codes_close_until_the_buc_estimate(code: int, message: str) -> None:
    error = classify(
        answer(
            400,
            meta(code, message, is_transient=True),
            {"X-Business-Use-Case-Usage": buc((PAGE, 12))},
        )
    )
    assert isinstance(error, RateLimited)
    assert error.retry_at == NOW + 12 * 60
    assert "x-business-use-case-usage" in error.message


def test_throttling_without_usage_headers_waits_the_fallback() -> None:
    error = classify(answer(403, meta(4, "(#4) Application request limit reached")))
    assert isinstance(error, RateLimited)
    assert (error.retry_at, error.quota_cap) == (NOW + FALLBACK_WAIT_S, False)


@pytest.mark.parametrize(
    ("code", "subcode", "message"),
    [
        (190, 463, "Error validating access token: Session has expired on Tuesday, 01-Aug-23."),
        (190, 467, "Error validating access token: The session is invalid."),
        (190, None, "Invalid OAuth access token - Cannot parse access token"),
        (102, None, "Session key invalid or no longer valid"),
        (10, None, "(#10) Application does not have permission for this action"),
        (200, None, "(#200) If posting to a page, requires both pages_read_engagement and ..."),
        (299, None, "(#299) Requires a permission"),
    ],
)
def test_token_and_permission_errors_need_a_login(
    code: int, subcode: int | None, message: str
) -> None:
    error = classify(answer(400 if code in (190, 102) else 403, meta(code, message, subcode)))
    assert isinstance(error, AuthRequired)
    assert message[:20] in error.message and "AbCdEf123" in error.message


def test_506_is_a_duplicate_for_verify_to_resolve() -> None:
    error = classify(answer(400, meta(506, "(#506) Duplicate status message")))
    assert isinstance(error, Duplicate) and error.existing_id is None


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (100, "(#100) Invalid parameter"),
        (368, "The action attempted has been deemed abusive or is otherwise disallowed"),
        (324, "(#324) Requires upload file"),
    ],
)
def test_refusals_of_the_content_are_terminal(code: int, message: str) -> None:
    assert isinstance(classify(answer(400, meta(code, message))), InvalidContent)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, meta(1, "An unknown error has occurred.", is_transient=True)),
        (503, meta(2, "An unexpected error has occurred. Please retry your request later.")),
        (400, meta(1200, "Temporary failure", is_transient=True)),
        (500, meta(100, "An unexpected error")),
        (502, None),  # a proxy's HTML page, no Graph body
    ],
)
def test_transient_answers_are_retried(status: int, error: dict[str, Any] | None) -> None:
    assert isinstance(classify(answer(status, error)), Transient)


def test_non_graph_answers_fall_back_to_the_status() -> None:
    assert isinstance(classify(answer(401, None)), AuthRequired)
    limited = classify(answer(429, None, {"Retry-After": "120"}))
    assert isinstance(limited, RateLimited) and limited.retry_at == NOW + 120


# ---- Instagram's own codes, and the adapters in-process -----------------------------------------


@dataclass
class Rig:
    app: Any
    state: MetaState
    clock: FakeClock
    ctx: PlatformContext
    media_dir: Path

    async def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        transport = self.ctx.transport
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            response = await http.request(method, path, **kwargs)
        assert response.is_success, response.text
        return response.json()

    def instagram(self, **options: OptionValue) -> InstagramClient:
        return InstagramClient(
            self.account("instagram", "access_token", IG_TOKEN, options), self.ctx
        )

    def facebook(self, **options: OptionValue) -> FacebookClient:
        return FacebookClient(
            self.account("facebook", "page_access_token", PAGE_TOKEN, options), self.ctx
        )

    def account(
        self, platform: str, name: str, token: str, options: Mapping[str, OptionValue]
    ) -> AccountConfig:
        secret = Secret(token, name=name, source="inline", redactor=self.ctx.redactor)
        node = {"ig_user_id": IG} if platform == "instagram" else {"page_id": PAGE}
        return AccountConfig(
            platform=platform,
            account="unit",
            base_url=BASE,
            credentials={name: secret},
            options={**node, **options},
        )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = FakeClock(NOW)
    app = create_app(clock=clock.now)
    ctx = PlatformContext(
        clock=clock,
        media=MediaLoader(media_dirs=[tmp_path]),
        redactor=Redactor(),
        transport=httpx.ASGITransport(app=app),
    )
    (tmp_path / "pic.jpg").write_bytes(tiny_jpeg())
    (tmp_path / "card.png").write_bytes(render_card("unit", ["png"]))
    r = Rig(app, app.state.meta, clock, ctx, tmp_path)
    await r.admin("PUT", f"/_standin/pages/{PAGE}", json={"access_token": PAGE_TOKEN})
    await r.admin("PUT", "/_standin/media/pic.jpg", content=tiny_jpeg())
    yield r


async def ig_user(r: Rig, **config: Any) -> None:
    body = {"access_token": IG_TOKEN, "polls_to_finish": 0, **config}
    await r.admin("PUT", f"/_standin/ig_users/{IG}", json=body)


def ig_job(
    text: str = "a caption", media: tuple[str, ...] = ("pic.jpg",), key: str = "k"
) -> JobSpec:
    return JobSpec(
        job_id="j", platform="instagram", account="unit", text=text, media=media, platform_key=key
    )


MEDIA_BASE = f"{BASE}/_standin/media"


def ig_error(code: int, subcode: int | None = None) -> AdapterError:
    redactor = Redactor()
    account = AccountConfig(
        platform="instagram",
        account="unit",
        base_url=BASE,
        credentials={
            "access_token": Secret(IG_TOKEN, name="t", source="inline", redactor=redactor)
        },
        options={"ig_user_id": IG},
    )
    ctx = PlatformContext(clock=FakeClock(NOW), media=MediaLoader(), redactor=redactor)
    return InstagramClient(account, ctx).error_for(answer(400, meta(code, "ig error", subcode)))


@pytest.mark.parametrize(
    ("code", "subcode", "kind"),
    [
        (9007, 2207027, Transient),  # media not ready
        (9004, 2207052, InvalidContent),  # could not be fetched / not a JPEG
        (9, 2207042, RateLimited),  # daily publishing limit
        (4, 2207051, InvalidContent),  # spam filter: code 4, but not a throttle
        (25, 2207050, AuthRequired),  # account checkpointed / restricted
        (-2, 2207020, Transient),  # the container expired: a new one next time
        (-1, 2207001, Transient),  # Instagram server error
    ],
)
def test_instagram_codes(code: int, subcode: int, kind: type[AdapterError]) -> None:
    error = ig_error(code, subcode)
    assert type(error) is kind, error
    if isinstance(error, RateLimited):
        assert error.quota_cap and error.retry_at == NOW + FALLBACK_WAIT_S


@pytest.mark.anyio
async def test_instagram_refuses_what_it_cannot_publish_before_any_call(rig: Rig) -> None:
    await ig_user(rig)
    client = rig.instagram(media_base_url=MEDIA_BASE)
    cases = [
        (ig_job(media=()), "needs an image"),
        (ig_job(media=("card.png",)), "JPEG images only"),
        (ig_job(media=("http://example.com/a.jpg",)), "public https:// URLs only"),
        (ig_job(text="x" * 2201), "2200"),
        (ig_job(text=" ".join(f"#t{n}" for n in range(31))), "31 hashtags"),
    ]
    for job, expected in cases:
        t = Transcript(rig.ctx.redactor)
        with pytest.raises(InvalidContent, match=expected):
            await client.prepare(job, t)
        assert t.lines == [], "nothing may be sent for a post Instagram cannot take"
    no_base = rig.instagram()
    with pytest.raises(InvalidContent, match="media_base_url"):
        await no_base.prepare(ig_job(), Transcript(rig.ctx.redactor))
    assert rig.state.containers == {}


@pytest.mark.anyio
async def test_used_up_quota_closes_until_the_oldest_counted_publish_leaves_the_window(
    rig: Rig,
) -> None:
    duration = 3600
    oldest, newer = NOW - 1000.4, NOW - 20.7
    await ig_user(rig, quota_total=2, quota_duration=duration, publishes=[oldest, newer])
    client = rig.instagram(media_base_url=MEDIA_BASE)
    with pytest.raises(RateLimited) as closed:
        await client.prepare(ig_job(), Transcript(rig.ctx.redactor))
    assert closed.value.quota_cap
    assert closed.value.retry_at == math.ceil(oldest) + duration  # to the second, never early
    assert rig.state.containers == {}, "no container while the quota is used up"
    # Three allowed, three used: the oldest of the three frees the first slot.
    await ig_user(
        rig, quota_total=3, quota_duration=duration, publishes=[NOW - 3000, NOW - 5, NOW - 2000]
    )
    with pytest.raises(RateLimited) as again:
        await client.prepare(ig_job(), Transcript(rig.ctx.redactor))
    assert again.value.retry_at == NOW - 3000 + duration
    rig.clock.advance(again.value.retry_at - NOW)  # the window has room again
    await client.prepare(ig_job(), Transcript(rig.ctx.redactor))
    assert len(rig.state.containers) == 1


@pytest.mark.anyio
async def test_a_known_container_is_looked_at_and_reused_never_doubled(rig: Rig) -> None:
    await ig_user(rig, container_ttl_s=600)
    client = rig.instagram(media_base_url=MEDIA_BASE)
    t = Transcript(rig.ctx.redactor)
    job = ig_job("reuse me")
    prepared = await client.prepare(job, t)
    assert await client.verify(job, t) is None  # FINISHED: not published
    again = await client.prepare(job, t)
    assert again.payload["creation_id"] == prepared.payload["creation_id"]
    assert len(rig.state.containers) == 1
    published = await client.commit(job, again, t)
    assert await client.verify(job, t) == published  # PUBLISHED: found by caption
    # Another worker (a fresh client) knows no container: it finds the media by caption.
    assert await rig.instagram(media_base_url=MEDIA_BASE).verify(job, t) == published
    # A container left unpublished past its TTL expires: the retry makes a new one.
    late = ig_job("expires", key="k2")
    first = (await client.prepare(late, t)).payload["creation_id"]
    rig.clock.advance(601)
    assert await client.verify(late, t) is None
    second = (await client.prepare(late, t)).payload["creation_id"]
    assert second != first and len(rig.state.containers) == 3


@pytest.mark.anyio
async def test_facebook_verify_looks_only_inside_the_reconcile_window(rig: Rig) -> None:
    client = rig.facebook(reconcile_window_s=600)
    t = Transcript(rig.ctx.redactor)
    job = JobSpec(job_id="j", platform="facebook", account="unit", text="window", platform_key="k")
    published = await client.commit(job, await client.prepare(job, t), t)
    assert await client.verify(job, t) == published
    rig.clock.advance(601)
    assert await client.verify(job, t) is None


@pytest.mark.parametrize(
    ("options", "credentials", "expected"),
    [
        ({}, {"page_access_token": PAGE_TOKEN}, "option 'page_id' is required"),
        ({"page_id": PAGE, "api_version": "21"}, {"page_access_token": PAGE_TOKEN}, "v21.0"),
        ({"page_id": PAGE}, {"access_token": PAGE_TOKEN}, "'page_access_token' is missing"),
        ({"page_id": PAGE, "reconcile_window_s": "soon"}, {"page_access_token": "x" * 8}, "number"),
    ],
)
def test_facebook_account_config_errors_say_what_to_fix(
    options: dict[str, OptionValue], credentials: dict[str, str], expected: str
) -> None:
    redactor = Redactor()
    account = AccountConfig(
        platform="facebook",
        account="bad",
        base_url=BASE,
        credentials={
            k: Secret(v, name=k, source="inline", redactor=redactor) for k, v in credentials.items()
        },
        options=options,
    )
    ctx = PlatformContext(clock=FakeClock(NOW), media=MediaLoader(), redactor=redactor)
    with pytest.raises(AccountsError, match=expected):
        FacebookClient(account, ctx)
