"""Two coordinator processes on one PostgreSQL database (coordinator/cluster/): one is active,
the other stands by, forwarding operators' calls and relaying workers' streams to the active one
(a stream already forwarded once is refused with the active's address). The active is paused
(SIGSTOP) past its ownership TTL: the standby takes over, a post made through it is published
once; the old one, resumed, writes nothing and exits with code 3 saying it stepped down. An
active stopped cleanly (SIGTERM) lets its shards go, so the standby takes over at its next turn,
long before the TTL. A worker given only the standby's address works through it, and keeps
working through it when the active is SIGKILLed with a job in that worker's hands."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pg_rig import own_database, post_texts, run_apart
from polling import wait_until

from coordinator.cluster.forward import FORWARDED_HEADER
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2_grpc as wg_grpc
from postroom_cli.client import PublishingClient
from postroom_cli.cluster import ClusterConfig, LocalCluster

WORKER_GATEWAY = "postroom.v1.WorkerGateway"
SERVING = int(health_pb2.HealthCheckResponse.SERVING)
NOT_SERVING = int(health_pb2.HealthCheckResponse.NOT_SERVING)
STOP_TIMEOUT_S = 30.0


class Coordinator:
    """A coordinator process of this test's own, its log in a file."""

    def __init__(self, workdir: Path, name: str, db: str, ownership_ttl_s: float) -> None:
        self.name = name
        self.log = workdir / f"coordinator-{name}.log"
        argv = [
            sys.executable, "-m", "coordinator.main", "--db", db, "--name", name,
            "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--assets", str(workdir / "assets"), "--ownership-ttl", str(ownership_ttl_s),
            "--heartbeat-interval", "0.5", "--lease-ttl", "8", "--retry-initial", "0.3",
            "--placement", "one",
        ]  # fmt: skip
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        found = wait_until(f"{name} listening", self._address)
        self.address = found

    def _address(self) -> str | None:
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.name} exited:\n{self.text()}")
        match = re.search(r"coordinator listening on (\S+) ", self.text())
        return match[1] if match else None

    def metrics(self) -> str:
        match = re.search(r"\(metrics (http://\S+)/metrics,", self.text())
        assert match, self.text()
        return httpx.get(f"{match[1]}/metrics", timeout=10).text

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self, service: str = "") -> int:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            return int(reply.status)

    def serving(self) -> bool:
        return self.health() == SERVING and self.health(WORKER_GATEWAY) == SERVING

    def standing_by(self) -> bool:
        return "standby:" in self.text() and self.health() == NOT_SERVING

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)
            self.popen.terminate()
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with own_database() as url:
        yield url


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[LocalCluster]:
    """The sandbox and workers; the coordinators are the test's."""
    config = ClusterConfig(heartbeat_interval_s=0.5, lease_ttl_s=8.0, retry_initial_s=0.3)
    with LocalCluster(tmp_path, config) as c:
        c.db_url = pg_url
        c.start_sandbox()
        yield c


@contextlib.contextmanager
def coordinators(workdir: Path, db: str, ttl_s: float) -> Iterator[tuple[Coordinator, Coordinator]]:
    """a, started first, is active; then b, a standby."""
    started: list[Coordinator] = []
    try:
        a = Coordinator(workdir, "a", db, ttl_s)
        started.append(a)
        wait_until("a active", a.serving)
        b = Coordinator(workdir, "b", db, ttl_s)
        started.append(b)
        wait_until("b standing by", b.standing_by)
        yield a, b
    finally:
        for c in started:
            c.stop()


def refused_stream(address: str) -> grpc.RpcError:
    """A stream that says it was forwarded already: a standby refuses it (no relaying twice)."""
    with grpc.insecure_channel(address) as channel:
        stub = wg_grpc.WorkerGatewayStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            for _ in stub.Connect(iter(()), timeout=10, metadata=((FORWARDED_HEADER, "1"),)):
                pass
    return refused.value


async def _shards(url: str) -> set[tuple[str, int]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT owner, epoch FROM shard_owners")
        return {(r["owner"], r["epoch"]) for r in rows}
    finally:
        await conn.close()


async def _live(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT owner FROM coordinators ORDER BY owner")
        return [r["owner"] for r in rows]
    finally:
        await conn.close()


async def _took_over(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        sql = "SELECT subject_id FROM audit_events WHERE action = 'COORDINATOR_ACTIVE' ORDER BY seq"
        return [r["subject_id"] for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def test_the_standby_refuses_then_takes_over_a_paused_active_which_steps_down_on_waking(
    cluster: LocalCluster, pg_url: str, tmp_path: Path
) -> None:
    with coordinators(tmp_path, pg_url, ttl_s=2.0) as (a, b):
        assert b.health(WORKER_GATEWAY) == NOT_SERVING
        refused = refused_stream(b.address)
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.details() == (
            f"standby: this coordinator is not active; the active one is {a.address}"
        )
        cluster.coordinator_address = b.address
        with cluster.client() as client:  # an operator may call either: b forwards it to a
            assert [d.id for d in client.list_devices().devices] == []

        # a is paused with an operator's request on its way in.
        cluster.coordinator_address = a.address
        late = cluster.client(timeout_s=60.0)
        late.list_devices()  # connected
        a.popen.send_signal(signal.SIGSTOP)
        errors: list[BaseException] = []

        def create_late() -> None:
            try:
                late.create_post(_post("written by the paused one"))
            except BaseException as exc:
                errors.append(exc)

        caller = threading.Thread(target=create_late)
        caller.start()
        wait_until("b active", b.serving, 60)
        assert run_apart(_shards(pg_url)) == {("b", 2)}

        cluster.coordinator_address = b.address
        worker = cluster.start_worker(
            "cluster-w1", platforms=["sandbox:cluster"], extra=["--coordinator", b.address]
        )
        cluster.wait_online(["cluster-w1"])
        with cluster.client() as client, cluster.sandbox_admin() as admin:
            post_id = cluster.publish(client, "through the new active", ["sandbox:cluster"])
            wait_until(
                "the post published",
                lambda: client.get_post(post_id).status == pb.POST_STATUS_PUBLISHED,
                30,
            )
            assert len(admin.posts(account="cluster")) == 1
            assert admin.duplicates() == []

        a.popen.send_signal(signal.SIGCONT)
        assert a.popen.wait(STOP_TIMEOUT_S) == 3
        caller.join(STOP_TIMEOUT_S)
        late.close()
        assert "stepping down: " in a.text()
        assert errors, "the paused coordinator answered a request it could not write"
        assert run_apart(post_texts(pg_url)) == ["through the new active"]
        assert worker.alive() and b.serving()


def test_a_clean_stop_of_the_active_lets_the_standby_take_over_before_its_ttl(
    cluster: LocalCluster, pg_url: str, tmp_path: Path
) -> None:
    # A TTL longer than the wait: only the shards let go can make b active in time.
    with coordinators(tmp_path, pg_url, ttl_s=60.0) as (a, b):
        assert "postroom_coordinator_active 1.0" in a.metrics()
        assert "postroom_coordinator_active 0.0" in b.metrics()
        assert "postroom_shards_owned 64.0" in a.metrics()
        # Workers given both addresses or only b are online on a (b relays their streams).
        cluster.coordinator_address = a.address
        both = cluster.start_worker(
            "cluster-w2",
            platforms=["sandbox:cluster"],
            extra=["--coordinator", f"{b.address},{a.address}"],
        )
        only_b = cluster.start_worker(
            "cluster-w3", platforms=["sandbox:cluster"], extra=["--coordinator", b.address]
        )
        cluster.wait_online(["cluster-w2", "cluster-w3"])
        assert only_address(only_b.log_tail()) == {b.address}
        assert b.health(WORKER_GATEWAY) == NOT_SERVING  # a balancer should prefer the active

        a.popen.send_signal(signal.SIGTERM)
        assert a.popen.wait(STOP_TIMEOUT_S) == 0
        wait_until("b active", b.serving, 40)  # b's next turn: within 15 s
        assert run_apart(_shards(pg_url)) == {("b", 2)}
        assert run_apart(_live(pg_url)) == ["b"]
        assert "active: took over 64 shards (epochs 2) in " in b.text()
        assert "postroom_coordinator_active 1.0" in b.metrics()
        assert run_apart(_took_over(pg_url)) == ["a", "b"]  # the audit log's lines
        # Both workers are on b now (served there): w2 told goodbye by a, w3's relay ended.
        cluster.coordinator_address = b.address
        cluster.wait_online(["cluster-w2", "cluster-w3"])
        wait_until("w2 on b", lambda: f"open on {b.address}:" in both.log_tail())
        wait_until("w3 on b", lambda: f"open on {b.address}:" in only_b.log_tail())


def _post(text: str) -> pub.CreatePostRequest:
    return pub.CreatePostRequest(
        text=text,
        targets=[pb.Target(platform="sandbox", account="cluster")],
        actor="test",
    )


def test_a_worker_given_only_the_standbys_address_works_through_it_across_a_kill_of_the_active(
    cluster: LocalCluster, pg_url: str, tmp_path: Path
) -> None:
    with coordinators(tmp_path, pg_url, ttl_s=2.0) as (a, b):
        cluster.coordinator_address = b.address  # the operator too calls only b
        worker = cluster.start_worker(
            "relay-w1", platforms=["sandbox:relay"], extra=["--coordinator", b.address]
        )
        cluster.wait_online(["relay-w1"])
        assert b.standing_by()
        with cluster.client() as client, cluster.sandbox_admin() as admin:
            first = cluster.publish(client, "relayed", ["sandbox:relay"])
            wait_until("the first post published", lambda: _published(client, first), 30)
            # The next one's answer hangs: its job is in the worker's hands at the kill.
            admin.inject("accept_then_hang", account="relay", count=1, hang_seconds=4.0)
            second = cluster.publish(client, "relayed across the kill", ["sandbox:relay"])
            wait_until("the job in the worker's hands", lambda: admin.stats()["hanging"] >= 1)
            a.popen.kill()
            a.popen.wait(STOP_TIMEOUT_S)
            wait_until("b active", b.serving, 60)
            wait_until("the second post published", lambda: _published(client, second), 60)
            made = admin.posts(account="relay")
            assert sorted(p["text"] for p in made) == ["relayed", "relayed across the kill"]
            assert admin.duplicates() == []
            jobs = client.list_jobs(pub.ListJobsRequest(post_id=second)).jobs
        assert [pb.JobStatus.Name(j.status) for j in jobs] == ["JOB_STATUS_SUCCEEDED"]
        # The worker reconnected through the same address, b, now active itself.
        assert worker.alive() and only_address(worker.log_tail(200)) == {b.address}
        cluster.wait_online(["relay-w1"])


def _published(client: PublishingClient, post_id: str) -> bool:
    try:  # b answers UNAVAILABLE while nobody is active (an operator retries)
        return client.get_post(post_id).status == pb.POST_STATUS_PUBLISHED
    except Exception:
        return False


def only_address(log: str) -> set[str]:
    """The coordinators the worker's streams opened on."""
    return set(re.findall(r"open on (\S+):", log))
