"""The field document's Python session, end to end: `VaultPoster` against a sandbox, a
coordinator and a worker run as processes; three platforms, Instagram answered with one 429
and a short retry-after.

    draft = poster.create_draft(content=..., platforms=["facebook", "instagram", "twitter"])
    results = poster.execute_approved_draft(draft)      # after a person approved it
    retry = poster.retry_failed_platform(draft, platform="instagram")
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from postroom_cli.cluster import ClusterConfig, LocalCluster
from postroom_vault import VaultError
from postroom_vault import document as docs
from postroom_vault.poster import VaultPoster

FIELD_TEXT = (
    "🎉 Big announcement coming tomorrow! Stay tuned for something exciting. "
    "#ComingSoon #Innovation #Business"
)
PLATFORMS = ["facebook", "instagram", "twitter"]
RETRY_AFTER_S = 5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    config = ClusterConfig(heartbeat_interval_s=0.5, lease_ttl_s=2.0, retry_initial_s=0.3)
    with LocalCluster(tmp_path_factory.mktemp("poster"), config) as c:
        c.start_sandbox()
        c.start_coordinator()
        c.start_worker("poster-w1", platforms=["sandbox"], concurrency=8)
        c.wait_online(["poster-w1"])
        yield c


def poster_for(cluster: LocalCluster, vault: Path, prefix: str) -> VaultPoster:
    accounts = {name: f"sandbox:{prefix}-{name}" for name in PLATFORMS}
    return VaultPoster(vault, client=cluster.client(), accounts=accounts, timeout_s=90)


def test_the_field_session_partial_failure_then_retry_then_done(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    vault = tmp_path / "vault"
    with cluster.sandbox_admin() as sandbox:
        sandbox.inject(
            "rate_limit", account="field-instagram", retry_after_seconds=RETRY_AFTER_S, count=1
        )
    with poster_for(cluster, vault, "field") as poster:
        draft_path = poster.create_draft(content=FIELD_TEXT, platforms=PLATFORMS, image_path=None)
        assert draft_path.parent == vault.resolve() / "Pending_Approval"
        with pytest.raises(VaultError, match="not approved yet"):
            poster.execute_approved_draft(draft_path)
        os.rename(draft_path, vault / "Approved" / draft_path.name)  # a person approves

        started = dt.datetime.now(dt.UTC).replace(microsecond=0)
        results = poster.execute_approved_draft(draft_path)
        json.dumps(results)  # plain data, as the field prints it
        assert list(results) == PLATFORMS
        for ok in ("facebook", "twitter"):
            assert list(results[ok]) == ["success", "post_id", "url", "timestamp"]
            assert results[ok]["success"] is True
            assert results[ok]["post_id"] and results[ok]["url"].startswith("http")
            answered = docs.parse_time(results[ok]["timestamp"])
            assert answered is not None and answered >= started  # when that platform answered
        ig = results["instagram"]
        assert list(ig) == ["success", "error", "error_code", "retry_after", "timestamp"]
        assert ig["success"] is False and ig["error_code"] == 429 and ig["error"]
        assert 0 <= ig["retry_after"] <= RETRY_AFTER_S

        approved = vault / "Approved" / draft_path.name
        front = docs.parse(approved.read_bytes()).front
        assert front["status"] == "partial_failure" and front["retry_count"] == 1
        assert front["platforms"]["facebook"]["post_id"] == results["facebook"]["post_id"]

        retry = poster.retry_failed_platform(draft_path, platform="instagram")
    assert list(retry) == ["success", "post_id", "url", "timestamp", "retry_attempt"]
    assert retry["success"] is True and retry["retry_attempt"] == 2
    assert retry["url"].startswith("http")
    assert retry["timestamp"] >= ig["timestamp"]  # the same format: text order is time order
    assert not approved.exists()
    done = docs.parse((vault / "Done" / draft_path.name).read_bytes()).front
    assert done["status"] == "completed" and done["retry_count"] == 2
    assert done["platforms"]["instagram"]["post_id"] == retry["post_id"]
    assert done["platforms"]["twitter"]["url"] == results["twitter"]["url"]
    lines = [
        json.loads(line)
        for log in sorted((vault / "Logs").glob("*.json"))
        for line in log.read_text().splitlines()
    ]
    assert [line["action_type"] for line in lines] == [
        "social_media_post",
        "social_media_post_retry",
    ]
    with cluster.sandbox_admin() as sandbox:  # each platform got the post exactly once
        for name in PLATFORMS:
            assert len(sandbox.posts(account=f"field-{name}")) == 1


def test_field_platform_names_are_aliases_and_unknown_ones_are_refused(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    vault = tmp_path / "vault"
    with poster_for(cluster, vault, "alias") as poster:
        draft = poster.create_draft("Aliases", ["facebook", "twitter", "instagram"])
        os.rename(draft, vault / "Approved" / draft.name)
        results = poster.execute_approved_draft(draft)
        assert all(r["success"] for r in results.values())
        assert poster.execute_approved_draft(draft) == results  # in Done/ now: the same answer
        # The file moved to Done/; `x` is postroom's name for the field's `twitter`.
        again = poster.retry_failed_platform(draft, platform="x")
        assert again["url"] == results["twitter"]["url"]
        with pytest.raises(VaultError, match="not one of this post's platforms"):
            poster.retry_failed_platform(draft, platform="linkedin")


def test_the_readme_python_example_runs(cluster: LocalCluster, tmp_path: Path) -> None:
    """The README's "Python API" example, as written, against an open coordinator."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python API") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    script = tmp_path / "example.py"
    script.write_text(match.group(1), encoding="utf-8")
    env = {**os.environ, "POSTROOM_COORDINATOR": cluster.coordinator_address}
    for name in ("POSTROOM_TOKEN", "POSTROOM_TOKEN_FILE", "POSTROOM_CA"):
        env.pop(name, None)
    run = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert {line.split()[1] for line in lines if line.startswith("sandbox ")} == {"acme", "beta"}
    assert any(line.startswith("StatusCode.FAILED_PRECONDITION ") for line in lines)
    assert "NOT_FOUND post p-nope not found" in lines
    assert "POST_APPROVED" in lines
