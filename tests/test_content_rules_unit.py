"""Content rules, pure: cases from the platforms' own documentation and conformance suites.

X: twitter-text's conformance/validate.yml, section WeightedTweetsWithDiscountedEmojiCounterTest
(the v3 rules X counts with). Mastodon: docs.joinmastodon.org/user/posting#text and its
StatusLengthValidator. Bluesky: the app.bsky.feed.post lexicon (300 graphemes, 3,000 bytes).
Instagram: content publishing (JPEG only; caption 2,200 characters, 30 hashtags, 20 @ tags).
"""

from __future__ import annotations

import re

import pytest

from coordinator import content_rules as rules
from coordinator.content_rules import TextLimits, check, parse_text_limit, problems
from coordinator.domain import MAX_TEXT_CHARS, Target
from coordinator.errors import InvalidArgument

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # one grapheme, 7 code points
# validate.yml's "160 CJK char" text; "|" stands for its FULLWIDTH COMMA (U+FF0C), which ruff
# would flag as ambiguous in source.
CJK_160 = (
    "故人西辞黄鹤楼|烟花三月下扬州。孤帆远影碧空尽|唯见长江天际流。朱雀桥边野草花|乌衣巷口夕阳斜。"
    "旧时王谢堂前燕|飞入寻常百姓家。朝辞白帝彩云间|千里江陵一日还。两岸猿声啼不住|轻舟已过万重山。"
    "泪湿罗巾梦不成|夜深前殿按歌声。红颜未老恩先断|斜倚薰笼坐到明。独在异乡为异客|每逢佳节倍思亲。"
    "遥知兄弟登高处|遍插茱萸少一人。"
).replace("|", "\uff0c")
LONG_URL = "https://example.com/" + "a" * 200
NONE = TextLimits()


def on(*targets: str) -> list[Target]:
    out = []
    for t in targets:
        platform, _, account = t.partition(":")
        out.append(Target(platform, account))
    return out


# ---- X: twitter-text v3 weighted length -------------------------------------------------------

X_LENGTHS = [
    # (description from validate.yml or the brief, text, weighted length)
    ("Regular Tweet with url", "Hi http://test.co", 26),
    ("Just url", "http://test.co", 23),
    ("a URL counts 23 however long", LONG_URL, 23),
    ("a URL without protocol counts 23", "example.com", 23),
    ("10 url string, no overflow", "https://www.twitter.com/aloha " * 10, 240),
    ("280 ASCII", "a" * 280, 280),
    ("160 CJK char, overflow at char index 140", CJK_160, 320),
    ("140 CJK chars", CJK_160[:140], 280),
    ("160 emoji char", "\U0001f637" * 160, 320),
    ("140 family emoji (ZWJ sequences count 2)", FAMILY * 140, 280),
    ("mix of single byte, double word and ZWJ", "H\U0001f431\u263a" + FAMILY, 7),
    ("emoji with skin tone modifiers", "\U0001f64b\U0001f3fd\U0001f468\u200d\U0001f3a4", 4),
    ("keycap emoji with a latin leading char", "1\u20e3", 2),
    ("a 64 character domain is not a URL", "randomurl" * 7 + "s.com", 68),
    ("NFC: A + combining acute is one character", "A\u0301B", 2),
]


@pytest.mark.parametrize(
    ("text", "weighted"), [c[1:] for c in X_LENGTHS], ids=[c[0] for c in X_LENGTHS]
)
def test_x_weighted_length_follows_twitter_text_v3(text: str, weighted: int) -> None:
    assert rules.x_weighted_length(text) == weighted


# ---- whole checks: (case, text, media, targets, complaint or None) ----------------------------

CASES: list[tuple[str, str, list[str], list[str], tuple[str, ...] | None]] = [
    # X
    ("x: 280 ASCII ok", "a" * 280, [], ["x:acme"], None),
    (
        "x: 281 ASCII refused",
        "a" * 281,
        [],
        ["x:acme"],
        ("x:acme: text is 281 weighted characters; X allows 280", "shorten it by 1"),
    ),
    ("x: 140 CJK = 280 ok", CJK_160[:140], [], ["x:acme"], None),
    ("x: 141 CJK refused", CJK_160[:141], [], ["x:acme"], ("282 weighted", "CJK")),
    ("x: 257 chars + a long URL = 280 ok", "a" * 256 + " " + LONG_URL, [], ["x:acme"], None),
    ("x: 140 family emoji ok", FAMILY * 140, [], ["x:acme"], None),
    ("x: 141 family emoji refused", FAMILY * 141, [], ["x:acme"], ("282 weighted",)),
    ("x: U+FFFE refused", "hello \ufffe", [], ["x:acme"], ("U+FFFE", "X refuses")),
    ("x: 4 images ok", "t", ["1.png", "2.jpg", "3.jpeg", "4.webp"], ["x:acme"], None),
    ("x: a GIF alone ok", "t", ["loop.gif"], ["x:acme"], None),
    (
        "x: a GIF with other images refused",
        "t",
        ["loop.gif", "b.png"],
        ["x:acme"],
        ("'loop.gif' goes alone", "1 GIF"),
    ),
    ("x: 1 video ok", "t", ["clip.mp4"], ["x:acme"], None),
    (
        "x: 5 images refused",
        "t",
        [f"{i}.png" for i in range(5)],
        ["x:acme"],
        ("5 media", "remove 1"),
    ),
    ("x: image + video refused", "t", ["a.png", "b.mov"], ["x:acme"], ("post the video alone",)),
    ("x: 2 videos refused", "t", ["a.mp4", "b.mp4"], ["x:acme"], ("2 videos", "keep one")),
    # Mastodon
    ("mastodon: 500 ok", "a" * 500, [], ["mastodon:news"], None),
    (
        "mastodon: 501 refused",
        "a" * 501,
        [],
        ["mastodon:news"],
        (
            "mastodon:news: text is 501 characters; Mastodon allows 500",
            "--text-limit mastodon:news=N",
        ),
    ),
    ("mastodon: long URL counts 23", "a" * 476 + " " + LONG_URL, [], ["mastodon:news"], None),
    (
        "mastodon: URL without http(s) counts in full",
        "a" * 480 + " example.com/" + "b" * 20,
        [],
        ["mastodon:news"],
        ("513 characters",),
    ),
    (
        "mastodon: a mention counts only its @username",
        "a" * 493 + " @alice@very-long-instance-name.example",
        [],
        ["mastodon:news"],
        None,
    ),
    ("mastodon: 500 family emoji (graphemes) ok", FAMILY * 500, [], ["mastodon:news"], None),
    ("mastodon: 4 media ok", "t", ["1.png", "2.png", "3.png", "4.png"], ["mastodon:news"], None),
    (
        "mastodon: 5 media refused",
        "t",
        [f"{i}.png" for i in range(5)],
        ["mastodon:news"],
        ("5 media",),
    ),
    ("mastodon: video with image refused", "t", ["a.mp4", "b.png"], ["mastodon:news"], ("alone",)),
    # Bluesky
    ("bluesky: 300 graphemes ok", "a" * 300, [], ["bluesky:acme"], None),
    (
        "bluesky: 301 graphemes refused",
        "a" * 301,
        [],
        ["bluesky:acme"],
        ("bluesky:acme: text is 301 graphemes; Bluesky allows 300",),
    ),
    # Multi-code-point graphemes count 1 each: 300 flags (8 bytes each, 2,400 bytes) are 300.
    ("bluesky: 300 flag emoji ok", "\U0001f1eb\U0001f1f7" * 300, [], ["bluesky:acme"], None),
    (
        "bluesky: 301 flag emoji refused",
        "\U0001f1eb\U0001f1f7" * 301,
        [],
        ["bluesky:acme"],
        ("301 graphemes",),
    ),
    # 300 family emoji are 300 graphemes, but 7,500 bytes: over the lexicon's maxLength 3,000.
    (
        "bluesky: 300 family emoji refused for bytes",
        FAMILY * 300,
        [],
        ["bluesky:acme"],
        ("7500 bytes in UTF-8; Bluesky allows 3000",),
    ),
    ("bluesky: 120 family emoji = 3,000 bytes ok", FAMILY * 120, [], ["bluesky:acme"], None),
    ("bluesky: 4 images ok", "t", ["1.png", "2.jpg", "3.webp", "4.gif"], ["bluesky:acme"], None),
    (
        "bluesky: 5 images refused",
        "t",
        [f"{i}.png" for i in range(5)],
        ["bluesky:acme"],
        ("5 media",),
    ),
    ("bluesky: video refused", "t", ["clip.mp4"], ["bluesky:acme"], ("'clip.mp4' is a video",)),
    # LinkedIn, Facebook
    ("linkedin: 3,000 ok", "a" * 3000, [], ["linkedin:acme"], None),
    (
        "linkedin: 3,001 refused",
        "a" * 3001,
        [],
        ["linkedin:acme"],
        ("3001 characters; LinkedIn allows 3000",),
    ),
    (
        "linkedin: 21 images refused",
        "t",
        [f"{i}.png" for i in range(21)],
        ["linkedin:acme"],
        ("21 media", "up to 20 images"),
    ),
    ("linkedin: 20 images ok", "t", [f"{i}.png" for i in range(20)], ["linkedin:acme"], None),
    ("linkedin: WebP refused", "t", ["a.webp"], ["linkedin:acme"], ("WebP", "GIF, JPEG, PNG only")),
    ("facebook: 63,206 ok", "a" * 63_206, [], ["facebook:page"], None),
    (
        "facebook: 63,207 refused",
        "a" * 63_207,
        [],
        ["facebook:page"],
        ("63207 characters; Facebook allows 63206",),
    ),
    ("facebook: video refused", "t", ["a.mp4"], ["facebook:page"], ("is a video",)),
    # Instagram
    ("instagram: one JPEG ok", "t", ["photo.jpg"], ["instagram:acme"], None),
    (
        "instagram: a .JPEG URL with a query ok",
        "t",
        ["https://cdn.example/p.JPEG?v=2"],
        ["instagram:acme"],
        None,
    ),
    ("instagram: no image refused", "t", [], ["instagram:acme"], ("Instagram needs an image",)),
    (
        "instagram: PNG refused",
        "t",
        ["photo.png"],
        ["instagram:acme"],
        ("'photo.png' is PNG", "JPEG only"),
    ),
    ("instagram: 2 images refused", "t", ["a.jpg", "b.jpg"], ["instagram:acme"], ("2 media",)),
    ("instagram: 2,200 characters ok", "a" * 2200, ["a.jpg"], ["instagram:acme"], None),
    (
        "instagram: 2,201 refused",
        "a" * 2201,
        ["a.jpg"],
        ["instagram:acme"],
        ("Instagram allows 2200",),
    ),
    (
        "instagram: 30 hashtags ok",
        " ".join(f"#tag{i}" for i in range(30)),
        ["a.jpg"],
        ["instagram:acme"],
        None,
    ),
    (
        "instagram: 31 hashtags refused",
        " ".join(f"#tag{i}" for i in range(31)),
        ["a.jpg"],
        ["instagram:acme"],
        ("31 hashtags; Instagram allows 30", "remove 1"),
    ),
    ("instagram: #123 is not a hashtag", "#1 " * 40, ["a.jpg"], ["instagram:acme"], None),
    (
        "instagram: 21 @-mentions refused",
        " ".join(f"@user{i}" for i in range(21)),
        ["a.jpg"],
        ["instagram:acme"],
        ("21 @-mentions",),
    ),
    # Unknown extensions pass: the worker judges the bytes.
    (
        "instagram: no extension passes",
        "t",
        ["https://cdn.example/media/123"],
        ["instagram:acme"],
        None,
    ),
    ("bluesky: unknown extension passes", "t", ["file:clip.bin"], ["bluesky:acme"], None),
    # The sandbox keeps its rule (domain.MAX_TEXT_CHARS) and takes any media.
    (
        "sandbox: 10,000 ok",
        "a" * MAX_TEXT_CHARS,
        [f"{i}.mp4" for i in range(9)],
        ["sandbox:acme"],
        None,
    ),
    (
        "sandbox: 10,001 refused",
        "a" * (MAX_TEXT_CHARS + 1),
        [],
        ["sandbox:acme"],
        ("sandbox allows 10000",),
    ),
]


@pytest.mark.parametrize(
    ("text", "media", "targets", "complaint"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rules(
    text: str, media: list[str], targets: list[str], complaint: tuple[str, ...] | None
) -> None:
    if complaint is None:
        check(text, media, on(*targets), NONE)
        return
    with pytest.raises(InvalidArgument) as refused:
        check(text, media, on(*targets), NONE)
    message = str(refused.value)
    for part in complaint:
        assert part in message
    assert message.startswith(targets[0] + ": ")


def test_every_broken_rule_of_every_target_is_listed_at_once() -> None:
    text = "a" * 400
    with pytest.raises(InvalidArgument) as refused:
        check(
            text, ["a.png", "b.mp4"], on("x:acme", "sandbox:ok", "bluesky:b", "instagram:i"), NONE
        )
    lines = str(refused.value).splitlines()
    assert lines[0] == "7 content rules broken:"
    assert [line.split(":")[0] for line in lines[1:]] == ["x", "x", "bluesky", "bluesky"] + [
        "instagram"
    ] * 3
    assert not any(line.startswith("sandbox") for line in lines)


def test_a_post_within_every_rule_passes_on_all_platforms() -> None:
    targets = on("x:a", "mastodon:a", "bluesky:a", "linkedin:a", "facebook:a", "instagram:a")
    assert problems("Launch day! https://example.com #launch", ["hero.jpg"], targets, NONE) == []


# ---- configured limits ------------------------------------------------------------------------


def test_text_limit_per_platform_and_per_account() -> None:
    limits = TextLimits({"mastodon": 1000, "mastodon:big": 5000, "x:premium": 25_000})
    assert limits.for_target(Target("mastodon", "small")) == (1000, True)
    assert limits.for_target(Target("mastodon", "big")) == (5000, True)  # the account wins
    assert limits.for_target(Target("x", "acme")) == (280, False)
    check("a" * 700, [], on("mastodon:small"), limits)
    check("a" * 4000, [], on("mastodon:big", "x:premium"), limits)
    with pytest.raises(
        InvalidArgument, match=r"1001 characters; Mastodon allows 1000 \(--text-limit\)"
    ):
        check("a" * 1001, [], on("mastodon:small"), limits)


def test_bluesky_bytes_follow_a_configured_grapheme_limit() -> None:
    # The lexicon's convention: maxLength (bytes) is 10 x maxGraphemes.
    check(FAMILY * 300, [], on("bluesky:big"), TextLimits({"bluesky": 1000}))


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("mastodon=1000", ("mastodon", 1000)),
        ("mastodon:big-instance=5000", ("mastodon:big-instance", 5000)),
        ("Mastodon:@news@example.social=800", ("mastodon:@news@example.social", 800)),
        ("x:premium=25000", ("x:premium", 25000)),
    ],
)
def test_parse_text_limit(spec: str, parsed: tuple[str, int]) -> None:
    assert parse_text_limit(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("mastodon", "expected PLATFORM[:ACCOUNT]=N"),
        ("=500", "expected PLATFORM[:ACCOUNT]=N"),
        ("mastodon:=500", "expected PLATFORM[:ACCOUNT]=N"),
        ("myspace=500", "unknown platform 'myspace'"),
        ("mastodon=lots", "'lots' is not a whole number"),
        ("mastodon=0", "between 1 and 100000"),
        ("facebook=1000000", "between 1 and 100000"),
    ],
)
def test_parse_text_limit_refuses_with_a_reason(spec: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_text_limit(spec)


@pytest.mark.parametrize(
    ("reference", "kind"),
    [
        ("pic.png", ("image", "PNG")),
        ("file:shots/Pic.JPG", ("image", "JPEG")),
        ("https://cdn.example/a/b.webp?size=large#x", ("image", "WebP")),
        ("https://cdn.example/clip.MOV", ("video", "MOV")),
        ("https://cdn.example/png", None),
        ("https://cdn.example/download?file=a.png", None),  # the query is not the name
        ("notes.txt", None),
    ],
)
def test_media_type_is_judged_from_the_extension(
    reference: str, kind: tuple[str, str] | None
) -> None:
    assert rules.media_format(reference) == kind
