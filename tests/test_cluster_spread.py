"""Placement "spread": three ACTIVE coordinators on one PostgreSQL, each holding a fair share of
the shards, six workers each dialling ONE of them, posts whose targets live in different shards.

Real processes (LocalCluster): a sandbox, three `postroom coordinator --placement spread` on a
database of the test's own, six API workers, two per coordinator address (each worker's stream is
fanned out by the coordinator it dialled to every shard's owner). Every post targets two accounts,
so most posts span two coordinators: the one that takes the operator's command (the post's home)
creates the jobs of the shards it owns and hands the others to their owners as post tasks. Then
one coordinator is SIGKILLed mid-flow: the survivors take its shards over, its workers reconnect
elsewhere and resume, and in the end every post is PUBLISHED, the sandbox holds each (post,
target) exactly once, and every survivor answers the same.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from pg_rig import cluster_on_own_database, own_database, post_texts, run_apart
from polling import wait_until

from coordinator.store.shards import shard_of
from postroom.client.errors import Unavailable
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.client import PublishingClient
from postroom_cli.cluster import ClusterConfig, LocalCluster, Peer
from sandbox.admin import SandboxAdmin

SHARDS = 64
WORKERS = [f"spread-w{i}" for i in range(6)]
ACCOUNTS = [f"acct{i}" for i in range(6)]
HELD_ACCOUNTS = ACCOUNTS[:2]  # their answers hang: those jobs are in flight at the kill
HANG_S = 4.0
OWNERSHIP_TTL_S = 3.0
WAIT_S = 60.0
_SHARDS_OWNED = re.compile(r"^postroom_shards_owned (\S+)$", re.MULTILINE)
_SUCCEEDED = re.compile(r'^postroom_jobs\{[^}]*status="succeeded"[^}]*\} (\S+)$', re.MULTILINE)
_ONLINE = re.compile(r"^postroom_devices_online\{[^}]*\} (\S+)$", re.MULTILINE)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    config = ClusterConfig(
        heartbeat_interval_s=1.0,
        lease_ttl_s=15.0,
        retry_initial_s=0.3,
        ownership_ttl_s=OWNERSHIP_TTL_S,
    )
    with cluster_on_own_database(tmp_path, config, coordinators=3, placement="spread") as c:
        yield c


def _metrics(peer: Peer) -> str:
    try:
        with urllib.request.urlopen(peer.metrics_url, timeout=2) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""


def shards_owned(peer: Peer) -> int:
    """What the coordinator says it holds (its gauge postroom_shards_owned); -1 if it is gone."""
    found = _SHARDS_OWNED.search(_metrics(peer))
    return int(float(found.group(1))) if found else -1


def totals(peers: list[Peer]) -> tuple[int, int]:
    """Summed over the coordinators, as a dashboard sums them: jobs SUCCEEDED, devices online."""
    texts = [_metrics(p) for p in peers]
    succeeded = sum(int(float(v)) for t in texts for v in _SUCCEEDED.findall(t))
    online = sum(int(float(v)) for t in texts for v in _ONLINE.findall(t))
    return succeeded, online


def spread(cluster: LocalCluster) -> dict[str, int] | None:
    """The shards each live coordinator holds, once they are shared fairly (else None)."""
    live = [p for p in cluster.peers.values() if p.child.alive()]
    held = {p.name: shards_owned(p) for p in live}
    fair = {SHARDS // len(live), -(-SHARDS // len(live))}
    if sum(held.values()) == SHARDS and set(held.values()) <= fair:
        return held
    return None


def _publish(cluster: LocalCluster, client: PublishingClient, n: int, first: int) -> list[str]:
    ids = []
    for i in range(first, first + n):
        targets = [ACCOUNTS[i % len(ACCOUNTS)], ACCOUNTS[(i + 3) % len(ACCOUNTS)]]
        ids.append(cluster.publish(client, f"spread post {i}", [f"sandbox:{a}" for a in targets]))
    return ids


def _answers(client: PublishingClient) -> bool:
    try:
        client.list_posts()
    except Unavailable:
        return False
    return True


def _statuses(address: str, post_ids: list[str]) -> dict[str, int]:
    with PublishingClient(address, timeout_s=10) as client:
        return {pid: client.get_post(pid).status for pid in post_ids}


def _all_published(client: PublishingClient, post_ids: list[str]) -> bool:
    try:
        return all(client.get_post(pid).status == pb.POST_STATUS_PUBLISHED for pid in post_ids)
    except Unavailable:
        return False


def _every_target_once(admin: SandboxAdmin, jobs: list[pb.Job], posts: int) -> None:
    assert len(jobs) == 2 * posts
    assert {pb.JobStatus.Name(j.status) for j in jobs} == {"JOB_STATUS_SUCCEEDED"}
    assert admin.duplicates() == []
    made = admin.posts()
    assert sorted(p["client_key"] for p in made) == sorted(j.platform_key for j in jobs)


def test_three_coordinators_share_the_shards_and_survive_the_death_of_one(
    cluster: LocalCluster,
) -> None:
    held = wait_until("the shards shared by three coordinators", lambda: spread(cluster), WAIT_S)
    assert len(held) == 3 and all(n in (21, 22) for n in held.values()), held
    peers = list(cluster.peers.values())
    for device_id in WORKERS:  # each with all three addresses, each list from another one
        cluster.start_worker(device_id, concurrency=2)
    cluster.wait_online(WORKERS, timeout_s=WAIT_S)
    with cluster.sandbox_admin() as admin:
        for account in HELD_ACCOUNTS:
            admin.inject("accept_then_hang", account=account, count=3, hang_seconds=HANG_S)
        with cluster.client() as client:
            post_ids = _publish(cluster, client, 18, 0)
        wait_until("jobs in the workers' hands", lambda: admin.stats()["hanging"] >= 2, WAIT_S)

        victim = peers[2]
        victim.child.kill()
        after = wait_until("the survivors to share every shard", lambda: spread(cluster), WAIT_S)
        assert victim.name not in after and sum(after.values()) == SHARDS, after
        cluster.coordinator_address = peers[1].address
        with cluster.client() as client:
            wait_until("a survivor to answer", lambda: _answers(client), WAIT_S)
            post_ids += _publish(cluster, client, 6, 18)
            try:
                wait_until(
                    "every post published",
                    lambda: _all_published(client, post_ids),
                    WAIT_S,
                    poll_s=0.3,
                )
            except AssertionError:
                for pid in post_ids:
                    for j in client.list_jobs(pub.ListJobsRequest(post_id=pid)).jobs:
                        print(
                            pid,
                            j.id,
                            j.platform,
                            j.account,
                            pb.JobStatus.Name(j.status),
                            j.device_id,
                            j.last_error,
                        )
                raise
            jobs = [
                j
                for pid in post_ids
                for j in client.list_jobs(pub.ListJobsRequest(post_id=pid)).jobs
            ]
        _every_target_once(admin, jobs, len(post_ids))
    views = [_statuses(p.address, post_ids) for p in peers[:2]]
    assert views[0] == views[1] == {pid: pb.POST_STATUS_PUBLISHED for pid in post_ids}
    # One of them exports the totals: a dashboard's sum counts each job and device once.
    expected = (len(jobs), len(WORKERS))
    try:
        wait_until("the totals summed once", lambda: totals(peers[:2]) == expected, WAIT_S)
    except AssertionError:
        print("TOTALS", totals(peers[:2]), expected)
        raise


def test_a_coordinator_that_joins_gets_its_share_and_work_goes_on(cluster: LocalCluster) -> None:
    wait_until("the shards shared by three coordinators", lambda: spread(cluster), WAIT_S)
    cluster.start_worker(WORKERS[0], concurrency=4, coordinators=cluster.coordinator_address)
    cluster.wait_online(WORKERS[:1], timeout_s=WAIT_S)
    with cluster.client() as client:
        post_ids = _publish(cluster, client, 6, 0)
        cluster.start_peer("coord-4", ["--placement", "spread"])
        held = wait_until("four coordinators sharing", lambda: spread(cluster), WAIT_S)
        assert len(held) == 4 and all(n == 16 for n in held.values()), held
        post_ids += _publish(cluster, client, 6, 6)
        wait_until("every post published", lambda: _all_published(client, post_ids), WAIT_S)


def test_spread_under_mutual_tls_is_refused_with_what_to_do_instead(tmp_path: Path) -> None:
    """A worker's stream reaches other coordinators' shards through the one it dials, which
    cannot present the worker's certificate: the coordinator says so and does not start."""
    pem = tmp_path / "any.pem"
    pem.write_text("not read: refused before\n")
    with own_database() as url:
        started = subprocess.run(
            [sys.executable, "-m", "coordinator.main", "--listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0", "--db", url, "--assets", str(tmp_path / "a"),
             "--placement", "spread", "--tls-cert", str(pem), "--tls-key", str(pem),
             "--tls-client-ca", str(pem)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert started.returncode == 2, started.stdout + started.stderr
    assert "--placement spread with mutual TLS" in started.stderr
    assert "use --placement one" in started.stderr


async def _owned_by(url: str, owner: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT shard FROM shard_owners WHERE owner = $1", owner)
        return sorted(r["shard"] for r in rows)
    finally:
        await conn.close()


def test_a_paused_coordinator_cannot_write_once_its_shards_moved_and_steps_down(
    cluster: LocalCluster,
) -> None:
    """SIGSTOP one of three past its ownership TTL with an operator's call on its way in: the
    others take its shards; woken, it writes nothing (its epochs are stale) and exits 3."""
    wait_until("the shards shared by three coordinators", lambda: spread(cluster), WAIT_S)
    peers = list(cluster.peers.values())
    paused, others = peers[2], peers[:2]
    mine = run_apart(_owned_by(cluster.db_url, paused.name))
    account = next(
        f"acct-{n}" for n in range(10_000) if shard_of("sandbox", f"acct-{n}", SHARDS) in mine
    )
    late = PublishingClient(paused.address, timeout_s=60.0)
    late.list_posts()  # connected
    paused.child.pause()
    errors: list[BaseException] = []

    def create_late() -> None:  # its home is the paused one: it is not passed on
        try:
            late.create_post(
                pub.CreatePostRequest(
                    text="written by the paused one",
                    targets=[pb.Target(platform="sandbox", account=account)],
                    actor="test",
                )
            )
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=create_late)
    caller.start()
    wait_until(
        "the others holding every shard",
        lambda: sum(shards_owned(p) for p in others) == SHARDS,
        WAIT_S,
    )
    cluster.coordinator_address = others[0].address
    with cluster.client() as client:
        wait_until("a survivor to answer", lambda: _answers(client), WAIT_S)
        client.create_post(
            pub.CreatePostRequest(
                text="written by its new owner",
                targets=[pb.Target(platform="sandbox", account=account)],
                actor="test",
            )
        )
    paused.child.resume()
    assert paused.child.popen.wait(WAIT_S) == 3
    caller.join(WAIT_S)
    late.close()
    assert "stepping down: " in paused.child.log_path.read_text()
    assert errors, "the paused coordinator answered a request it could not write"
    assert run_apart(post_texts(cluster.db_url)) == ["written by its new owner"]
