"""`postroom.Client` and `postroom.AsyncClient` against a real coordinator (and a sandbox
worker) run as processes: every method, each client, and the exception each failure raises.

One scenario is written once, as coroutines: the async client runs it as it is; the sync client
runs it through `Awaited`, which only makes each call awaitable (the call itself is the sync
client's own, blocking, in the test's thread).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import socket
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import postroom
from postroom.tls import ClientTls
from postroom.v1 import access_pb2 as ac
from postroom.v1 import types_pb2 as t
from postroom_cli.cluster import ClusterConfig, LocalCluster

ACCOUNT = "api"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    config = ClusterConfig(heartbeat_interval_s=0.5, lease_ttl_s=2.0, auth=True)
    with LocalCluster(tmp_path_factory.mktemp("client-api"), config) as c:
        c.start_sandbox()
        c.start_coordinator()
        c.start_worker("api-w1", platforms=["sandbox"], concurrency=4)
        c.wait_online(["api-w1"])
        yield c


class Awaited:
    """A sync `Client` whose calls can be awaited and whose streams are async iterators."""

    def __init__(self, client: postroom.Client) -> None:
        self.client = client
        self.actor = client.actor

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)

        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if isinstance(result, Iterator):
                return _async_iter(result)
            return _done(result)

        return call

    async def close(self) -> None:
        self.client.close()


async def _done(value: Any) -> Any:
    return value


async def _async_iter(items: Iterator[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def connect(cluster: LocalCluster, mode: str, token: str) -> Any:
    settings: dict[str, Any] = {"token": token, "tls": ClientTls(), "actor": "tester"}
    if mode == "async":
        return postroom.AsyncClient(cluster.coordinator_address, **settings)
    return Awaited(postroom.Client(cluster.coordinator_address, **settings))


async def job_reaching(client: Any, job_id: str, status: int) -> t.Job:
    """Watch the job (the async iterator of changes) until it has `status`."""
    async for event in client.watch_job(job_id):
        if event.WhichOneof("event") == "job" and event.job.status == status:
            job: t.Job = event.job
            return job
    raise AssertionError(f"the watch of {job_id} ended before status {status}")


async def posts_and_jobs(client: Any, approver: Any, tmp: Path) -> None:
    post = await client.create_post(
        text="first words", targets=[f"sandbox:{ACCOUNT}"], require_confirm=True
    )
    assert post.status == t.POST_STATUS_DRAFT and post.text == "first words"
    assert (await client.get_post(post.id)).id == post.id
    drafts = await client.list_posts(status=t.POST_STATUS_DRAFT, page_size=1000)
    assert post.id in [p.id for p in drafts.posts]
    post = await client.update_post(post_id=post.id, text="Hello from the Python API")
    assert post.text == "Hello from the Python API"
    assert (await client.submit_post(post.id)).status == t.POST_STATUS_PENDING_APPROVAL
    with pytest.raises(postroom.PermissionDenied) as denied:  # four eyes: not its author
        await client.approve_post(post.id, content_hash=post.content_hash)
    assert denied.value.status.name == "PERMISSION_DENIED" and denied.value.message
    approved = await approver.approve_post(post.id, content_hash=post.content_hash)
    assert approved.status == t.POST_STATUS_APPROVED
    scheduled = await client.schedule_post(post.id)
    assert scheduled.status in (t.POST_STATUS_SCHEDULED, t.POST_STATUS_PUBLISHING)
    [job] = (await client.list_jobs(post_id=post.id)).jobs
    await job_reaching(client, job.id, t.JOB_STATUS_AWAITING_CONFIRM)
    await client.confirm_job(job.id)
    done = await job_reaching(client, job.id, t.JOB_STATUS_SUCCEEDED)
    assert done.result_url.startswith("http")
    with pytest.raises(postroom.FailedPrecondition):  # nothing left to retry
        await client.retry_job(job.id)
    job = await client.get_job(job.id)
    shots = [s for run in job.runs for s in run.screenshots]
    assert shots, "the sandbox worker takes proof screenshots"
    target = tmp / "proof.png"
    info = await client.download_screenshot(shots[0].asset_id, target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    assert shots[0].asset_id.endswith(digest) and info.total_size == target.stat().st_size
    chunks = [c async for c in client.get_asset(shots[0].asset_id)]
    assert b"".join(c.data for c in chunks) == target.read_bytes()
    names = await client.export_job(job.id, tmp / "bundle.zip")
    with zipfile.ZipFile(tmp / "bundle.zip") as bundle:
        assert sorted(bundle.namelist()) == sorted(names)
    actions = [e.action async for e in client.audit_events(subject_id=post.id)]
    assert actions[:2] == ["POST_CREATED", "POST_UPDATED"], actions
    page = await client.list_audit_events(subject_id=post.id, page_size=1)
    assert len(page.events) == 1 and page.next_after_seq


async def cancelling(client: Any, approver: Any) -> None:
    post = await client.create_post(text="never mind", targets=[f"sandbox:{ACCOUNT}"])
    cancelled = await client.cancel_post(post.id, reason="changed my mind")
    assert cancelled.status == t.POST_STATUS_CANCELLED
    post = await client.create_post(
        text="stop this one", targets=[f"sandbox:{ACCOUNT}"], require_confirm=True
    )
    await client.submit_post(post.id)
    await approver.approve_post(post.id, content_hash=post.content_hash)
    await client.schedule_post(post.id)
    [job] = (await client.list_jobs(post_id=post.id)).jobs
    await job_reaching(client, job.id, t.JOB_STATUS_AWAITING_CONFIRM)
    assert (await client.cancel_job(job.id, reason="no")).status == t.JOB_STATUS_CANCELLED


async def by_hand(cluster: LocalCluster, client: Any, approver: Any, mode: str) -> None:
    """resolve_job and delete_post: a failed job recorded as posted by hand; a draft deleted."""
    account = f"hand-{mode}"
    with cluster.sandbox_admin() as sandbox:
        sandbox.inject("invalid", account=account)
    post = await client.create_post(text="refused by the platform", targets=[f"sandbox:{account}"])
    await client.submit_post(post.id)
    await approver.approve_post(post.id, content_hash=post.content_hash)
    await client.schedule_post(post.id)
    [job] = (await client.list_jobs(post_id=post.id)).jobs
    await job_reaching(client, job.id, t.JOB_STATUS_FAILED)
    with pytest.raises(postroom.InvalidArgument):
        await client.resolve_job(job.id, published_url="not a url")
    url = f"https://sandbox.example/{account}/1"
    resolved = await client.resolve_job(job.id, published_url=url, reason="posted it myself")
    assert resolved.status == t.JOB_STATUS_SUCCEEDED and resolved.result_url == url
    assert resolved.resolved_by
    with pytest.raises(postroom.FailedPrecondition) as live:  # a target is live now
        await client.delete_post(post.id)
    assert url in live.value.message
    draft = await client.create_post(text="delete me", targets=[f"sandbox:{account}"])
    deleted = await client.delete_post(draft.id, reason="typo")
    assert deleted.post_id == draft.id
    with pytest.raises(postroom.NotFound):
        await client.get_post(draft.id)


async def devices_gates_access(cluster: LocalCluster, client: Any, mode: str) -> None:
    me = await client.who_am_i()
    assert me.authenticated and me.role == ac.ROLE_ADMIN
    devices = (await client.list_devices()).devices
    assert [d.id for d in devices] == ["api-w1"]
    check = await client.check_login(device_id="api-w1", platform="sandbox", account=ACCOUNT)
    assert check.badge.state == t.LOGIN_STATE_LOGGED_IN
    await client.list_rate_limits(closed_only=False)
    gate = await client.reopen_rate_limit("sandbox", ACCOUNT)
    assert not gate.closed
    made = await client.create_token(f"script-{mode}", ac.ROLE_AUTHOR)
    assert made.secret
    names = [tok.name for tok in (await client.list_tokens()).tokens]
    assert f"script-{mode}" in names
    await client.revoke_token(f"script-{mode}")
    with pytest.raises(postroom.Unauthenticated):
        await connect(cluster, mode, made.secret).who_am_i()
    enrolled = await client.enroll_device(
        f"laptop-{mode}", [t.Target(platform="sandbox", account="x")]
    )
    assert enrolled.secret
    listed = (await client.list_enrollments()).enrollments
    assert f"laptop-{mode}" in [e.name for e in listed]
    assert (await client.revoke_device(f"laptop-{mode}")).name == f"laptop-{mode}"


async def failures(cluster: LocalCluster, client: Any, mode: str) -> None:
    """Each failure raises its class, carrying the status and the coordinator's message."""
    with pytest.raises(postroom.NotFound) as missing:
        await client.get_post("no-such-post")
    assert missing.value.code == "NOT_FOUND" and "no-such-post" in missing.value.message
    with pytest.raises(postroom.InvalidArgument) as invalid:
        await client.create_post(text="nowhere to go", targets=[])
    assert invalid.value.status is not None and invalid.value.status.name == "INVALID_ARGUMENT"
    stranger = connect(cluster, mode, "prt_not-a-token")
    with pytest.raises(postroom.Unauthenticated):
        await stranger.who_am_i()
    await stranger.close()
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings: dict[str, Any] = {"token": "", "tls": ClientTls(), "timeout_s": 5}
    nowhere: Any = (
        postroom.AsyncClient(f"127.0.0.1:{port}", **settings)
        if mode == "async"
        else Awaited(postroom.Client(f"127.0.0.1:{port}", **settings))
    )
    with pytest.raises(postroom.Unavailable) as unavailable:
        await nowhere.list_devices()
    assert f"is the coordinator running at 127.0.0.1:{port}?" in unavailable.value.message
    await nowhere.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_every_method_against_a_coordinator(
    cluster: LocalCluster, mode: str, tmp_path: Path
) -> None:
    assert cluster.access is not None
    admin = cluster.access.admin_token
    with cluster.client() as setup:
        approver_token = cluster.access.approver_token(setup)

    async def scenario() -> None:
        client = connect(cluster, mode, admin)
        approver = connect(cluster, mode, approver_token)
        try:
            await posts_and_jobs(client, approver, tmp_path)
            await cancelling(client, approver)
            await by_hand(cluster, client, approver, mode)
            await devices_gates_access(cluster, client, mode)
            await failures(cluster, client, mode)
        finally:
            await client.close()
            await approver.close()

    asyncio.run(scenario())


def test_import_postroom_does_not_load_the_client() -> None:
    import subprocess
    import sys

    code = (
        "import sys, postroom.clock; print('postroom.client' in sys.modules, 'grpc' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_help_shows_the_docstrings() -> None:
    assert "Record that a person published" in (postroom.Client.resolve_job.__doc__ or "")
    assert postroom.AsyncClient.resolve_job.__doc__ == postroom.Client.resolve_job.__doc__
    assert "POSTROOM_COORDINATOR" in (postroom.Client.__doc__ or "")
