"""`make chaos`: a seeded soak that proves "never twice, never lost".

Coordinator, sandbox and several workers run as processes. Posts go to several sandbox accounts
while the sandbox injects 429s, 500s, hangs and lost answers (`accept_then_fail`), and the soak
SIGKILLs workers, SIGSTOPs/SIGCONTs them, and SIGKILLs + restarts the coordinator. With
`--partitions` every worker runs in a network namespace of its own (bench/partition.py) and the
soak also cuts workers off (both ways, or one way on the coordinator's port) and slows their
links, while they keep running. Then it lets everything drain and checks, from the coordinator's
jobs and audit log and the sandbox's record: no target published twice, no job left unfinished,
every SUCCEEDED job has its post at the sandbox and every post there has a SUCCEEDED job, no job
FAILED in doubt without looking for its post, and the audit log has no gap.

    python -m bench.chaos --posts 1000 --workers 4 --seed 7 [--partitions] [--db postgresql://…]

With `--coordinators N` (PostgreSQL) N coordinators share the database, one active and the others
standing by; the workers are given every address, the soak's own calls go to a standby (which
forwards them), and the coordinator kills SIGKILL the ACTIVE one: another takes over and the
killed one comes back as a standby (so does one that stepped down by itself, exit code 3).
With `--placement spread` every coordinator serves a fair share of the shards, and a coordinator
kill SIGKILLs any live one (seeded), which starts again a few seconds later; the report notes
which coordinators held its shards afterwards (`handoffs`). bench/chaos_coordinators.py has the
details of both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.chaos_coordinators import PLACEMENTS, Coordinators
from bench.partition import NetLab, Node, netlab_missing
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.client import PublishingClient
from postroom_cli.cluster import ClusterConfig, LocalCluster
from sandbox.admin import RecordedPost, SandboxAdmin

TERMINAL = {pb.JOB_STATUS_SUCCEEDED, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED}


@dataclass(slots=True)
class SoakReport:
    seed: int
    posts: int = 0
    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    faults_injected: int = 0
    worker_kills: int = 0
    worker_pauses: int = 0
    coordinator_restarts: int = 0
    placement: str = "one"
    # Several coordinators, placement "one": the coordinator that took over at each kill of the
    # active one. "spread": each victim, and who held its shards afterwards.
    takeovers: list[str] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)
    handoffs: list[str] = field(default_factory=list)
    step_downs: int = 0
    # Coordinators that exited by themselves other than by stepping down: "coord-2 exit 1".
    crashes: list[str] = field(default_factory=list)
    partitions: int = 0
    duplicates: int = 0
    lost: int = 0
    succeeded_without_post: int = 0
    post_without_success: int = 0
    audit_gaps: int = 0
    failed_without_a_look: int = 0
    drain_s: float = 0.0
    wall_s: float = 0.0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def all_jobs(client: PublishingClient) -> list[pb.Job]:
    jobs: list[pb.Job] = []
    token = ""
    while True:
        page = client.list_jobs(pub.ListJobsRequest(page_size=1000, page_token=token))
        jobs.extend(page.jobs)
        token = page.next_page_token
        if not token:
            return jobs


def all_audit_seqs(client: PublishingClient) -> list[int]:
    seqs: list[int] = []
    after = 0
    while True:
        page = client.list_audit_events(
            pub.ListAuditEventsRequest(after_seq=after, page_size=10_000)
        )
        seqs.extend(e.seq for e in page.events)
        if not page.next_after_seq:
            return seqs
        after = page.next_after_seq


def failed_without_a_look(job: pb.Job) -> bool:
    """A FAILED job (with its runs, from GetJob) that lost a lease after its commit permit and
    never looked on the platform afterwards: it may have posted, and nobody checked."""
    if job.status != pb.JOB_STATUS_FAILED:
        return False
    runs = list(job.runs)
    for i, run in enumerate(runs):
        if run.committed and run.outcome == "lease_lost":
            later = runs[i + 1 :]
            return not any(log.step == "verify" for r in later for log in r.logs)
    return False


def check_failures(report: SoakReport, client: PublishingClient, jobs: list[pb.Job]) -> None:
    """Never FAILED without a look: each FAILED job is read with its runs and step logs."""
    for job in jobs:
        if job.status == pb.JOB_STATUS_FAILED and failed_without_a_look(client.get_job(job.id)):
            report.failed_without_a_look += 1
            report.violations.append(f"job {job.id} FAILED in doubt without looking for its post")


def check(
    report: SoakReport, jobs: list[pb.Job], posts: list[RecordedPost], seqs: list[int]
) -> None:
    """The invariants. Each violation is named with enough detail to replay and debug."""
    report.jobs = len(jobs)
    report.succeeded = sum(j.status == pb.JOB_STATUS_SUCCEEDED for j in jobs)
    report.failed = sum(j.status == pb.JOB_STATUS_FAILED for j in jobs)
    by_key: Counter[tuple[str, str, str]] = Counter(
        (p["platform"], p["account"], p["client_key"]) for p in posts
    )
    for (platform, account, client_key), n in by_key.items():
        if n > 1:
            report.duplicates += n - 1
            report.violations.append(f"published {n} times: {platform}:{account} {client_key}")
    published_keys = set(by_key)
    success_keys: set[tuple[str, str, str]] = set()
    for job in jobs:
        key = (job.platform, job.account, job.platform_key)
        if job.status not in TERMINAL:
            report.lost += 1
            report.violations.append(f"job {job.id} not finished: {pb.JobStatus.Name(job.status)}")
        if job.status == pb.JOB_STATUS_SUCCEEDED:
            success_keys.add(key)
            if key not in published_keys:
                report.succeeded_without_post += 1
                report.violations.append(f"job {job.id} SUCCEEDED but the sandbox has no post")
    for orphan in published_keys - success_keys:
        report.post_without_success += 1
        report.violations.append(f"sandbox post for {orphan} has no SUCCEEDED job")
    expected = list(range(1, len(seqs) + 1))
    if seqs != expected:
        missing = sorted(set(expected) - set(seqs))[:10]
        report.audit_gaps = len(set(expected) - set(seqs)) or 1
        report.violations.append(f"audit log has gaps, e.g. seq {missing}")


def soak(
    *,
    posts: int,
    workers: int,
    accounts: int,
    seed: int,
    chaos_s: float,
    drain_timeout_s: float,
    workdir: Path,
    quiet: bool = False,
    partitions: bool = False,
    db_url: str = "",
    coordinators: int = 1,
    placement: str = "spread",
) -> SoakReport:
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r}: one of {', '.join(PLACEMENTS)}")
    rng = random.Random(seed)
    report = SoakReport(seed=seed, placement=placement)

    def say(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    started = time.monotonic()
    names = [f"chaos-w{i}" for i in range(workers)]
    account_names = [f"acct{i}" for i in range(accounts)]
    with contextlib.ExitStack() as stack:
        # The cluster stops before the lab goes: its workers live in the lab's namespaces.
        lab = stack.enter_context(NetLab()) if partitions else None
        cluster = stack.enter_context(LocalCluster(workdir, _config(lab, coordinators)))
        cluster.db_url = db_url or cluster.db_url  # default: SQLite in the workdir
        cluster.start_sandbox()
        several = _start_coordinators(cluster, coordinators, report, rng, placement)
        nodes = {name: lab.add_node(name) for name in names} if lab is not None else {}
        cuts = _Partitions(nodes, int(cluster.coordinator_address.rsplit(":", 1)[1]))

        def start(name: str) -> None:
            node = nodes.get(name)
            cluster.start_worker(name, concurrency=4, wrap=node.wrap if node else ())

        for name in names:
            start(name)
        cluster.wait_online(names)
        admin = SandboxAdmin(cluster.sandbox_url)
        created = 0
        chaos_end = time.monotonic() + chaos_s
        paused: dict[str, float] = {}
        while created < posts or time.monotonic() < chaos_end:
            # Publish in small batches so the posts and the chaos overlap.
            batch = min(posts - created, max(1, posts // 20))
            if batch > 0:
                created = _publish(cluster, rng, account_names, seed, created, batch, say)
            cuts.heal_due(time.monotonic())
            if time.monotonic() >= chaos_end:
                cuts.heal_all()
                time.sleep(0.2)
                continue
            _one_fault(rng, admin, account_names, report)
            if several is not None:
                several.revive()
            _one_disruption(rng, cluster, names, paused, report, start, cuts, several)
            time.sleep(rng.uniform(0.2, 0.6))
        cuts.heal_all()
        _restore(cluster, start, several)
        admin.clear_faults()
        report.posts = created
        say(f"  chaos over after {time.monotonic() - started:.1f}s; draining")
        _drain_and_verify(cluster, admin, report, drain_timeout_s)
    report.wall_s = time.monotonic() - started
    return report


def _start_coordinators(
    cluster: LocalCluster, n: int, report: SoakReport, rng: random.Random, placement: str
) -> Coordinators | None:
    """The soak's coordinators: one, or `n` on the cluster's PostgreSQL (their handle)."""
    if n <= 1:
        cluster.start_coordinator()
        return None
    several = Coordinators(cluster, report, rng, placement)
    several.start(n)
    return several


def _drain_and_verify(
    cluster: LocalCluster, admin: SandboxAdmin, report: SoakReport, timeout_s: float
) -> None:
    """Every job to its end (the drain's time in the report), then the invariants checked."""
    drain_started = time.monotonic()
    _drain(cluster, timeout_s)
    report.drain_s = time.monotonic() - drain_started
    _verify(cluster, admin, report)


def _config(lab: NetLab | None, coordinators: int = 1) -> ClusterConfig:
    """Short heartbeats, leases and retries, so that many faults fit in a short soak. Several
    coordinators: shard leases of 2 s (a takeover in ~2.5 s) under workers' leases of 4 s, so a
    worker can keep its jobs through a takeover, as with the product's 6 s and 15 s."""
    several = coordinators > 1
    return ClusterConfig(
        heartbeat_interval_s=0.5,
        lease_ttl_s=4.0 if several else 1.5,
        retry_initial_s=0.2,
        coordinator_args=("--retry-max", "2"),
        worker_args=("--request-timeout-s", "1"),
        host=lab.hub if lab is not None else "127.0.0.1",
        ownership_ttl_s=2.0 if several else None,
    )


def _publish(
    cluster: LocalCluster,
    rng: random.Random,
    accounts: list[str],
    seed: int,
    created: int,
    batch: int,
    say: Callable[[str], None],
) -> int:
    """Up to `batch` more soak posts, each to 1-3 random accounts; the count created so far."""
    try:
        with cluster.client(timeout_s=5) as client:
            for _ in range(batch):
                targets = rng.sample(accounts, k=rng.randint(1, 3))
                cluster.publish(
                    client,
                    f"soak post {created} seed {seed}",
                    [f"sandbox:{a}" for a in targets],
                    max_attempts=6,
                )
                created += 1
    except Exception as exc:  # the coordinator may be restarting: try again later
        say(f"  publish paused: {exc.__class__.__name__}: {str(exc)[:160]}")
    return created


def _restore(
    cluster: LocalCluster, start: Callable[[str], None], several: Coordinators | None
) -> None:
    """Every worker running again (paused ones resumed, killed ones restarted), and the
    coordinators."""
    for name, child in cluster.workers.items():
        child.resume()
        if not child.alive():
            start(name)
    if several is not None:
        several.restore()
    elif cluster.coordinator is None or not cluster.coordinator.alive():
        cluster.start_coordinator()


def _verify(cluster: LocalCluster, admin: SandboxAdmin, report: SoakReport) -> None:
    """The invariants, read from the coordinator and the sandbox once everything drained."""
    with cluster.client(timeout_s=30) as client:
        jobs = all_jobs(client)
        seqs = all_audit_seqs(client)
        check(report, jobs, admin.posts(), seqs)
        check_failures(report, client, jobs)
    admin.close()


class _Partitions:
    """The soak's partitions: at most one at a time per worker, each healed when its time is up."""

    def __init__(self, nodes: dict[str, Node], coordinator_port: int) -> None:
        self.nodes = nodes
        self.coordinator_port = coordinator_port
        self.until: dict[str, float] = {}

    def begin(self, rng: random.Random, name: str, now: float) -> bool:
        """Cut `name` off (or slow its link) for a few seconds; False if it cannot be now."""
        node = self.nodes.get(name)
        if node is None or name in self.until:
            return False
        roll = rng.random()
        if roll < 0.4:
            node.cut()  # the whole link: coordinator and platform
        elif roll < 0.55:
            node.cut(self.coordinator_port, "out")  # it hears the coordinator, is not heard
        elif roll < 0.7:
            node.cut(self.coordinator_port, "in")  # it is heard, hears nothing back
        else:
            node.slow(
                loss=rng.uniform(0.05, 0.3),
                delay_ms=rng.choice((50, 200, 500)),
                rate_kbit=rng.choice((32, 64, 256)),
            )
        self.until[name] = now + rng.uniform(1.0, 5.0)
        return True

    def heal_due(self, now: float) -> None:
        for name, until in list(self.until.items()):
            if now >= until:
                self.nodes[name].heal()
                del self.until[name]

    def heal_all(self) -> None:
        self.heal_due(float("inf"))


def _one_fault(
    rng: random.Random, admin: SandboxAdmin, accounts: list[str], report: SoakReport
) -> None:
    roll = rng.random()
    account = rng.choice(accounts)
    if roll < 0.25:
        admin.inject("rate_limit", account=account, count=1, retry_after_seconds=1)
    elif roll < 0.45:
        admin.inject("server_error", account=account, count=rng.randint(1, 2))
    elif roll < 0.55:
        admin.inject("hang", account=account, count=1, hang_seconds=3)
    elif roll < 0.7:
        admin.inject("accept_then_fail", account=account, count=1)
    else:
        return
    report.faults_injected += 1


def _one_disruption(
    rng: random.Random,
    cluster: LocalCluster,
    names: list[str],
    paused: dict[str, float],
    report: SoakReport,
    start: Callable[[str], None],
    cuts: _Partitions,
    several: Coordinators | None = None,
) -> None:
    now = time.monotonic()
    for name, until in list(paused.items()):
        if now >= until:
            cluster.workers[name].resume()
            del paused[name]
    roll = rng.random()
    name = rng.choice(names)
    child = cluster.workers[name]
    if roll < 0.12 and child.alive() and name not in paused:
        child.kill()
        report.worker_kills += 1
        start(name)
    elif roll < 0.2 and child.alive() and name not in paused:
        child.pause()
        paused[name] = now + rng.uniform(1.0, 4.0)
        report.worker_pauses += 1
    elif roll < 0.28 and several is not None:  # kills are the point here: twice as many
        several.kill()
    elif roll < 0.24 and cluster.coordinator is not None:
        cluster.coordinator.kill()
        report.coordinator_restarts += 1
        cluster.start_coordinator()
    elif roll < 0.42 and cuts.nodes and cuts.begin(rng, name, now):
        report.partitions += 1


def _drain(cluster: LocalCluster, timeout_s: float) -> list[pb.Job]:
    deadline = time.monotonic() + timeout_s
    jobs: list[pb.Job] = []
    while time.monotonic() < deadline:
        try:
            with cluster.client(timeout_s=10) as client:
                jobs = all_jobs(client)
        except Exception:
            time.sleep(0.5)
            continue
        if jobs and all(j.status in TERMINAL for j in jobs):
            return jobs
        time.sleep(0.5)
    return jobs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    p.add_argument("--posts", type=int, default=1000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--accounts", type=int, default=6)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--chaos-seconds", type=float, default=60.0)
    p.add_argument("--drain-timeout", type=float, default=180.0)
    p.add_argument(
        "--partitions",
        action="store_true",
        help="run each worker in a network namespace and mix network partitions (cuts, "
        "one-way cuts, slow lossy links) into the kills and pauses; needs root, ip, iptables",
    )
    p.add_argument(
        "--db",
        default="",
        help="the coordinator's --db, e.g. postgresql://USER@HOST/DB (an empty database); "
        "default SQLite in the work directory",
    )
    p.add_argument(
        "--coordinators",
        type=int,
        default=1,
        help="several coordinators on the --db PostgreSQL database (placement one: one active, "
        "the others standing by; the coordinator kills then SIGKILL the active one)",
    )
    p.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="spread",
        help="with --coordinators, as the coordinators' own default: spread = every coordinator "
        "serves a share of the shards, and the kills SIGKILL any live one, which starts again a "
        "few seconds later; one = one active, the others standing by, and the kills SIGKILL the "
        "active one",
    )
    p.add_argument("--out", type=Path, default=Path("bench/chaos-results.json"))
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the database and every process's log here (default: a temp dir)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    if a.partitions and (missing := netlab_missing()) is not None:
        p.error(f"--partitions: {missing}")
    if a.coordinators > 1 and not a.db.startswith(("postgresql:", "postgres:")):
        p.error("--coordinators: several coordinators share a PostgreSQL database: give --db")
    if a.coordinators < 2:
        a.placement = "one"  # one coordinator: nothing to place
    with tempfile.TemporaryDirectory(prefix="postroom-chaos-") as tmp:
        if a.workdir is not None:
            a.workdir.mkdir(parents=True, exist_ok=True)
        report = soak(
            posts=a.posts,
            workers=a.workers,
            accounts=a.accounts,
            seed=a.seed,
            chaos_s=a.chaos_seconds,
            drain_timeout_s=a.drain_timeout,
            workdir=a.workdir or Path(tmp),
            partitions=a.partitions,
            db_url=a.db,
            coordinators=a.coordinators,
            placement=a.placement,
        )
    rows = asdict(report)
    violations = rows.pop("violations")
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        print(
            f"{key:<{width}}  {value:.1f}"
            if isinstance(value, float)
            else f"{key:<{width}}  {value}"
        )
    for v in violations[:50]:
        print(f"VIOLATION: {v}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({**rows, "violations": violations}, indent=2) + "\n")
    print("OK: never twice, never lost" if report.ok else f"FAILED (replay with --seed {a.seed})")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
