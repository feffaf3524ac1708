"""The vault file's shapes, without a coordinator: the field document's frontmatter and body
come out exactly as it shows them, person's edits survive, bad files are named."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from postroom.v1 import types_pb2 as pb
from postroom_vault import MalformedFile, OutsideVault, VaultError
from postroom_vault import document as docs
from postroom_vault.cli import vault_accounts, write_draft
from postroom_vault.config import parse_account
from postroom_vault.progress import Tracking, audit_lines, outcome
from postroom_vault.render import content_of, rewrite
from postroom_vault.state import StateStore

# The field document's file in Approved/ (shared/field/failed-post-example.md), verbatim.
FIELD_PARTIAL = """---
id: social_post_20260119_161500_multi001
type: social_media_post
status: partial_failure
created_at: 2026-01-19T16:15:00Z
approved_at: 2026-01-19T16:15:15Z
last_attempt_at: 2026-01-19T16:15:23Z
retry_count: 1
next_retry_at: 2026-01-19T16:30:23Z
platforms:
  facebook:
    success: true
    post_id: "123456789_987654321"
    url: "https://facebook.com/123456789/posts/987654321"
  instagram:
    success: false
    error: "Rate limit exceeded. Please try again in 15 minutes."
    error_code: 429
    retry_after: 900
  twitter:
    success: true
    post_id: "1234567890123456789"
    url: "https://twitter.com/user/status/1234567890123456789"
---

# Social Media Post Draft

**Status**: ⚠️ Partial Failure
**Created**: 2026-01-19 4:15 PM
**Platforms**: Facebook ✅, Instagram ❌, Twitter ✅

## Content

🎉 Big announcement coming tomorrow! Stay tuned for something exciting. #ComingSoon #Innovation #Business

## Execution Results

### Facebook ✅
- **Status**: Success
- **Post ID**: 123456789_987654321
- **URL**: https://facebook.com/123456789/posts/987654321

### Instagram ❌
- **Status**: Failed
- **Error**: Rate limit exceeded. Please try again in 15 minutes.
- **Error Code**: 429
- **Retry After**: 15 minutes

### Twitter ✅
- **Status**: Success
- **Post ID**: 1234567890123456789
- **URL**: https://twitter.com/user/status/1234567890123456789

## Next Steps

The system will automatically retry posting to Instagram in 15 minutes.

**Manual Retry**: If you want to retry immediately, change `status: partial_failure` to `status: retry_now` and save.

**Cancel Retry**: To cancel the retry, change `status: partial_failure` to `status: cancelled` and save.
"""  # noqa: E501


def test_field_file_round_trips_byte_for_byte() -> None:
    doc = docs.parse(FIELD_PARTIAL.encode())
    assert doc.front["platforms"]["facebook"]["post_id"] == "123456789_987654321"
    assert doc.front["created_at"] == "2026-01-19T16:15:00Z"
    assert docs.serialize(doc).decode() == FIELD_PARTIAL


def test_rendered_body_is_the_field_body() -> None:
    doc = docs.parse(FIELD_PARTIAL.encode())
    now = dt.datetime(2026, 1, 19, 16, 15, 23, tzinfo=dt.UTC)
    stripped = "\n# Social Media Post Draft\n\n## Content\n\n" + content_of(doc.body) + "\n"
    assert rewrite(stripped, doc.front, now=now) == doc.body
    assert rewrite(doc.body, doc.front, now=now) == doc.body


def test_a_persons_own_section_and_content_edit_are_kept() -> None:
    doc = docs.parse(FIELD_PARTIAL.encode())
    body = doc.body.replace("#Business", "#Business #Edited") + "\n## My notes\n\nask Sam\n"
    front = dict(doc.front, status="completed")
    out = rewrite(body, front)
    assert "#Edited" in content_of(out)
    assert "## My notes\n\nask Sam" in out
    assert "**Status**: ✅ Completed" in out
    assert out.count("## Next Steps") == 1


def test_a_concurrent_edit_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "post.md"
    path.write_text(FIELD_PARTIAL)
    edits = iter(["## Content\n\nedited by a person\n"])

    def person_saves(p: Path) -> None:
        edit = next(edits, None)
        if edit is not None:
            p.write_text(p.read_text().replace("## Execution Results", edit + "\n## Done"))

    def bridge(doc: docs.Document) -> docs.Document:
        return docs.Document(front=dict(doc.front, retry_count=2), body=doc.body)

    assert docs.update(path, bridge, before_replace=person_saves)
    text = path.read_text()
    assert "retry_count: 2" in text and "edited by a person" in text
    assert not list(tmp_path.glob(".postroom-tmp-*"))


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"no frontmatter", "must start with a `---` line"),
        (b"---\nid: [unclosed\n---\n", "not valid YAML"),
        (b"---\ntype: x\nplatforms: [x]\n---\n", "`id:` is missing"),
        (b"---\nid: a\nplatforms: []\n---\n", "`platforms:` must list"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_malformed_files_say_what_to_fix(raw: bytes, says: str) -> None:
    with pytest.raises(MalformedFile, match=None) as info:
        docs.parse(raw)
    assert says in str(info.value)


def test_draft_has_the_field_frontmatter_and_copies_an_outside_image(tmp_path: Path) -> None:
    vault, outside = tmp_path / "vault", tmp_path / "pic.jpg"
    outside.write_bytes(b"\xff\xd8jpeg")
    now = dt.datetime(2026, 1, 19, 16, 15, 0, tzinfo=dt.UTC)
    path = write_draft(vault, "Hello", ["facebook", "Twitter"], image=outside, now=now)
    assert path.parent == vault.resolve() / "Pending_Approval"
    doc = docs.parse(path.read_bytes())
    assert doc.id.startswith("social_post_20260119_161500_") and path.stem == doc.id
    assert doc.front["type"] == "social_media_post"
    assert doc.front["status"] == "pending_approval"
    assert doc.front["created_at"] == "2026-01-19T16:15:00Z"
    assert doc.front["platforms"] == ["facebook", "twitter"]
    assert (vault / doc.front["image"]).read_bytes() == b"\xff\xd8jpeg"
    assert content_of(doc.body) == "Hello"


def test_paths_outside_the_vault_are_refused(tmp_path: Path) -> None:
    (tmp_path / "vault").mkdir()
    (tmp_path / "vault" / "link.md").symlink_to(tmp_path / "elsewhere.md")
    with pytest.raises(OutsideVault):
        docs.inside(tmp_path / "vault", tmp_path / "vault" / "link.md")
    with pytest.raises(OutsideVault):
        docs.inside(tmp_path / "vault", tmp_path / "vault" / ".." / "x.png")


def test_accounts_map_twitter_to_x() -> None:
    assert parse_account("twitter=acme")[1].platform == "x"
    name, target = parse_account("instagram=sandbox:ig")
    assert (name, target.platform, target.account) == ("instagram", "sandbox", "ig")


def _state(account: str, status: int, attempt: int = 1, **fields: Any) -> pb.TargetState:
    return pb.TargetState(
        target=pb.Target(platform="sandbox", account=account),
        job_id=f"j-{account}",
        job_status=status,  # type: ignore[arg-type]
        attempt=attempt,
        **fields,
    )


def test_progress_follows_the_field_from_partial_failure_to_completed() -> None:
    names = {("sandbox", "fb"): "facebook", ("sandbox", "ig"): "instagram"}
    ok = _state("fb", pb.JOB_STATUS_SUCCEEDED, result_post_id="1_2", result_url="https://f/1")
    waiting = _state(
        "ig",
        pb.JOB_STATUS_QUEUED,
        last_error="Rate limit exceeded",
        last_error_class=pb.ERROR_CLASS_RATE_LIMITED,
        not_before=Timestamp(seconds=1_000_900),
    )
    post = pb.Post(status=pb.POST_STATUS_PUBLISHING, target_states=[ok, waiting])
    track = Tracking(file_id="social_post_x", started_ms=999_000_000)
    now = dt.datetime.fromtimestamp(1_000_000, dt.UTC)
    first = outcome(post, names, 1_000_000)
    assert first.status == "partial_failure" and first.round_done
    assert first.platforms["instagram"] == {
        "success": False,
        "error": "Rate limit exceeded",
        "error_code": 429,
        "retry_after": 900,
    }
    assert first.next_retry_at == "1970-01-12T14:01:40Z"
    [line] = audit_lines("social_post_x", first, track, actor="a", now=now, now_ms=1_000_000_000)
    assert line["action_type"] == "social_media_post" and line["status"] == "partial_failure"
    assert line["execution_time_ms"] == 1_000_000
    assert audit_lines("social_post_x", first, track, actor="a", now=now, now_ms=0) == []

    done = _state("ig", pb.JOB_STATUS_SUCCEEDED, 2, result_post_id="ABC", result_url="https://i/p")
    post = pb.Post(status=pb.POST_STATUS_PUBLISHED, target_states=[ok, done])
    final = outcome(post, names, 1_000_905)
    assert final.status == "completed" and final.retry_count == 2
    assert final.platforms["instagram"]["retry_attempt"] == 2
    [retry] = audit_lines("social_post_x", final, track, actor="a", now=now, now_ms=0)
    assert (retry["platform"], retry["status"], retry["post_id"]) == ("instagram", "success", "ABC")
    assert audit_lines("social_post_x", final, track, actor="a", now=now, now_ms=0) == []


def test_vault_config_names_accounts(tmp_path: Path) -> None:
    (tmp_path / ".postroom.toml").write_text('[accounts]\nfacebook = "acme"\ntwitter = "acme"\n')
    assert vault_accounts(tmp_path) == ["facebook=acme", "twitter=acme"]
    (tmp_path / ".postroom.toml").write_text("[accounts]\nfacebook = 3\n")
    with pytest.raises(VaultError, match=r"\[accounts\]"):
        vault_accounts(tmp_path)


def test_a_damaged_record_is_named_not_a_crash(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(Tracking(file_id="a", post_id="p-1"))
    loaded = store.load("a")
    assert loaded is not None and loaded.post_id == "p-1"
    (tmp_path / ".postroom" / "posts" / "a.json").write_text("{not json")
    with pytest.raises(VaultError, match="damaged"):
        store.load("a")
