"""The Markdown vault workflow end to end: sandbox, coordinator and a worker as processes, the
bridge in-process (or as a process where a restart is the point), a vault in a temp folder.

The coordinator runs with authentication on: the bridge creates posts with one operator token
and approves them with another (an approver's), as four eyes require. Every wait polls with a
deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import wait_until

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.cluster import ClusterConfig, LocalCluster
from postroom_vault import MalformedFile
from postroom_vault import document as docs
from postroom_vault.bridge import Bridge
from postroom_vault.cli import write_draft
from postroom_vault.config import BridgeConfig, parse_account
from postroom_vault.progress import Tracking
from postroom_vault.state import StateStore

FIELD_TEXT = (
    "🎉 Big announcement coming tomorrow! Stay tuned for something exciting. "
    "#ComingSoon #Innovation #Business"
)
PLATFORMS = ["facebook", "instagram", "twitter"]
BULK_FILES = int(os.environ.get("POSTROOM_VAULT_BULK_FILES", "200"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    config = ClusterConfig(
        heartbeat_interval_s=0.5, lease_ttl_s=2.0, retry_initial_s=0.3, auth=True
    )
    with LocalCluster(tmp_path_factory.mktemp("vault-e2e"), config) as c:
        c.start_sandbox()
        c.start_coordinator()
        c.start_worker("vault-w1", platforms=["sandbox"], concurrency=16)
        c.wait_online(["vault-w1"])
        yield c


def accounts(prefix: str) -> dict[str, str]:
    return {name: f"sandbox:{prefix}-{name}" for name in PLATFORMS}


def approver_token(cluster: LocalCluster) -> str:
    assert cluster.access is not None
    with cluster.client() as admin:
        return cluster.access.approver_token(admin)


@contextlib.contextmanager
def bridge_running(
    cluster: LocalCluster,
    vault: Path,
    where: dict[str, str],
    *,
    before_replace: Callable[[Path], None] | None = None,
    force_polling: bool = False,
) -> Iterator[Bridge]:
    config = BridgeConfig(
        vault=vault,
        accounts=dict(parse_account(f"{n}={t}") for n, t in where.items()),
        rescan_s=0.2,
        parallel=8,
        force_polling=force_polling,
    )
    failures: list[BaseException] = []
    with (
        cluster.client() as client,
        cluster.client(token=approver_token(cluster)) as approver,
    ):
        bridge = Bridge(config, client, approver=approver, before_replace=before_replace)
        stop = threading.Event()

        def run() -> None:
            try:
                bridge.run(stop)
            except BaseException as exc:  # surfaced in the test below
                failures.append(exc)

        thread = threading.Thread(target=run, name="vault-bridge")
        thread.start()
        try:
            yield bridge
        finally:
            stop.set()
            thread.join(30)
            bridge.close()
    assert not thread.is_alive()
    assert not failures, failures


def front_of(path: Path) -> dict[str, Any] | None:
    try:
        return docs.parse(path.read_bytes()).front
    except (FileNotFoundError, MalformedFile):
        return None


def approve(vault: Path, draft: Path) -> Path:
    """What a person does: move the file from Pending_Approval/ into Approved/."""
    target = vault / "Approved" / draft.name
    os.rename(draft, target)
    return target


def audit(vault: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for log in sorted((vault / "Logs").glob("*.json")):
        lines += [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return lines


def status_is(path: Path, status: str) -> dict[str, Any] | None:
    front = front_of(path)
    return front if front is not None and front.get("status") == status else None


def set_status(path: Path, status: str) -> None:
    """A person edits the status line in their editor and saves."""
    text = path.read_text()
    current = docs.parse(text.encode()).status
    path.write_text(text.replace(f"status: {current}\n", f"status: {status}\n", 1))


def test_field_scenario_429_then_retry_then_done_with_two_audit_lines(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    vault = tmp_path / "vault"
    where = accounts("field")
    draft = write_draft(vault, FIELD_TEXT, PLATFORMS)
    with cluster.sandbox_admin() as sandbox:
        sandbox.inject("rate_limit", account="field-instagram", retry_after_seconds=3, count=1)
    with bridge_running(cluster, vault, where):
        approved = approve(vault, draft)
        partial = wait_until("partial_failure", lambda: status_is(approved, "partial_failure"))
        assert partial["type"] == "social_media_post"
        for key in ("approved_at", "last_attempt_at", "next_retry_at"):
            assert docs.parse_time(partial[key]) is not None, key
        assert partial["retry_count"] == 1
        platforms = partial["platforms"]
        assert list(platforms) == PLATFORMS
        for ok in ("facebook", "twitter"):
            assert platforms[ok]["success"] is True
            assert platforms[ok]["post_id"] and platforms[ok]["url"].startswith("http")
        ig = platforms["instagram"]
        assert ig["success"] is False and ig["error_code"] == 429 and ig["error"]
        assert 0 <= ig["retry_after"] <= 3
        body = approved.read_text()
        assert "**Status**: ⚠️ Partial Failure" in body
        assert "**Platforms**: Facebook ✅, Instagram ❌, Twitter ✅" in body
        assert "The system will automatically retry posting to Instagram in" in body
        assert "change `status: partial_failure` to `status: retry_now` and save" in body

        done = vault / "Done" / draft.name
        final = wait_until("the file in Done/", lambda: status_is(done, "completed"))
    assert not approved.exists()
    assert set(final) >= {"executed_at", "completed_at", "approved_at", "retry_count"}
    assert "next_retry_at" not in final and "last_attempt_at" not in final
    assert final["retry_count"] == 2
    assert final["platforms"]["instagram"]["success"] is True
    assert final["platforms"]["instagram"]["retry_attempt"] == 2
    assert final["platforms"]["facebook"] == platforms["facebook"]
    assert "## Content\n\n" + FIELD_TEXT in done.read_text()

    first, retry = audit(vault)
    assert first["action_type"] == "social_media_post"
    assert first["action_id"] == final["id"] and first["status"] == "partial_failure"
    assert first["platforms"] == PLATFORMS
    assert first["instagram"]["error_code"] == 429 and first["facebook"]["success"] is True
    assert retry["action_type"] == "social_media_post_retry"
    assert (retry["platform"], retry["status"], retry["retry_attempt"]) == (
        "instagram",
        "success",
        2,
    )
    assert retry["post_id"] == final["platforms"]["instagram"]["post_id"]
    assert first["execution_time_ms"] >= 0 and retry["execution_time_ms"] >= 0
    with cluster.sandbox_admin() as sandbox:
        for target in where.values():
            assert len(sandbox.posts(account=target.split(":")[1])) == 1


def test_retry_now_behind_a_closed_gate_says_so_and_runs_when_it_opens(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    vault = tmp_path / "vault"
    where = accounts("retrynow")
    draft = write_draft(vault, "Retry me now", PLATFORMS)
    with cluster.sandbox_admin() as sandbox:
        sandbox.inject("rate_limit", account="retrynow-instagram", retry_after_seconds=600)
    with bridge_running(cluster, vault, where) as bridge:
        approved = approve(vault, draft)
        wait_until("partial_failure", lambda: status_is(approved, "partial_failure"))
        # Nothing changes while it waits, so the file is not rewritten pass after pass.
        written, seen = approved.read_bytes(), bridge.passes
        wait_until("three more passes", lambda: bridge.passes >= seen + 3)
        assert approved.read_bytes() == written
        set_status(approved, "retry_now")
        wait_until(
            "the note about the closed gate",
            lambda: (
                "rate-limit gate is closed until" in approved.read_text()
                and status_is(approved, "partial_failure")
            ),
        )
        with cluster.client(token=approver_token(cluster)) as approver:
            approver.reopen_rate_limit("sandbox", "retrynow-instagram", actor="ops")
        # The gate is open now (an operator reopened it): the person asks again.
        set_status(approved, "retry_now")
        done = vault / "Done" / draft.name
        final = wait_until("completed", lambda: status_is(done, "completed"), timeout_s=20)
    assert final["platforms"]["instagram"]["success"] is True
    assert [line["action_type"] for line in audit(vault)] == [
        "social_media_post",
        "social_media_post_retry",
    ]


def test_status_cancelled_cancels_what_is_not_published(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    vault = tmp_path / "vault"
    where = accounts("cancel")
    draft = write_draft(vault, "Cancel the rest", PLATFORMS)
    with cluster.sandbox_admin() as sandbox:
        sandbox.inject("rate_limit", account="cancel-instagram", retry_after_seconds=600)
    with bridge_running(cluster, vault, where) as bridge:
        approved = approve(vault, draft)
        wait_until("partial_failure", lambda: status_is(approved, "partial_failure"))
        set_status(approved, "cancelled")
        wait_until("cancelled, written", lambda: "**Status**: 🚫 Cancelled" in approved.read_text())
        final = status_is(approved, "cancelled")
        assert final is not None
        track = bridge.store.load(final["id"])
    assert track is not None
    with cluster.client() as client:
        post = client.get_post(track.post_id)
    assert post.status == pb.POST_STATUS_CANCELLED
    states = {s.target.account: s.job_status for s in post.target_states}
    assert states["cancel-instagram"] == pb.JOB_STATUS_CANCELLED
    assert final["platforms"]["instagram"]["success"] is False
    assert final["platforms"]["facebook"]["success"] is True
    assert not (vault / "Done" / draft.name).exists()
    with cluster.sandbox_admin() as sandbox:
        assert sandbox.posts(account="cancel-instagram") == []


def _watch_process(
    cluster: LocalCluster, vault: Path, where: dict[str, str]
) -> subprocess.Popen[bytes]:
    assert cluster.access is not None
    approver_file = vault.parent / "approver.token"
    approver_file.write_text(approver_token(cluster))
    ready = vault.parent / "watch.ready"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "postroom_cli", "vault", "watch", "--vault", str(vault)]
    argv += ["--coordinator", cluster.coordinator_address, "--rescan", "0.2"]
    argv += ["--approver-token-file", str(approver_file), "--ready-file", str(ready)]
    argv += [arg for n, t in where.items() for arg in ("--account", f"{n}={t}")]
    env = {**os.environ, "POSTROOM_TOKEN": cluster.access.admin_token}
    with open(vault.parent / "watch.log", "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_until("the bridge ready", lambda: ready.exists() or proc.poll() is not None)
    assert proc.poll() is None, (vault.parent / "watch.log").read_text()
    return proc


def test_bridge_killed_mid_flight_and_file_moved_twice_create_nothing_twice(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    vault = tmp_path / "vault"
    where = accounts("restart")
    draft_cli = subprocess.run(
        [sys.executable, "-m", "postroom_cli", "vault", "draft", "--vault", str(vault)]
        + ["--text", "Survive a restart"]
        + [arg for p in PLATFORMS for arg in ("--platform", p)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    draft = Path(draft_cli.stdout.strip())
    assert draft.parent == vault.resolve() / "Pending_Approval"
    with cluster.sandbox_admin() as sandbox:
        sandbox.inject("rate_limit", account="restart-instagram", retry_after_seconds=4)
    proc = _watch_process(cluster, vault, where)
    try:
        approved = approve(vault, draft)
        store = StateStore(vault)
        file_id = draft.stem
        wait_until("the post id stored", lambda: (t := store.load(file_id)) and t.post_id)
        # A person moves it back and forth while the bridge runs, then the bridge dies.
        os.rename(approved, vault / "Pending_Approval" / draft.name)
        approve(vault, vault / "Pending_Approval" / draft.name)
        wait_until("partial_failure", lambda: status_is(approved, "partial_failure"))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = _watch_process(cluster, vault, where)
        done = vault / "Done" / draft.name
        wait_until("completed after the restart", lambda: status_is(done, "completed"))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    with cluster.client() as client:
        posts = client.list_posts(pub.ListPostsRequest(page_size=1000)).posts
    assert [p.text for p in posts].count("Survive a restart") == 1
    with cluster.sandbox_admin() as sandbox:
        for target in where.values():
            assert len(sandbox.posts(account=target.split(":")[1])) == 1
    assert [line["action_type"] for line in audit(vault)] == [
        "social_media_post",
        "social_media_post_retry",
    ]


def test_a_person_saving_while_the_bridge_writes_keeps_their_edit(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    vault = tmp_path / "vault"
    saves: list[Path] = []

    def person_saves_during_write(path: Path) -> None:
        if not saves:  # the first time the bridge is about to replace the file
            saves.append(path)
            path.write_text(path.read_text() + "\n## My notes\n\nCheck the replies at 5pm.\n")

    draft = write_draft(vault, "Edited while written", PLATFORMS)
    with bridge_running(cluster, vault, accounts("edit"), before_replace=person_saves_during_write):
        approve(vault, draft)
        done = vault / "Done" / draft.name
        wait_until("completed", lambda: status_is(done, "completed"))
    text = done.read_text()
    assert saves
    assert "## My notes\n\nCheck the replies at 5pm." in text
    assert "**Status**: ✅ Completed" in text and text.count("## Next Steps") == 1


def test_a_malformed_file_gets_a_note_and_is_left_alone(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    vault = tmp_path / "vault"
    (vault / "Approved").mkdir(parents=True)
    broken = vault / "Approved" / "broken.md"
    broken.write_bytes(b"---\nid: [unclosed\n---\n\n## Content\n\nhi\n")
    before = broken.read_bytes()
    good = write_draft(vault, "The good one still goes", PLATFORMS)
    # Polling instead of OS file events, as on a network disk.
    with bridge_running(cluster, vault, accounts("malformed"), force_polling=True):
        note = vault / "Approved" / "broken.postroom-error.md"
        wait_until("the note", note.exists)
        approve(vault, good)
        wait_until("the good file done", lambda: status_is(vault / "Done" / good.name, "completed"))
        assert broken.read_bytes() == before
        assert "not valid YAML" in note.read_text()
        broken.write_text(
            "---\nid: fixed_1\ntype: social_media_post\nstatus: pending_approval\n"
            "platforms: [facebook]\n---\n\n## Content\n\nfixed\n"
        )
        wait_until("the note gone", lambda: not note.exists())
        wait_until("the fixed file done", lambda: (vault / "Done" / "broken.md").exists())


def test_many_files_approved_at_once_are_all_scheduled(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    vault = tmp_path / "vault"
    where = {"facebook": "sandbox:bulk-facebook"}
    drafts = [write_draft(vault, f"Bulk post {i}", ["facebook"]) for i in range(BULK_FILES)]
    store = StateStore(vault)
    with bridge_running(cluster, vault, where):
        started = time.monotonic()
        for draft in drafts:  # a person selects them all and drags them into Approved/
            approve(vault, draft)

        def all_scheduled() -> bool:
            tracks = [store.load(d.stem) for d in drafts]
            return all(t is not None and t.approved_at for t in tracks)

        wait_until(f"{BULK_FILES} files scheduled", all_scheduled, timeout_s=90, poll_s=0.1)
        elapsed = time.monotonic() - started
        print(f"\n{BULK_FILES} files approved at once: all scheduled after {elapsed:.2f} s")
    with cluster.client() as client:
        posts = client.list_posts(pub.ListPostsRequest(page_size=1000)).posts
    bulk = [p for p in posts if p.text.startswith("Bulk post ")]
    assert len(bulk) == BULK_FILES
    assert all(p.status != pb.POST_STATUS_PENDING_APPROVAL for p in bulk)
    shutil.rmtree(vault)


def test_a_draft_created_just_before_a_crash_is_adopted_not_made_again(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    vault = tmp_path / "vault"
    where = {"facebook": "sandbox:adopt-facebook"}
    draft = write_draft(vault, "Made just before the crash", ["facebook"])
    # What a bridge killed between CreatePost and storing the id leaves behind: its intent in
    # .postroom/ and a DRAFT on the coordinator.
    store = StateStore(vault)
    store.save(Tracking(file_id=draft.stem, started_ms=int(time.time() * 1000)))
    with cluster.client() as client:
        orphan = client.create_post(
            pub.CreatePostRequest(
                text="Made just before the crash",
                targets=[pb.Target(platform="sandbox", account="adopt-facebook")],
                actor="postroom_vault",
            )
        )
    with bridge_running(cluster, vault, where):
        approve(vault, draft)
        wait_until("done", lambda: status_is(vault / "Done" / draft.name, "completed"))
    track = store.load(draft.stem)
    assert track is not None and track.post_id == orphan.id
    with cluster.client() as client:
        posts = client.list_posts(pub.ListPostsRequest(page_size=1000)).posts
    assert [p.text for p in posts].count("Made just before the crash") == 1
