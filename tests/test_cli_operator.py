"""The operator actions for when automation cannot: `postroom job export` (the escalation
bundle, opened and checked file by file), `postroom job resolve` (a publication made by hand)
and `postroom post delete`, run in-process against a sandbox, a coordinator and a worker run as
processes.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import wait_until

from postroom.client import Client
from postroom.v1 import types_pb2 as t
from postroom_cli.cluster import ClusterConfig, LocalCluster
from postroom_cli.main import main as postroom
from sandbox.admin import SandboxAdmin

DEVICE = "ops-w1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    config = ClusterConfig(heartbeat_interval_s=0.5, lease_ttl_s=2.0, retry_initial_s=0.3)
    with LocalCluster(tmp_path_factory.mktemp("cli-ops"), config) as c:
        c.start_sandbox()
        c.start_coordinator()
        c.start_worker(DEVICE, platforms=["sandbox"], concurrency=4)
        c.wait_online([DEVICE])
        yield c


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with cluster.client() as c:
        yield c


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Iterator[SandboxAdmin]:
    with cluster.sandbox_admin() as a:
        yield a


def cli(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str], *args: str, expect: int = 0
) -> str:
    """`postroom --coordinator ADDR ARGS...` in this process; its stdout and stderr."""
    capsys.readouterr()
    code = postroom(["--coordinator", cluster.coordinator_address, "--as", "alice", *args])
    out, err = capsys.readouterr()
    assert code == expect, f"postroom {' '.join(args)} exited {code}: {err}"
    return out + err


def only_job(client: Client, post_id: str) -> t.Job:
    [job] = client.list_jobs(post_id=post_id).jobs
    return job


def settled(client: Client, job_id: str, status: int) -> t.Job | None:
    job = client.get_job(job_id)
    return job if job.status == status else None


def holding_permit(client: Client, job_id: str) -> t.Job | None:
    job = client.get_job(job_id)
    return job if job.runs and job.runs[-1].committed else None


def test_job_export_writes_every_part_of_the_job(
    cluster: LocalCluster,
    client: Client,
    admin: SandboxAdmin,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A first attempt that fails (a 503), a second that publishes: two runs to bundle.
    admin.inject("server_error", account="export-acct", status=503, count=1)
    post_id = cluster.publish(client, "bundle me", ["sandbox:export-acct"])
    job = wait_until(
        "SUCCEEDED", lambda: settled(client, only_job(client, post_id).id, t.JOB_STATUS_SUCCEEDED)
    )
    assert len(job.runs) == 2
    target = tmp_path / "job.zip"
    out = cli(cluster, capsys, "job", "export", job.id, "-o", str(target))
    assert f"to {target}" in out

    with zipfile.ZipFile(target) as bundle:
        names = bundle.namelist()
        read = bundle.read
        assert names[0] == "README.txt"
        readme = read("README.txt").decode()
        for part in (job.id, "sandbox:export-acct", "SUCCEEDED", job.result_url, DEVICE):
            assert part in readme
        assert "attempt 1 on ops-w1: retry, failed at commit (TRANSIENT: " in readme
        assert "HTTP 503" in readme and "attempt 2 on ops-w1: succeeded;" in readme
        assert json.loads(read("job.json"))["id"] == job.id
        post = json.loads(read("post.json"))
        assert (post["id"], post["text"]) == (post_id, "bundle me")
        assert json.loads(read("device.json"))["id"] == DEVICE
        for run in job.runs:
            folder = f"runs/{run.attempt}-{run.id}"
            assert json.loads(read(f"{folder}/run.json"))["id"] == run.id
            logs = read(f"{folder}/logs.txt").decode().splitlines()
            assert len(logs) == len(run.logs) > 0
            assert all(line.message in text for line, text in zip(run.logs, logs, strict=True))
            shots = sorted(n for n in names if n.startswith(f"screenshots/{run.attempt}-{run.id}/"))
            assert len(shots) == len(run.screenshots)
            for shot, name in zip(run.screenshots, shots, strict=True):
                digest = hashlib.sha256(read(name)).hexdigest()
                assert shot.asset_id.removeprefix("sha256:") == digest, name
        assert any(n.startswith("screenshots/") for n in names)
        audit = [json.loads(line) for line in read("audit.jsonl").decode().splitlines()]
    about = {job.id, post_id, DEVICE, *(run.id for run in job.runs)}
    assert audit and all(entry["subject_id"] in about for entry in audit)
    actions = {(entry["subject_id"], entry["action"]) for entry in audit}
    assert (post_id, "POST_CREATED") in actions
    assert (job.id, "JOB_LEASED") in actions
    assert [entry["seq"] for entry in audit] == sorted(entry["seq"] for entry in audit)


def test_job_export_of_an_unknown_job_leaves_no_file(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "none.zip"
    out = cli(cluster, capsys, "job", "export", "j-nope", "-o", str(target), expect=1)
    assert "error: NOT_FOUND:" in out
    assert list(tmp_path.iterdir()) == []


def test_job_resolve_is_refused_while_a_permit_is_live_and_accepted_after(
    cluster: LocalCluster, client: Client, admin: SandboxAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    # The platform holds the request after the commit permit: an attempt that may still be
    # publishing. It then answers 504 and nothing was created; one attempt allowed, so the
    # doubt is cleared by a look, never by posting again.
    admin.inject("hang", account="hand-acct", hang_seconds=8)
    post_id = cluster.publish(client, "posted by hand", ["sandbox:hand-acct"], max_attempts=1)
    job_id = only_job(client, post_id).id
    committing = wait_until("the commit permit", lambda: holding_permit(client, job_id))
    assert committing.status == t.JOB_STATUS_RUNNING
    url = "https://sandbox.example/hand-acct/by-hand-1"
    args = ("job", "resolve", job_id, "--published-url", url, "--post-id", "by-hand-1")
    refused = cli(cluster, capsys, *args, "--reason", "the login wall", expect=1)
    assert refused.startswith("error: FAILED_PRECONDITION: ")
    assert f"device {DEVICE} holds a commit permit" in refused and "lease to end at" in refused
    assert client.get_job(job_id).status != t.JOB_STATUS_SUCCEEDED

    wait_until("the attempt to end", lambda: client.get_job(job_id).runs[0].outcome != "running")
    out = cli(cluster, capsys, *args, "--reason", "the login wall")
    assert f"job {job_id}: SUCCEEDED" in out and f"by hand by user:alice: {url}" in out
    job = client.get_job(job_id)
    assert job.status == t.JOB_STATUS_SUCCEEDED and job.resolved_by == "user:alice"
    assert (job.result_url, job.result_post_id) == (url, "by-hand-1")
    shown = cli(cluster, capsys, "job", "show", job_id)
    assert re.search(r"published by hand +yes, recorded by user:alice", shown)
    [entry] = client.list_audit_events(subject_id=job_id, action="JOB_RESOLVED_BY_HAND").events
    assert entry.actor == "user:alice" and "the login wall" in entry.details_json
    assert admin.posts(account="hand-acct") == []  # postroom itself never posted it


def test_job_resolve_refuses_a_url_that_is_not_one(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    out = cli(cluster, capsys, "job", "resolve", "j-1", "--published-url", "later", expect=2)
    assert "--published-url must be the post's http(s) URL" in out


def test_post_delete_refused_when_a_target_is_live_and_done_when_none_is(
    cluster: LocalCluster, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    live = cluster.publish(client, "already out", ["sandbox:del-live"])
    job = wait_until(
        "SUCCEEDED", lambda: settled(client, only_job(client, live).id, t.JOB_STATUS_SUCCEEDED)
    )
    refused = cli(cluster, capsys, "post", "delete", live, expect=1)
    assert refused.startswith("error: FAILED_PRECONDITION: ") and job.result_url in refused
    assert client.get_post(live).id == live

    waiting = cluster.publish(client, "never out", ["sandbox:del-wait"], require_confirm=True)
    held = only_job(client, waiting).id
    wait_until("AWAITING_CONFIRM", lambda: settled(client, held, t.JOB_STATUS_AWAITING_CONFIRM))
    out = cli(cluster, capsys, "post", "delete", waiting, "--reason", "wrong account")
    assert f"post {waiting}: deleted" in out and f"job {held}: cancelled" in out
    assert "error: NOT_FOUND:" in cli(cluster, capsys, "post", "show", waiting, expect=1)
    [entry] = client.list_audit_events(subject_id=waiting, action="POST_DELETED").events
    assert entry.actor == "user:alice"
