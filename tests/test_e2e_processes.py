"""End to end with real processes: sandbox, coordinator and workers, each its own process.

One sandbox + coordinator serve the module; each test starts its own workers, restricted to its
own sandbox accounts, so tests cannot take each other's jobs. Crashes are real signals (SIGKILL,
SIGTERM) sent by PID; every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from local_servers import require_pds
from polling import wait_until

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.client import PublishingClient
from postroom_cli.cluster import ClusterConfig, LocalCluster
from sandbox.admin import SandboxAdmin

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    config = ClusterConfig(heartbeat_interval_s=0.5, lease_ttl_s=2.0, retry_initial_s=0.3)
    with LocalCluster(tmp_path_factory.mktemp("e2e"), config) as c:
        c.start_sandbox()
        c.start_coordinator()
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[PublishingClient]:
    with cluster.client() as c:
        yield c


@pytest.fixture
def admin(cluster: LocalCluster) -> Iterator[SandboxAdmin]:
    with SandboxAdmin(cluster.sandbox_url) as a:
        yield a


def only_job(client: PublishingClient, post_id: str) -> pb.Job:
    [job] = client.list_jobs(pub.ListJobsRequest(post_id=post_id)).jobs
    return client.get_job(job.id)


def job_in(client: PublishingClient, job_id: str, status: int, device: str = "") -> pb.Job | None:
    job = client.get_job(job_id)
    if job.status == status and (not device or job.device_id == device):
        return job
    return None


def cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postroom_cli", "--coordinator", cluster.coordinator_address, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_posts_to_three_accounts_publish_and_job_show_tells_the_story(
    cluster: LocalCluster, client: PublishingClient, admin: SandboxAdmin
) -> None:
    accounts = ["three-a", "three-b", "three-c"]
    for device in ("three-w1", "three-w2"):
        cluster.start_worker(device, platforms=[f"sandbox:{a}" for a in accounts])
    cluster.wait_online(["three-w1", "three-w2"])
    post_id = cluster.publish(client, "three accounts", [f"sandbox:{a}" for a in accounts])

    wait_until(
        "the post to be published",
        lambda: client.get_post(post_id).status == pb.POST_STATUS_PUBLISHED,
    )
    for account in accounts:
        assert len(admin.posts(account=account)) == 1
    job = client.list_jobs(pub.ListJobsRequest(post_id=post_id)).jobs[0]
    shown = cli(cluster, "job", "show", job.id)
    assert shown.returncode == 0, shown.stderr
    assert "SUCCEEDED" in shown.stdout
    assert "commit_permit" in shown.stdout and "published" in shown.stdout
    assert "after_publish" in shown.stdout  # the proof screenshot's metadata
    for device in ("three-w1", "three-w2"):
        assert cluster.workers[device].stop() == 0


def test_worker_killed_before_its_commit_point_is_finished_by_another_worker(
    cluster: LocalCluster, client: PublishingClient, admin: SandboxAdmin
) -> None:
    first = cluster.start_worker("pre-w1", platforms=["sandbox:kill-pre"])
    cluster.wait_online(["pre-w1"])
    # require_confirm parks the job at AWAITING_CONFIRM: mid-job, before the irreversible step.
    post_id = cluster.publish(
        client, "killed before commit", ["sandbox:kill-pre"], require_confirm=True
    )
    job = wait_until(
        "the job to wait for confirmation on pre-w1",
        lambda: job_in(
            client, only_job(client, post_id).id, pb.JOB_STATUS_AWAITING_CONFIRM, "pre-w1"
        ),
    )
    cluster.start_worker("pre-w2", platforms=["sandbox:kill-pre"])
    cluster.wait_online(["pre-w2"])
    first.kill()

    moved = wait_until(
        "the job to move to pre-w2",
        lambda: job_in(client, job.id, pb.JOB_STATUS_AWAITING_CONFIRM, "pre-w2"),
    )
    assert moved.lease_epoch > job.lease_epoch
    assert not moved.verify_first  # it never reached its commit permit: no doubt to clear
    confirmed = cli(cluster, "job", "confirm", moved.id)
    assert confirmed.returncode == 0, confirmed.stderr
    done = wait_until("success", lambda: job_in(client, job.id, pb.JOB_STATUS_SUCCEEDED))
    assert done.device_id == "pre-w2"
    assert len(admin.posts(account="kill-pre")) == 1
    audit = client.list_audit_events(pub.ListAuditEventsRequest(subject_id=job.id))
    assert "JOB_STUCK_RECOVERY" in [e.action for e in audit.events]
    cluster.workers["pre-w2"].stop()


def test_worker_killed_right_after_its_commit_permit_is_verified_not_reposted(
    cluster: LocalCluster, client: PublishingClient, admin: SandboxAdmin
) -> None:
    first = cluster.start_worker("post-w1", platforms=["sandbox:kill-post"])
    cluster.wait_online(["post-w1"])
    # The platform makes the post, then never answers: the worker dies waiting.
    admin.inject("accept_then_hang", account="kill-post", hang_seconds=60)
    post_id = cluster.publish(client, "killed after the permit", ["sandbox:kill-post"])
    job_id = only_job(client, post_id).id
    wait_until("the post to exist at the sandbox", lambda: admin.posts(account="kill-post"))
    running = client.get_job(job_id)
    assert running.runs[-1].committed
    first.kill()
    cluster.start_worker("post-w2", platforms=["sandbox:kill-post"])

    done = wait_until("success", lambda: job_in(client, job_id, pb.JOB_STATUS_SUCCEEDED))
    [made] = admin.posts(account="kill-post")  # still exactly one
    assert done.result_post_id == made["id"]
    assert done.device_id == "post-w2"
    leased = [
        e
        for e in client.list_audit_events(
            pub.ListAuditEventsRequest(subject_id=job_id, action="JOB_LEASED")
        ).events
    ]
    assert len(leased) == 2 and '"verify_first": true' in leased[1].details_json
    cluster.workers["post-w2"].stop()


def test_coordinator_killed_with_jobs_in_flight_then_every_post_published_once(
    cluster: LocalCluster, client: PublishingClient, admin: SandboxAdmin
) -> None:
    accounts = ["restart-a", "restart-b", "restart-c"]
    workers = ["restart-w1", "restart-w2"]
    for device in workers:
        cluster.start_worker(device, platforms=[f"sandbox:{a}" for a in accounts], concurrency=3)
    cluster.wait_online(workers)
    # Two commits hang for a while, so jobs are surely in flight when the coordinator dies.
    admin.inject("hang", account="restart-a", count=2, hang_seconds=2)
    post_ids = [
        cluster.publish(
            client,
            f"restart {n}",
            [f"sandbox:{accounts[n % 3]}", f"sandbox:{accounts[(n + 1) % 3]}"],
        )
        for n in range(6)
    ]
    wait_until(
        "a job in flight",
        lambda: (
            client.list_jobs(
                pub.ListJobsRequest(status=pb.JOB_STATUS_RUNNING, account="restart-a")
            ).jobs
        ),
    )
    assert cluster.coordinator is not None
    cluster.coordinator.kill()
    cluster.start_coordinator()  # same database, same port

    with cluster.client() as fresh:
        wait_until(
            "every post published",
            lambda: all(fresh.get_post(p).status == pb.POST_STATUS_PUBLISHED for p in post_ids),
            60,
        )
        jobs = [j for p in post_ids for j in fresh.list_jobs(pub.ListJobsRequest(post_id=p)).jobs]
    made = [p for a in accounts for p in admin.posts(account=a)]
    assert len(made) == len(jobs) == 12
    assert admin.duplicates() == []
    assert {p["client_key"] for p in made} == {j.platform_key for j in jobs}
    for device in workers:
        cluster.workers[device].stop()


def test_sigterm_drains_a_worker_in_flight_jobs_finish_none_lost(
    cluster: LocalCluster, client: PublishingClient, admin: SandboxAdmin
) -> None:
    worker = cluster.start_worker("drain-w1", platforms=["sandbox:drain"])
    cluster.wait_online(["drain-w1"])
    first = cluster.publish(client, "in flight at SIGTERM", ["sandbox:drain"], require_confirm=True)
    job = wait_until(
        "the job to wait on drain-w1",
        lambda: job_in(
            client, only_job(client, first).id, pb.JOB_STATUS_AWAITING_CONFIRM, "drain-w1"
        ),
    )
    worker.signal(15)  # SIGTERM: goodbye, finish what it holds, take nothing new

    def draining() -> bool:  # the coordinator has heard the goodbye: no free slots offered
        devices = {d.id: d for d in client.list_devices().devices}
        return devices["drain-w1"].free_slots == 0

    wait_until("the coordinator to see drain-w1 draining", draining)
    second = cluster.publish(client, "arrives while draining", ["sandbox:drain"])
    second_job = only_job(client, second)
    client.confirm_job(job.id, actor="test")

    wait_until(
        "the in-flight job to succeed on the draining worker",
        lambda: job_in(client, job.id, pb.JOB_STATUS_SUCCEEDED, "drain-w1"),
    )
    assert worker.popen.wait(30) == 0
    assert client.get_job(second_job.id).status == pb.JOB_STATUS_QUEUED  # not taken by drain-w1
    cluster.start_worker("drain-w2", platforms=["sandbox:drain"])
    wait_until(
        "the second job to succeed elsewhere",
        lambda: job_in(client, second_job.id, pb.JOB_STATUS_SUCCEEDED, "drain-w2"),
    )
    assert len(admin.posts(account="drain")) == 2
    cluster.workers["drain-w2"].stop()


def test_coordinator_sigterm_drains_exits_zero_and_workers_come_back(
    cluster: LocalCluster, admin: SandboxAdmin
) -> None:
    cluster.start_worker("term-w1", platforms=["sandbox:term"])
    cluster.wait_online(["term-w1"])
    with cluster.client() as client:
        before = cluster.publish(client, "before the restart", ["sandbox:term"])
        wait_until(
            "the first post",
            lambda: job_in(client, only_job(client, before).id, pb.JOB_STATUS_SUCCEEDED),
        )
    assert cluster.coordinator is not None
    assert cluster.coordinator.stop() == 0  # SIGTERM: goodbye to workers, commit, exit 0

    cluster.start_coordinator()  # same database, same port
    cluster.wait_online(["term-w1"])  # the worker reconnected by itself
    with cluster.client() as client:
        assert client.get_post(before).status == pb.POST_STATUS_PUBLISHED  # nothing lost
        after = cluster.publish(client, "after the restart", ["sandbox:term"])
        wait_until(
            "the second post",
            lambda: job_in(client, only_job(client, after).id, pb.JOB_STATUS_SUCCEEDED),
        )
    assert len(admin.posts(account="term")) == 2
    cluster.workers["term-w1"].stop()


@pytest.mark.timeout(240)
def test_make_demo_exits_zero() -> None:
    done = subprocess.run(
        ["make", "-s", "demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "published 4 posts to 8 targets" in done.stdout
    assert "duplicates: 0" in done.stdout


@pytest.mark.timeout(240)
def test_demo_on_the_local_bluesky_and_mastodon_counts_one_post_per_target() -> None:
    require_pds()
    done = subprocess.run(
        [sys.executable, "-m", "postroom_cli", "demo", "--platforms", "bluesky,mastodon"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    out = " ".join(done.stdout.split())  # rich wraps long lines
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "published 3 posts to 4 targets" in out
    assert "mastodon:demo was rate limited, then published on attempt 2" in out
    # Counted on the platforms themselves: every target exactly once.
    assert "bluesky:demo holds 2 posts; postroom published 2" in out
    assert "mastodon:demo holds 2 posts; postroom published 2" in out


def test_demo_refuses_an_unknown_platform() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "postroom_cli", "demo", "--platforms", "myspace"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown platform(s) ['myspace']; choose from sandbox, bluesky, mastodon" in done.stderr


def _children_of(parent: int) -> list[int]:
    """PIDs whose parent is `parent` (the demo's children run in sessions of their own)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
        if int(stat.rpartition(")")[2].split()[1]) == parent:
            found.append(int(proc.name))
    return found


@pytest.mark.timeout(120)
def test_sigterm_to_a_running_demo_stops_every_child(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "postroom_cli", "demo", "--keep-running", "--workdir", str(workdir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    children: list[int] = []
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        for line in demo.stdout:  # ends by itself when the demo exits
            lines.append(line)
            if "everything is still running" in line:
                break
        assert any("everything is still running" in line for line in lines), "".join(lines)
        children = _children_of(demo.pid)
        assert len(children) == 5  # sandbox, coordinator, two workers, the web console
        demo.terminate()
        assert demo.wait(60) == 130
        # The demo waited for each child it stopped, so none is left, not even as a zombie.
        assert [pid for pid in children if Path(f"/proc/{pid}").exists()] == []
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in children:  # only if the demo left them behind: the test failed anyway
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if demo.stdout is not None:
            demo.stdout.close()
