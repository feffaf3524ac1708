"""The Bluesky adapter's pure parts: record keys (TIDs), rich-text facets, image sizes, media
rules, and the mapping of the PDS's real error answers. Cases come from atproto's TID spec, the
docs' rich-text guide and the official client's detection tests (@atproto/api)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
import pytest

from postroom.clock import FakeClock
from worker.accounts import AccountConfig, AccountsError, Secret
from worker.adapters.base import JobSpec
from worker.adapters.png import render_card
from worker.errors import AuthRequired, InvalidContent, RateLimited, Transient
from worker.media import MediaLoader
from worker.platforms.base import PlatformContext, Transcript
from worker.platforms.bluesky import BlueskyClient
from worker.platforms.bluesky_text import (
    decode_tid,
    detect_spans,
    encode_tid,
    image_size,
    is_tid,
    tid_for,
)
from worker.redact import Redactor

CLASSIC = "https://socket3.wordpress.com/2018/02/03/designing-windows-95s-user-interface/"
FULLWIDTH_HASH = "\uff03"
BAD_LOGIN = "Invalid identifier or password"
BAD_RKEY = 'Invalid record key (got "x!") at $.rkey'
NOW = datetime(2026, 11, 29, 17, 9, 34, tzinfo=UTC).timestamp()

# ---- record keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tid", ["3jzfcijpj2z2a", "7777777777777", "3zzzzzzzzzzzz", "2222222222222"]
)
def test_spec_valid_tids(tid: str) -> None:
    assert is_tid(tid)
    assert encode_tid(*decode_tid(tid)) == tid


@pytest.mark.parametrize(
    "tid",
    [
        "3jzfcijpj2z21",  # 1 is not base32-sortable
        "0000000000000",
        "3jzfcijpj2z2aa",  # too long
        "3jzfcijpj2z2",  # too short
        "222",
        "3jzf-cij-pj2z-2a",
        "zzzzzzzzzzzzz",  # top bit set
        "kjzfcijpj2z2a",
    ],
)
def test_spec_invalid_tids(tid: str) -> None:
    assert not is_tid(tid)


def test_zero_is_all_twos_and_the_layout_is_timestamp_then_clock_id() -> None:
    assert encode_tid(0, 0) == "2222222222222"
    micros = 1_724_171_495_793_000
    assert encode_tid(micros, 512) == "3l25zusnsfck2"  # @atcute/tid's documented example
    assert decode_tid("3l25zusnsfck2") == (micros, 512)


def test_a_jobs_key_is_a_valid_tid_the_same_on_every_attempt() -> None:
    key = "pr-0123456789abcdef0123456789abcdef"
    assert tid_for(key) == tid_for(key)
    assert is_tid(tid_for(key))
    assert tid_for(key) != tid_for(key + "0")
    micros, _ = decode_tid(tid_for(key))
    when = datetime.fromtimestamp(micros / 1e6, UTC)
    assert datetime(2023, 1, 1, tzinfo=UTC) <= when < datetime(2024, 3, 1, tzinfo=UTC)
    keys = {tid_for(f"pr-{n}") for n in range(2000)}
    assert len(keys) == 2000


# ---- facets -----------------------------------------------------------------------------------


def spans(text: str) -> list[tuple[str, str, str]]:
    """(kind, the text the facet covers, value) for each facet."""
    raw = text.encode()
    return [(s.kind, raw[s.byte_start : s.byte_end].decode(), s.value) for s in detect_spans(text)]


def test_the_docs_example_byte_offsets() -> None:
    # docs.bsky.app "Creating a post": the mention covers bytes 23-35, the link 74-108.
    text = "✨ example mentioning @atproto.com to share the URL 👨‍❤️‍👨 https://en.wikipedia.org/wiki/CBOR."
    found = detect_spans(text)
    assert [(s.kind, s.byte_start, s.byte_end) for s in found] == [
        ("mention", 23, 35),
        ("link", 74, 108),
    ]
    assert found[1].value == "https://en.wikipedia.org/wiki/CBOR"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no mention", []),
        ("@handle.com middle end", [("mention", "@handle.com", "handle.com")]),
        ("start @handle.com end", [("mention", "@handle.com", "handle.com")]),
        ("start middle @handle.com", [("mention", "@handle.com", "handle.com")]),
        ("@handle.com @handle.com", [("mention", "@handle.com", "handle.com")] * 2),
        ("@full123-chars.test", [("mention", "@full123-chars.test", "full123-chars.test")]),
        ("not@right", []),
        ("@handle.com!@#$chars", [("mention", "@handle.com", "handle.com")]),
        ("@handle.com\n@handle.com", [("mention", "@handle.com", "handle.com")] * 2),
        ("parenthetical (@handle.com)", [("mention", "@handle.com", "handle.com")]),
        ("👨👩👧👧 @handle.com 👨👩👧👧", [("mention", "@handle.com", "handle.com")]),
        ("trailing dot @alice.test.", [("mention", "@alice.test", "alice.test")]),
        ("not a handle @alice", []),
        ("Mixed @Alice.Test case", [("mention", "@Alice.Test", "alice.test")]),
    ],
)
def test_mentions(text: str, expected: list[tuple[str, str, str]]) -> None:
    assert spans(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("start https://middle.com end", ["https://middle.com"]),
        ("start https://middle.com/foo/bar?baz=bux#hash end", ["https://middle.com/foo/bar?baz=bux#hash"]),
        ("https://start.com/foo/bar?baz=bux#hash middle end", ["https://start.com/foo/bar?baz=bux#hash"]),
        ("https://newline1.com\nhttps://newline2.com", ["https://newline1.com", "https://newline2.com"]),
        ("👨👩👧👧 https://middle.com 👨👩👧👧", ["https://middle.com"]),
        (f"Classic article {CLASSIC} ", [CLASSIC]),
        (
            "punctuation https://foo.com, https://bar.com/whatever; https://baz.com.",
            ["https://foo.com", "https://bar.com/whatever", "https://baz.com"],
        ),
        ("parenthentical (https://foo.com)", ["https://foo.com"]),
        ("except for https://foo.com/thing_(cool)", ["https://foo.com/thing_(cool)"]),
        ("a trailing https://bsky.app: colon", ["https://bsky.app"]),
        ("plain http://example.org/x", ["http://example.org/x"]),
        # Bare domains are not linked (see bluesky_text: no TLD list here), nor are non-URLs.
        ("start middle.com end", []),
        ("not.. a..url ..here", []),
        ("something-cool.jpg", []),
        ("nohttps://inside.com", []),
    ],
)  # fmt: skip
def test_links(text: str, expected: list[str]) -> None:
    found = spans(text)
    assert [value for _, _, value in found] == expected
    assert all(kind == "link" and covered == value for kind, covered, value in found)


@pytest.mark.parametrize(
    ("text", "tags", "offsets"),
    [
        ("#a", ["a"], [(0, 2)]),
        ("#a #b", ["a", "b"], [(0, 2), (3, 5)]),
        ("#1", [], []),
        ("#1a", ["1a"], [(0, 3)]),
        ("body #tag body", ["tag"], [(5, 9)]),
        ("body #1", [], []),
        ("body #a1", ["a1"], [(5, 8)]),
        ("#", [], []),
        ("#?", [], []),
        ("text # text", [], []),
        (
            "body #thisisa64characterstring_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ["thisisa64characterstring_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
            [(5, 70)],
        ),
        ("body #thisisa65characterstring_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab", [], []),
        (
            "body #thisisa64characterstring_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!",
            ["thisisa64characterstring_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
            [(5, 70)],
        ),
        ("its a #double#rainbow", ["double#rainbow"], [(6, 21)]),
        ("##hashash", ["#hashash"], [(0, 9)]),
        ("##", [], []),
        ("some #n0n3s@n5e!", ["n0n3s@n5e"], [(5, 15)]),
        ("works #with,punctuation", ["with,punctuation"], [(6, 23)]),
        (
            "strips trailing #punctuation, #like. #this!",
            ["punctuation", "like", "this"],
            [(16, 28), (30, 35), (37, 42)],
        ),
        ("strips #multi_trailing___...", ["multi_trailing"], [(7, 22)]),
        ("works with #🦋 emoji, and #butter🦋fly", ["🦋", "butter🦋fly"], [(11, 16), (28, 42)]),
        ("this #\ufe0f\u20e3tag should not be a tag", [], []),
        ("this ##\ufe0f\u20e3tag should be a tag", ["#\ufe0f\u20e3tag"], [(5, 16)]),
        ("this #t\nag should be a tag", ["t"], [(5, 7)]),
        ("no match (\\u200B): #\u200b", [], []),
        ("no match (\\u200Ba): #\u200ba", [], []),
        ("match (a\\u200Bb): #a\u200bb", ["a"], [(18, 20)]),
        ("match (ab\\u200B): #ab\u200b", ["ab"], [(18, 21)]),
        ("no match (\\u20e2tag): #\u20e2tag", [], []),
        ("no match (a\\u20e2b): #a\u20e2b", ["a"], [(21, 23)]),
        (f"match full width number sign (tag): {FULLWIDTH_HASH}tag", ["tag"], [(36, 42)]),
        ("no match 1?: #1?", [], []),
    ],
)
def test_tags_as_the_official_client_detects_them(
    text: str, tags: list[str], offsets: list[tuple[int, int]]
) -> None:
    found = [s for s in detect_spans(text) if s.kind == "tag"]
    assert [s.value for s in found] == tags
    assert [(s.byte_start, s.byte_end) for s in found] == offsets


def test_facets_come_in_text_order_with_utf8_offsets() -> None:
    text = "héllo #tag @bob.test https://ex.com/é"
    found = spans(text)
    assert [kind for kind, _, _ in found] == ["tag", "mention", "link"]
    assert [covered for _, covered, _ in found] == ["#tag", "@bob.test", "https://ex.com/é"]


# ---- images -----------------------------------------------------------------------------------


def test_image_sizes_from_headers() -> None:
    png = render_card("t", ["x"])
    width, height = struct.unpack(">II", png[16:24])
    assert image_size(png) == (width, height)
    assert image_size(b"GIF89a" + struct.pack("<HH", 640, 480) + b"\0" * 8) == (640, 480)
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0" + b"\0" * 9
    sof0 = b"\xff\xc0" + struct.pack(">HBHH", 17, 8, 1080, 1920) + b"\0" * 10
    assert image_size(b"\xff\xd8" + app0 + sof0) == (1920, 1080)
    assert image_size(b"RIFF....WEBPVP8 ") is None
    assert image_size(b"\x89PNG\r\n\x1a\n") is None


# ---- the client without a server: media rules, account options, error answers ---------------


def client(tmp_path: Path, **options: str) -> BlueskyClient:
    redactor = Redactor()
    secrets = {
        name: Secret(value, name=name, source="inline", redactor=redactor)
        for name, value in (("identifier", "alice.test"), ("app_password", "abcd-efgh-ijkl-mnop"))
    }
    account = AccountConfig(
        platform="bluesky",
        account="alice",
        base_url="http://127.0.0.1:9",  # never contacted by these tests
        credentials=secrets,
        options=options,
    )
    media = MediaLoader(media_dirs=[tmp_path])
    return BlueskyClient(
        account, PlatformContext(clock=FakeClock(NOW), media=media, redactor=redactor)
    )


@pytest.mark.parametrize(
    ("files", "rule"),
    [
        ({"big.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 1_000_000}, "at most 1,000,000 bytes"),
        ({"clip.mp4": b"\0\0\0\x18ftypmp42" + b"\0" * 64}, "images only"),
        ({f"p{n}.png": render_card("t", [str(n)]) for n in range(5)}, "at most 4 images"),
    ],
)
def test_media_rules_refuse_before_any_upload(
    tmp_path: Path, files: dict[str, bytes], rule: str
) -> None:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    job = JobSpec(job_id="j", platform="bluesky", account="alice", text="hi", media=tuple(files))

    async def prepare() -> None:
        await client(tmp_path).prepare(job, Transcript(Redactor()))

    with pytest.raises(InvalidContent, match=rule):
        anyio.run(prepare)


def test_more_than_three_languages_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(AccountsError, match="at most 3"):
        client(tmp_path, langs="en,de,fr,es")


def answer(
    status: int, body: dict[str, str], headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers or {})


def test_the_pds_rate_limit_answer_closes_until_its_reset(tmp_path: Path) -> None:
    # As the PDS answered the 31st createSession in 5 minutes (seen here, rate limits on).
    reset = int(NOW) + 287
    error = client(tmp_path).error_for(
        answer(
            429,
            {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"},
            {
                "RateLimit-Limit": "30",
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(reset),
                "RateLimit-Policy": "30;w=300",
            },
        )
    )
    assert isinstance(error, RateLimited)
    assert error.retry_at == reset
    assert not error.quota_cap
    assert "RateLimitExceeded" in error.message


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, {"error": "AuthenticationRequired", "message": BAD_LOGIN}, AuthRequired),
        (401, {"error": "AccountTakedown", "message": "Account has been taken down"}, AuthRequired),
        (400, {"error": "ExpiredToken", "message": "Token has expired"}, AuthRequired),
        (400, {"error": "InvalidToken", "message": "Token could not be verified"}, AuthRequired),
        (
            400,
            {
                "error": "InvalidRequest",
                "message": "Invalid app.bsky.feed.post record: grapheme too big "
                "(maximum 300, got 301) at $.record.text",
            },
            InvalidContent,
        ),
        (400, {"error": "InvalidRequest", "message": BAD_RKEY}, InvalidContent),
        (413, {"error": "PayloadTooLarge", "message": "request entity too large"}, InvalidContent),
        (500, {"error": "InternalServerError", "message": "Internal Server Error"}, Transient),
        (502, {}, Transient),
        (404, {"error": "XRPCNotSupported", "message": "XRPCNotSupported"}, AuthRequired),
    ],
)  # fmt: skip
def test_error_answers_map_to_classes(
    tmp_path: Path, status: int, body: dict[str, str], kind: type[Exception]
) -> None:
    error = client(tmp_path).error_for(answer(status, body))
    assert type(error) is kind
    assert error.http_status == status
    if body:
        assert body["message"] in error.message
