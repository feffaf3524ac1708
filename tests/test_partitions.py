"""Real network partitions (Jepsen-style): a worker that is cut off but still running never
publishes after its lease is gone.

The worker under test ("A") runs in a network namespace of its own (bench/partition.py); the
sandbox and the coordinator run in the root namespace on the lab's hub address, and a second
worker ("B"), outside any partition, takes the job over. The tests cut A's packets to the
coordinator's port (or to the sandbox's) with iptables rules inside A's namespace, silently, while
A keeps running. Posts ask for an operator's confirmation, which holds A's job at a known point
(leased, before its commit permit) until the test has set the scene; the test confirms when the
attempt is to go on. After each scenario the invariants are checked from the sandbox's record and
the coordinator's job and audit log: one post (or none) per job, a terminal state, epochs that
only grow with one successful run, never FAILED without a look. The time from the cut to the
re-lease is printed (`pytest -s`) as `cut -> re-lease`.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from polling import wait_until

from bench.chaos import (
    SoakReport,
    all_audit_seqs,
    all_jobs,
    check,
    check_failures,
    failed_without_a_look,
)
from bench.partition import Direction, NetLab, Node, netlab_missing
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.client import PublishingClient
from postroom_cli.cluster import ClusterConfig, LocalCluster
from sandbox.admin import RecordedPost, SandboxAdmin

HEARTBEAT_S = 0.5
TTL_S = 2.0
# A worker stops a commit under way by itself, whichever comes first: its lease could not be
# renewed in time, or the commit's bound (told in its CommitRequest) passed.
STOPPED_COMMITTING = ("in doubt: its commit was under way", "did not end within its bound")
EXPIRY_MARGIN_S = 1.0  # coordinator/leasing/state.py DEFAULT_EXPIRY_MARGIN_S
# A's HTTP timeout outlasts three SYN retransmissions (1 s, 3 s, 7 s): scenario 3's connect.
A_ARGS = ("--request-timeout-s", "10", "--log-format", "json")
B_ARGS = ("--request-timeout-s", "5", "--log-format", "json")
STOP_TIMEOUT_S = 5.0
OPERATOR = "operator"
# The flapping test: each worker's first cut within 2 s, then one every <= 6 s (cut + heal).
FLAPPING_S = 15.0


# ---- the lab and the cluster --------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    missing = netlab_missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} (CI runs as root and must run the partition tests)")
        pytest.skip(missing)
    with NetLab() as net:
        yield net


@pytest.fixture(scope="module")
def cluster(lab: NetLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    config = ClusterConfig(
        host=lab.hub,
        heartbeat_interval_s=HEARTBEAT_S,
        lease_ttl_s=TTL_S,
        retry_initial_s=0.2,
        coordinator_args=("--retry-max", "1"),
    )
    with LocalCluster(tmp_path_factory.mktemp("partitions"), config) as c:
        c.start_sandbox()
        c.start_coordinator()
        yield c


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[PublishingClient]:
    with cluster.client() as c:
        yield c


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Iterator[SandboxAdmin]:
    with SandboxAdmin(cluster.sandbox_url) as a:
        yield a


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# ---- what the coordinator and the workers say ---------------------------------------------


def unix(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def audit(client: PublishingClient, job_id: str, action: str) -> list[tuple[float, dict[str, Any]]]:
    page = client.list_audit_events(pub.ListAuditEventsRequest(subject_id=job_id, action=action))
    return [(unix(e.at), json.loads(e.details_json or "{}")) for e in page.events]


def leased_at(client: PublishingClient, job_id: str, epoch: int) -> tuple[float, dict[str, Any]]:
    """When lease `epoch` of the job was granted, and its audit details (device, verify_first)."""

    def probe() -> tuple[float, dict[str, Any]] | None:
        hits = [e for e in audit(client, job_id, "JOB_LEASED") if e[1].get("epoch") == epoch]
        return hits[0] if hits else None

    return wait_until(f"lease {epoch} of {job_id}", probe, 30)


def worker_log(cluster: LocalCluster, device: str) -> list[dict[str, Any]]:
    lines = []
    for raw in (cluster.workdir / f"{device}.log").read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


def logged(
    cluster: LocalCluster, device: str, text: str | tuple[str, ...], timeout_s: float = 30
) -> float:
    """Wait until the worker logged a line containing `text` (or one of them); the line's time
    (Unix s)."""
    texts = (text,) if isinstance(text, str) else text

    def probe() -> float | None:
        for line in worker_log(cluster, device):
            if any(t in line["message"] for t in texts):
                return _iso_unix(line["time"])
        return None

    return wait_until(f"{device} to log {text!r}", probe, timeout_s)


def _iso_unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def job(client: PublishingClient, job_id: str) -> pb.Job:
    return client.get_job(job_id)


def wait_status(
    client: PublishingClient, job_id: str, status: pb.JobStatus.ValueType, *, epoch: int = 0
) -> pb.Job:
    def probe() -> pb.Job | None:
        j = job(client, job_id)
        return j if j.status == status and (not epoch or j.lease_epoch == epoch) else None

    name = pb.JobStatus.Name(status)
    return wait_until(f"{job_id} {name}" + (f" at epoch {epoch}" if epoch else ""), probe, 30)


def posts_of(admin: SandboxAdmin, account: str) -> list[RecordedPost]:
    return admin.posts(platform="sandbox", account=account)


def assert_invariants(j: pb.Job, posts: list[RecordedPost]) -> None:
    """One post and one SUCCEEDED job that names it; epochs only grow, one run succeeded (the
    last); a FAILED job must have looked on the platform after any run that had its permit."""
    assert j.status == pb.JOB_STATUS_SUCCEEDED, pb.JobStatus.Name(j.status)
    assert len(posts) == 1, f"{len(posts)} posts: {posts}"
    assert j.result_post_id == posts[0]["id"]
    epochs = [r.lease_epoch for r in j.runs]
    assert epochs == sorted(set(epochs)) and j.lease_epoch == epochs[-1], epochs
    outcomes = [r.outcome for r in j.runs]
    assert outcomes.count("succeeded") == 1 and outcomes[-1] == "succeeded", outcomes
    assert_no_blind_failure(j)


def assert_no_blind_failure(j: pb.Job) -> None:
    assert not failed_without_a_look(j), f"{j.id} FAILED in doubt without looking for its post"


def hold_until(what: str, check: Callable[[], bool], unix_s: float) -> None:
    """`check` stays true, polled, until the wall clock passes `unix_s` (for "this does not
    happen")."""
    while True:
        assert check(), f"no longer true: {what}"
        if time.time() > unix_s:
            return
        time.sleep(0.05)


def report(scenario: str, cut_at: float, relet_at: float, extra: str = "") -> None:
    print(f"\n[partition] {scenario}: cut -> re-lease {relet_at - cut_at:.2f} s {extra}".rstrip())


# ---- one scenario: A (partitioned) holds the job, B stands by ------------------------------


@dataclass
class Scene:
    account: str
    a: str
    b: str
    node: Node
    job_id: str
    coordinator_port: int
    sandbox_port: int


@contextmanager
def scene(
    cluster: LocalCluster, lab: NetLab, client: PublishingClient, name: str
) -> Iterator[Scene]:
    """A in its namespace leases a job that waits for confirmation; then B comes online."""
    a, b = f"{name}-a", f"{name}-b"
    node = lab.add_node(a)
    try:
        cluster.start_worker(a, wrap=node.wrap, concurrency=1, extra=A_ARGS)
        cluster.wait_online([a])
        account = f"pt-{name}"
        post_id = cluster.publish(
            client, f"partition scenario {name}", [f"sandbox:{account}"], require_confirm=True
        )
        job_id = client.get_post(post_id).target_states[0].job_id
        held = wait_status(client, job_id, pb.JOB_STATUS_AWAITING_CONFIRM, epoch=1)
        assert held.device_id == a
        cluster.start_worker(b, concurrency=1, extra=B_ARGS)
        cluster.wait_online([b])
        yield Scene(
            account,
            a,
            b,
            node,
            job_id,
            port_of(cluster.coordinator_address),
            port_of(cluster.sandbox_url),
        )
    finally:
        node.heal()
        for device in (a, b):
            child = cluster.workers.pop(device, None)
            if child is not None:
                child.stop(STOP_TIMEOUT_S)


def confirm(client: PublishingClient, job_id: str, epoch: int) -> None:
    wait_status(client, job_id, pb.JOB_STATUS_AWAITING_CONFIRM, epoch=epoch)
    client.confirm_job(job_id, actor=OPERATOR)


# ---- the scenarios ------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_cut_before_the_commit_permit_the_job_moves_and_the_cut_worker_never_commits(
    cluster: LocalCluster, lab: NetLab, client: PublishingClient, admin: SandboxAdmin
) -> None:
    with scene(cluster, lab, client, "before-permit") as s:
        s.node.cut(s.coordinator_port)
        cut_at = time.time()
        relet_at, lease = leased_at(client, s.job_id, 2)
        assert lease["device"] == s.b and not lease["verify_first"]
        # A stopped the job by itself, before the coordinator gave it away.
        stopped_at = logged(cluster, s.a, "lease not renewed")
        assert cut_at < stopped_at < relet_at
        # No heartbeat for a TTL (the last one at most H before the cut) kills the session.
        assert relet_at - cut_at >= TTL_S - HEARTBEAT_S - 0.05
        confirm(client, s.job_id, 2)
        done = wait_status(client, s.job_id, pb.JOB_STATUS_SUCCEEDED)
        granted = audit(client, s.job_id, "JOB_COMMIT_GRANTED")
        assert [d["epoch"] for _, d in granted] == [2]  # only B ever had a permit
        first = done.runs[0]
        assert (first.device_id, first.outcome, first.committed) == (s.a, "lease_lost", False)
        assert_invariants(done, posts_of(admin, s.account))
        report("cut before the commit permit", cut_at, relet_at)


@pytest.mark.timeout(90)
def test_cut_while_the_platform_call_is_in_flight_the_next_attempt_finds_the_post(
    cluster: LocalCluster, lab: NetLab, client: PublishingClient, admin: SandboxAdmin
) -> None:
    with scene(cluster, lab, client, "in-flight") as s:
        # The sandbox records the post, then holds its answer: the call is in flight.
        admin.inject("accept_then_hang", account=s.account, hang_seconds=4)
        client.confirm_job(s.job_id, actor=OPERATOR)
        wait_until("A's post at the sandbox", lambda: posts_of(admin, s.account), 30, poll_s=0.01)
        s.node.cut(s.coordinator_port)
        cut_at = time.time()
        relet_at, lease = leased_at(client, s.job_id, 2)
        assert lease["device"] == s.b and lease["verify_first"]  # in doubt: look first
        stopped_at = logged(cluster, s.a, STOPPED_COMMITTING)
        # A lease past its permit waits until its worker stopped by itself (plus the margin).
        assert stopped_at < relet_at
        done = wait_status(client, s.job_id, pb.JOB_STATUS_SUCCEEDED)
        verify = [log.message for log in done.runs[-1].logs if log.step == "verify"]
        assert any("not posting again" in m for m in verify), verify
        assert done.runs[0].committed and done.runs[0].outcome == "lease_lost"
        assert_invariants(done, posts_of(admin, s.account))
        report("cut with the platform call in flight", cut_at, relet_at)


@pytest.mark.timeout(90)
def test_cut_after_the_permit_before_the_call_leaves_the_worker_never_sends_it_late(
    cluster: LocalCluster, lab: NetLab, client: PublishingClient, admin: SandboxAdmin
) -> None:
    """A's POST cannot even connect (its SYNs to the sandbox are lost) when its lease goes.
    The lost lease aborts the pending call; had it connected later anyway, the commit fence
    would have refused to write the request (worker/fence.py). B looks, finds nothing, posts;
    A's path heals after that, and nothing more arrives."""
    with scene(cluster, lab, client, "call-not-started") as s:
        s.node.cut(s.sandbox_port)
        client.confirm_job(s.job_id, actor=OPERATOR)
        granted = wait_until(
            "A's commit permit",
            lambda: audit(client, s.job_id, "JOB_COMMIT_GRANTED"),
            30,
            poll_s=0.01,
        )
        s.node.cut(s.coordinator_port)
        cut_at = time.time()
        relet_at, lease = leased_at(client, s.job_id, 2)
        assert lease["device"] == s.b and lease["verify_first"]
        stopped_at = logged(cluster, s.a, STOPPED_COMMITTING)
        assert stopped_at < relet_at  # its bound may pass before the cut: either is safe
        confirm(client, s.job_id, 2)  # B looked, found nothing, and waits to post
        done = wait_status(client, s.job_id, pb.JOB_STATUS_SUCCEEDED)
        verify = [log.message for log in done.runs[-1].logs if log.step == "verify"]
        assert verify and all("no earlier post found" in m for m in verify), verify
        # A's path to the sandbox heals, long after its deadline: a connect still pending would
        # get through at the SYN retransmission 7 s after the first.
        s.node.heal(s.sandbox_port)
        hold_until("one post", lambda: len(posts_of(admin, s.account)) == 1, granted[0][0] + 8.5)
        assert_invariants(done, posts_of(admin, s.account))
        report("cut after the permit, call not started", cut_at, relet_at)


@pytest.mark.timeout(90)
def test_a_request_held_on_the_wire_when_the_lease_is_lost_never_lands_later(
    cluster: LocalCluster, lab: NetLab, client: PublishingClient, admin: SandboxAdmin
) -> None:
    """A's POST connects, but its bytes are lost on the way (the kernel keeps retransmitting
    them). Its lease is lost; B looks, finds nothing, posts. When A's path heals, its old
    request must not arrive: the lost lease aborted the call and the connection closed with a
    reset, discarding what the sandbox never acknowledged."""
    with scene(cluster, lab, client, "on-the-wire") as s:
        s.node.cut(s.sandbox_port, "out", data_only=True)
        client.confirm_job(s.job_id, actor=OPERATOR)
        granted = wait_until(
            "A's commit permit",
            lambda: audit(client, s.job_id, "JOB_COMMIT_GRANTED"),
            30,
            poll_s=0.01,
        )
        s.node.cut(s.coordinator_port)
        cut_at = time.time()
        relet_at, lease = leased_at(client, s.job_id, 2)
        assert lease["device"] == s.b and lease["verify_first"]
        confirm(client, s.job_id, 2)
        done = wait_status(client, s.job_id, pb.JOB_STATUS_SUCCEEDED)
        stopped_at = logged(cluster, s.a, STOPPED_COMMITTING)
        assert stopped_at < relet_at
        s.node.heal(s.sandbox_port)
        # TCP would retransmit A's request 0.2, 0.6, 1.4, 3.0, 6.2 s after it was written.
        hold_until("one post", lambda: len(posts_of(admin, s.account)) == 1, granted[0][0] + 8)
        assert_invariants(done, posts_of(admin, s.account))
        report("request held on the wire", cut_at, relet_at)


@pytest.mark.timeout(90)
def test_heal_after_the_job_moved_the_old_worker_is_refused_by_epoch_and_drops_it(
    cluster: LocalCluster, lab: NetLab, client: PublishingClient, admin: SandboxAdmin
) -> None:
    with scene(cluster, lab, client, "heal-after-move") as s:
        # The post is made and its answer (a 5xx) comes 0.3 s later, into a cut link: A keeps
        # its result to report after a reconnect.
        admin.inject("accept_then_hang", account=s.account, hang_seconds=0.3)
        client.confirm_job(s.job_id, actor=OPERATOR)
        wait_until("A's post at the sandbox", lambda: posts_of(admin, s.account), 30, poll_s=0.01)
        s.node.cut(s.coordinator_port)
        cut_at = time.time()
        relet_at, lease = leased_at(client, s.job_id, 2)
        assert lease["device"] == s.b and lease["verify_first"]
        done = wait_status(client, s.job_id, pb.JOB_STATUS_SUCCEEDED)
        s.node.heal()
        healed_at = time.time()
        dropped_at = logged(cluster, s.a, "abandoned: not resumed by the coordinator")
        assert dropped_at > healed_at

        def reconnected() -> dict[str, Any] | None:
            hits = [d for at, d in audit(client, s.a, "DEVICE_CONNECTED") if at > healed_at]
            return hits[0] if hits else None

        hello = wait_until("A's reconnect", reconnected, 30)
        assert hello["resumed"] == [] and hello["refused"] == [f"{s.job_id}@1"]
        after = job(client, s.job_id)
        assert after.status == pb.JOB_STATUS_SUCCEEDED and after.lease_epoch == 2
        assert [r.outcome for r in after.runs] == ["lease_lost", "succeeded"]
        assert_invariants(after, posts_of(admin, s.account))
        assert done.result_post_id == after.result_post_id
        report("heal after the job moved", cut_at, relet_at)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("direction", ["out", "in"])
def test_a_one_way_partition_moves_the_job_and_the_worker_never_commits(
    cluster: LocalCluster,
    lab: NetLab,
    client: PublishingClient,
    admin: SandboxAdmin,
    direction: Direction,
) -> None:
    """ "out": A hears the coordinator but what it says is lost (its heartbeats too): the
    session dies of silence. "in": the coordinator hears A's heartbeats and keeps renewing, but A
    hears no answer, stops the job before its deadline and stops listing it as held: the
    coordinator takes it back from the heartbeat itself."""
    with scene(cluster, lab, client, f"one-way-{direction}") as s:
        s.node.cut(s.coordinator_port, direction)
        cut_at = time.time()
        relet_at, lease = leased_at(client, s.job_id, 2)
        assert lease["device"] == s.b
        stopped_at = logged(cluster, s.a, "lease not renewed")
        assert cut_at < stopped_at < relet_at
        confirm(client, s.job_id, 2)
        done = wait_status(client, s.job_id, pb.JOB_STATUS_SUCCEEDED)
        granted = audit(client, s.job_id, "JOB_COMMIT_GRANTED")
        assert [d["epoch"] for _, d in granted] == [2]
        assert_invariants(done, posts_of(admin, s.account))
        report(f"one-way partition ({direction})", cut_at, relet_at)


@pytest.mark.timeout(120)
def test_a_slow_lossy_link_delays_but_never_duplicates(
    cluster: LocalCluster, lab: NetLab, client: PublishingClient, admin: SandboxAdmin
) -> None:
    name = "slow-link"
    node = lab.add_node(name)
    try:
        cluster.start_worker(
            name, wrap=node.wrap, concurrency=2, extra=("--request-timeout-s", "3")
        )
        cluster.wait_online([name])
        applied = node.slow(loss=0.1, delay_ms=150, rate_kbit=256)
        account = "pt-slow"
        post_ids = [
            cluster.publish(client, f"slow link post {i}", [f"sandbox:{account}"], max_attempts=8)
            for i in range(8)
        ]
        ids = [client.get_post(p).target_states[0].job_id for p in post_ids]
        done = [wait_status(client, job_id, pb.JOB_STATUS_SUCCEEDED) for job_id in ids]
        posts = posts_of(admin, account)
        assert sorted(p["client_key"] for p in posts) == sorted(j.platform_key for j in done)
        for j in done:
            assert_invariants(j, [p for p in posts if p["client_key"] == j.platform_key])
        print(f"\n[partition] slow link ({applied}): {len(done)} jobs, {len(posts)} posts")
    finally:
        node.heal()
        child = cluster.workers.pop(name, None)
        if child is not None:
            child.stop(STOP_TIMEOUT_S)


@pytest.mark.timeout(150)
def test_a_flapping_link_under_load_loses_nothing_and_posts_nothing_twice(
    cluster: LocalCluster, lab: NetLab, client: PublishingClient, admin: SandboxAdmin
) -> None:
    rng = random.Random(19)
    names = [f"flap-{i}" for i in range(3)]
    nodes = {name: lab.add_node(name) for name in names}
    for name in names:
        cluster.start_worker(
            name,
            wrap=nodes[name].wrap,
            concurrency=2,
            extra=("--request-timeout-s", "2", "--log-format", "json"),
        )
    cluster.wait_online(names)
    accounts = [f"flap-acct{i}" for i in range(4)]
    cuts: list[tuple[float, str]] = []
    next_flip = {name: time.monotonic() + rng.uniform(0.5, 2.0) for name in names}
    # Cuts of 1-4 s against a 2 s lease (+1 s expiry margin): some outlast it (the job moves),
    # some do not (the worker resumes); links heal for 0.5-2 s in between, posts keep coming.
    flapping_s, posts_wanted, created = FLAPPING_S, 20, 0
    end = time.monotonic() + flapping_s
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            for name, node in nodes.items():
                if now < next_flip[name]:
                    continue
                if node.partitioned:
                    node.heal()
                    next_flip[name] = now + rng.uniform(0.5, 2.0)
                else:
                    node.cut()  # the whole link: coordinator and sandbox
                    cuts.append((time.time(), name))
                    next_flip[name] = now + rng.uniform(1.0, 4.0)
            # Posts keep coming all through the flapping, not only at its start.
            due = posts_wanted * (1 - (end - now) / flapping_s)
            if created < min(posts_wanted, due + 1):
                targets = rng.sample(accounts, k=rng.randint(1, 2))
                cluster.publish(
                    client,
                    f"flapping post {created}",
                    [f"sandbox:{a}" for a in targets],
                    max_attempts=8,
                )
                created += 1
            time.sleep(0.1)
        for node in nodes.values():
            node.heal()
        wait_finished(client, 90)
        jobs = all_jobs(client)
        result = SoakReport(seed=19)
        check(result, jobs, admin.posts(), all_audit_seqs(client))
        check_failures(result, client, jobs)
        assert result.violations == [], result.violations
        assert result.duplicates == 0 and result.lost == 0
        flapped = [j for j in jobs if j.account in accounts]
        assert created == posts_wanted and len(flapped) >= posts_wanted
        # Each worker's link went down at least twice while posts were being published.
        assert len(cuts) >= 2 * len(names), cuts
        relets = _relet_delays(client, flapped, cuts)
        moved = sum(1 for j in flapped if j.lease_epoch > 1)
        print(
            f"\n[partition] flapping: {len(cuts)} cuts over {flapping_s:.0f} s, "
            f"{len(flapped)} jobs ({moved} re-leased), "
            f"{sum(j.status == pb.JOB_STATUS_SUCCEEDED for j in flapped)} succeeded, "
            f"0 lost, 0 duplicates; cut -> re-lease median "
            f"{statistics.median(relets) if relets else float('nan'):.2f} s, "
            f"max {max(relets) if relets else float('nan'):.2f} s"
        )
    finally:
        for name in names:
            nodes[name].heal()
            child = cluster.workers.pop(name, None)
            if child is not None:
                child.stop(STOP_TIMEOUT_S)


TERMINAL = (pb.JOB_STATUS_SUCCEEDED, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED)


def wait_finished(client: PublishingClient, timeout_s: float) -> None:
    """Every job terminal; on timeout, name the unfinished ones and where they stand."""
    deadline = time.monotonic() + timeout_s
    while True:
        open_jobs = [j for j in all_jobs(client) if j.status not in TERMINAL]
        if not open_jobs:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(open_jobs)} job(s) unfinished after {timeout_s:g}s: "
                + "; ".join(
                    f"{j.id} {pb.JobStatus.Name(j.status)} epoch {j.lease_epoch} on "
                    f"{j.device_id or '-'} attempt {j.attempt}/{j.max_attempts} runs "
                    f"{[(r.lease_epoch, r.device_id, r.outcome, r.committed) for r in j.runs]}"
                    for j in open_jobs[:5]
                )
            )
        time.sleep(0.5)


def _relet_delays(
    client: PublishingClient, jobs: list[pb.Job], cuts: list[tuple[float, str]]
) -> list[float]:
    """For each re-lease that followed a cut of the device holding the lease before: the time
    from that device's last cut to the re-lease."""
    delays: list[float] = []
    for j in jobs:
        leases = sorted(
            (d["epoch"], at, d["device"]) for at, d in audit(client, j.id, "JOB_LEASED")
        )
        for (_, _, before), (_, at, _) in itertools.pairwise(leases):
            last_cut = [t for t, name in cuts if name == before and t < at]
            if last_cut:
                delays.append(at - last_cut[-1])
    return delays


def test_the_lab_reaches_nothing_outside_itself(lab: NetLab) -> None:
    """A namespace of the lab has only its /24: no default route, so no address outside."""
    node = lab.add_node("route-probe")
    routes = node.run("ip", "-4", "route", "show").strip().splitlines()
    assert routes == [
        f"{lab.hub.rsplit('.', 1)[0]}.0/24 dev {node.ns_if} proto kernel "
        f"scope link src {node.address}"
    ], routes


def test_a_failure_counts_as_blind_only_after_an_unchecked_doubt() -> None:
    """The invariant itself: FAILED after a lease lost past its permit needs a later look."""
    doubt = pb.Run(lease_epoch=1, committed=True, outcome="lease_lost")
    looked = pb.Run(lease_epoch=2, outcome="failed", logs=[pb.StepLog(step="verify")])
    blind = pb.Run(lease_epoch=2, outcome="failed", logs=[pb.StepLog(step="commit")])
    failed = pb.JOB_STATUS_FAILED
    assert failed_without_a_look(pb.Job(status=failed, runs=[doubt, blind]))
    assert not failed_without_a_look(pb.Job(status=failed, runs=[doubt, looked]))
    assert not failed_without_a_look(pb.Job(status=failed, runs=[blind]))  # never in doubt
    assert not failed_without_a_look(pb.Job(status=pb.JOB_STATUS_SUCCEEDED, runs=[doubt]))
