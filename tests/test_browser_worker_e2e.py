"""A browser worker as a process (`postroom worker --kind browser`), with the coordinator as a
process, publishing through headless Chromium on a tiny local site (tests/browser_pages.py):
the post lands once, each playbook step is its own step log line with its duration, the proof
screenshots are real PNGs of the page; a changed page fails UI_CHANGED naming step and selector;
a login wall is NEEDS_LOGIN."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from asgi_thread import serve_in_thread
from browser_pages import COOKIE, PLAYBOOK, Site
from polling import wait_until

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.client import PublishingClient
from postroom_cli.cluster import ClusterConfig, LocalCluster

PNG = b"\x89PNG\r\n\x1a\n"
DEADLINE_S = 90.0


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[Site, str]]:
    s = Site()
    with serve_in_thread(s.app()) as url:
        yield s, url


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # A 10 s TTL: the commit's answer is bounded by 0.8 x the 2 s lease margin.
    config = ClusterConfig(heartbeat_interval_s=1.0, lease_ttl_s=10.0, retry_initial_s=0.3)
    with LocalCluster(tmp_path_factory.mktemp("browser-e2e"), config) as c:
        c.start_coordinator()
        yield c


def start_browser_worker(
    cluster: LocalCluster, tmp: Path, url: str, device: str, account: str, *, logged_in: bool
) -> None:
    # The coordinator knows only real platform names: the tiny site stands in for "x".
    (tmp / "unit.toml").write_text(PLAYBOOK.replace('platform = "unit"', 'platform = "x"'))
    (tmp / "accounts.toml").write_text(
        f'[[account]]\nplatform = "x"\naccount = "{account}"\nbase_url = "{url}"\n'
        'playbook = "unit.toml"\n'
    )
    profiles = tmp / "profiles"
    if logged_in:
        profile = profiles / "x" / account
        profile.mkdir(parents=True)
        cookie: dict[str, object] = {"name": COOKIE, "value": "yes", "domain": "127.0.0.1"}
        cookie |= {"path": "/", "expires": -1, "httpOnly": False, "secure": False}
        (profile / "storage-state.json").write_text(
            json.dumps({"cookies": [cookie], "origins": []})
        )
    cluster.start_worker(
        device,
        platforms=(),
        accounts=tmp / "accounts.toml",
        kind="browser",
        concurrency=2,
        extra=["--profiles-dir", str(profiles)],
    )
    cluster.wait_online([device])


def final_job(client: PublishingClient, post_id: str, status: pb.JobStatus.ValueType) -> pb.Job:
    def done() -> pb.Job | None:
        [job] = client.list_jobs(pub.ListJobsRequest(post_id=post_id)).jobs
        return client.get_job(job.id) if job.status == status else None

    return wait_until(f"the job to be {pb.JobStatus.Name(status)}", done, timeout_s=DEADLINE_S)


def test_a_browser_worker_publishes_with_step_logs_and_real_screenshots(
    cluster: LocalCluster, site: tuple[Site, str], tmp_path: Path
) -> None:
    s, url = site
    start_browser_worker(cluster, tmp_path, url, "browser-w1", "alice", logged_in=True)
    with cluster.client() as client:
        post_id = cluster.publish(client, "posted by Chromium", ["x:alice"])
        job = final_job(client, post_id, pb.JOB_STATUS_SUCCEEDED)
        assert s.posts.count("posted by Chromium") == 1
        assert job.result_url == f"{url}/alice/status/{job.result_post_id}"
        run = job.runs[-1]
        steps = [log.step for log in run.logs]
        for name in ("open_composer", "type_text", "submit", "commit"):
            assert name in steps, steps
        assert steps.index("type_text") < steps.index("submit") < steps.index("commit")
        typed = next(log for log in run.logs if log.step == "type_text")
        assert typed.message.startswith("fill [data-testid=composer] (") and "ms)" in typed.message
        [shot] = [sc for sc in run.screenshots if sc.label == "after_publish"]
        chunks = sorted(client.get_asset(shot.asset_id), key=lambda c: c.offset)
        data = b"".join(c.data for c in chunks)
        assert data.startswith(PNG) and len(data) == shot.size_bytes

        # require_confirm: the composer is filled and shown, nothing is sent until confirmed
        post_id = cluster.publish(
            client, "confirmed by a person", ["x:alice"], require_confirm=True
        )
        job = final_job(client, post_id, pb.JOB_STATUS_AWAITING_CONFIRM)
        before = wait_until(
            "the before_confirm screenshot",
            lambda: [sc for r in client.get_job(job.id).runs for sc in r.screenshots
                     if sc.label == "before_confirm"] or None,
            timeout_s=DEADLINE_S,
        )  # fmt: skip
        assert before and "confirmed by a person" not in s.posts and s.submits == 1
        client.confirm_job(job.id, actor="test")
        final_job(client, post_id, pb.JOB_STATUS_SUCCEEDED)
        assert s.posts.count("confirmed by a person") == 1
    assert cluster.workers["browser-w1"].stop() == 0


def test_a_changed_page_fails_ui_changed_and_a_login_wall_needs_login(
    cluster: LocalCluster, site: tuple[Site, str], tmp_path: Path
) -> None:
    s, url = site
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    start_browser_worker(cluster, tmp_path / "in", url, "browser-w2", "bob", logged_in=True)
    start_browser_worker(cluster, tmp_path / "out", url, "browser-w3", "carol", logged_in=False)
    s.mode = "changed"
    try:
        with cluster.client() as client:
            changed = cluster.publish(client, "never posted", ["x:bob"])
            job = final_job(client, changed, pb.JOB_STATUS_FAILED)
            assert job.last_error_class == pb.ERROR_CLASS_UI_CHANGED
            run = job.runs[-1]
            assert run.failed_step == "type_text ([data-testid=composer])"
            assert "[data-testid=composer]" in job.last_error
            assert any(sc.label == "on_failure" for sc in run.screenshots)
            walled = cluster.publish(client, "needs a login", ["x:carol"])
            job = final_job(client, walled, pb.JOB_STATUS_NEEDS_LOGIN)
            assert job.last_error_class == pb.ERROR_CLASS_AUTH_REQUIRED
            assert "login wall" in job.last_error
    finally:
        s.mode = "ok"
    assert "never posted" not in s.posts and "needs a login" not in s.posts
    for device in ("browser-w2", "browser-w3"):
        assert cluster.workers[device].stop() == 0
