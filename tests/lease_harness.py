"""Drive the pure LeaseCore in virtual time against a model durable store.

Used by tests/test_lease_core_unit.py and tests/test_lease_core_props.py. `Harness.run(fx)` applies
every effect batch to `ModelStore` exactly as the shell would (batch first, then messages), and a
compare-and-set miss fails the test: the core must never write over a row it does not own.
`Harness.command(cmd)` is the actor's whole path for one command: the load phase
(coordinator/loading.py, reading the model store), step.handle, then the commit.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from coordinator.access.registry import Credentials
from coordinator.convert import coordinator_message_pb, job_report_from_pb
from coordinator.domain import (
    TERMINAL_JOB_STATUSES,
    AuditEvent,
    DeviceRecord,
    GateRecord,
    Job,
    JobStatus,
    Post,
    PostStatus,
    Target,
    WorkerKind,
    content_hash,
    idempotency_key,
    platform_key,
)
from coordinator.errors import NotFound
from coordinator.gates import GateBook, Quota
from coordinator.leasing.commands import Command
from coordinator.leasing.core import LeaseConfig, LeaseCore
from coordinator.leasing.effects import Effects
from coordinator.loading import load
from coordinator.operator_commands import OperatorCommand
from coordinator.retry import RetryPolicies
from coordinator.step import CoordinatorState, handle
from coordinator.store.base import WriteBatch
from coordinator.transitions import job_can, post_can
from postroom.v1 import types_pb2
from postroom.v1 import worker_gateway_pb2 as wg

T0 = 1_800_000_000.0  # 2027-01-15, virtual time starts here
SANDBOX_ANY = (Target("sandbox", "*"),)


class Unaudited(AssertionError):
    """A job's status changed with no audit entry about it in the same batch."""


class CasMiss(AssertionError):
    """A batch wrote over a row that had moved (the core lost track of what it owns), or moved a
    row in a way the transition tables do not allow."""


class Ids:
    """Deterministic ids: r1, r2, ... (the core's new_id)."""

    def __init__(self) -> None:
        self._n = itertools.count(1)

    def __call__(self, prefix: str) -> str:
        return f"{prefix}{next(self._n)}"


def make_post(
    post_id: str,
    targets: Iterable[Target],
    now: float,
    *,
    text: str = "hello",
    max_attempts: int = 3,
    require_confirm: bool = False,
) -> tuple[Post, list[Job]]:
    """An approved, SCHEDULED post and one QUEUED job per target, due at `now`."""
    targets = tuple(targets)
    chash = content_hash(text, ())
    post = Post(
        id=post_id,
        text=text,
        media=(),
        targets=targets,
        scheduled_at=now,
        status=PostStatus.SCHEDULED,
        content_hash=chash,
        created_at=now,
        updated_at=now,
        approved_hash=chash,
        approved_by="alice",
        max_attempts=max_attempts,
        require_confirm=require_confirm,
    )
    jobs = [
        Job(
            id=f"{post_id}-j{n}",
            post_id=post_id,
            platform=t.platform,
            account=t.account,
            status=JobStatus.QUEUED,
            idempotency_key=idempotency_key(post_id, t, now),
            platform_key=platform_key(post_id, t, chash),
            content_hash=chash,
            text=text,
            media=(),
            scheduled_at=now,
            created_at=now,
            updated_at=now,
            not_before=now,
            max_attempts=max_attempts,
            require_confirm=require_confirm,
        )
        for n, t in enumerate(targets)
    ]
    return post, jobs


@dataclass
class ModelStore:
    """What the database would hold: rows replaced by CAS-checked writes, audits appended."""

    posts: dict[str, Post] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    gates: dict[Target, GateRecord] = field(default_factory=dict)
    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    audits: list[AuditEvent] = field(default_factory=list)

    def insert(self, post: Post, jobs: Iterable[Job]) -> None:
        self.posts[post.id] = dataclasses.replace(post)
        for job in jobs:
            self.jobs[job.id] = dataclasses.replace(job)

    def apply(self, batch: WriteBatch) -> None:
        audited = {a.subject_id for a in batch.audits}
        for post in batch.new_posts:
            self.posts[post.id] = dataclasses.replace(post)
        for job in batch.new_jobs:
            if job.id in self.jobs:
                raise CasMiss(f"new job {job.id} already exists")
            self.jobs[job.id] = dataclasses.replace(job)
        for jw in batch.job_writes:
            stored = self.jobs.get(jw.job.id)
            if stored is None:
                raise CasMiss(f"write to job {jw.job.id}, which the store does not have")
            if stored.status not in jw.expected_statuses or stored.lease_epoch != jw.expected_epoch:
                raise CasMiss(
                    f"job {jw.job.id}: stored {stored.status.value}@{stored.lease_epoch}, write "
                    f"expected {sorted(s.value for s in jw.expected_statuses)}@{jw.expected_epoch}"
                )
            if jw.job.status is not stored.status and not job_can(stored.status, jw.job.status):
                raise CasMiss(f"job {jw.job.id}: {stored.status} -> {jw.job.status} is not allowed")
            if jw.job.status is not stored.status and jw.job.id not in audited:
                raise Unaudited(
                    f"job {jw.job.id}: {stored.status.value} -> {jw.job.status.value} written "
                    "without an audit entry in its batch"
                )
            self.jobs[jw.job.id] = dataclasses.replace(jw.job)
        for pw in batch.post_writes:
            stored_post = self.posts.get(pw.post.id)
            if stored_post is None or stored_post.status not in pw.expected_statuses:
                raise CasMiss(f"post {pw.post.id} moved under a write")
            moved = pw.post.status is not stored_post.status  # (a rewrite in place is no move)
            if moved and not post_can(stored_post.status, pw.post.status):
                raise CasMiss(f"post {pw.post.id}: {stored_post.status} -> {pw.post.status}")
            self.posts[pw.post.id] = dataclasses.replace(pw.post)
        for rec in batch.gates:
            self.gates[rec.target] = rec
        for dev in batch.devices:
            self.devices[dev.id] = dataclasses.replace(dev, logins=dict(dev.logins))
        self.audits += batch.audits

    def open_posts(self) -> tuple[list[Post], list[Job]]:
        """What the actor loads at start-up: posts with an unfinished job, and all their jobs."""
        open_ids = sorted(
            {j.post_id for j in self.jobs.values() if j.status not in TERMINAL_JOB_STATUSES}
        )
        posts = [dataclasses.replace(self.posts[p]) for p in open_ids]
        jobs = [
            dataclasses.replace(j)
            for j in sorted(self.jobs.values(), key=lambda j: j.id)
            if j.post_id in open_ids
        ]
        return posts, jobs

    # What the load phase reads (async like the real store's; none of them ever suspends).

    async def get_post(self, post_id: str) -> Post:
        if post_id not in self.posts:
            raise NotFound(f"post {post_id} does not exist")
        return dataclasses.replace(self.posts[post_id])

    async def get_job(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise NotFound(f"job {job_id} does not exist")
        return dataclasses.replace(self.jobs[job_id])

    async def jobs_for_post(self, post_id: str) -> list[Job]:
        jobs = [j for j in self.jobs.values() if j.post_id == post_id]
        return [dataclasses.replace(j) for j in sorted(jobs, key=lambda j: (j.created_at, j.id))]

    async def list_audit(
        self, *, since: float | None, subject_id: str, action: str, after_seq: int, limit: int
    ) -> list[AuditEvent]:
        hits = [a for a in self.audits if a.subject_id == subject_id and a.action == action]
        return hits[:limit]

    def actions(self, action: str, subject: str = "") -> list[AuditEvent]:
        hits = [a for a in self.audits if a.action == action]
        return [a for a in hits if not subject or a.subject_id == subject]


def wire(fx: Effects) -> list[tuple[str, wg.CoordinatorMessage]]:
    """The effects' messages as the actor sends them (the core says them as domain values)."""
    return [(sid, coordinator_message_pb(out)) for sid, out in fx.messages]


def messages(fx: Effects, kind: str, session_id: str | None = None) -> list[wg.CoordinatorMessage]:
    return [
        m
        for sid, m in wire(fx)
        if m.WhichOneof("msg") == kind and (session_id is None or sid == session_id)
    ]


def assigns(fx: Effects, session_id: str | None = None) -> list[wg.Assign]:
    return [m.assign for m in messages(fx, "assign", session_id)]


def one_assign(fx: Effects, session_id: str | None = None) -> wg.Assign:
    got = assigns(fx, session_id)
    assert len(got) == 1, f"expected one Assign, got {[a.job_id for a in got]}"
    return got[0]


class Harness:
    """A LeaseCore plus the model store, with virtual time in `now`."""

    def __init__(
        self,
        *,
        config: LeaseConfig | None = None,
        quotas: Mapping[str, Quota] | None = None,
        retry: RetryPolicies | None = None,
        rand: float = 0.5,
    ) -> None:
        self.config = config or LeaseConfig()
        self.quotas = dict(quotas or {})
        self.retry = retry or RetryPolicies()
        self.rand = rand
        self.ids = Ids()
        self.now = T0
        self.store = ModelStore()
        self.core = self._new_core()
        self.state = CoordinatorState(self.core, Credentials())

    def _new_core(self) -> LeaseCore:
        return LeaseCore(
            config=self.config,
            gates=GateBook(self.quotas),
            retry=self.retry,
            new_id=self.ids,
            rand=lambda: self.rand,
        )

    def run(self, fx: Effects) -> Effects:
        """The shell's order: commit the batch (CAS-checked), then hand back the messages."""
        self.store.apply(fx.batch)
        return fx

    def command(self, command: Command | OperatorCommand) -> Effects:
        """The actor's path: load what the command needs, decide it, commit the batch."""
        if not isinstance(command, Command):
            loading = load(self.store, self.state, command)  # type: ignore[arg-type]
            try:
                loading.send(None)
            except StopIteration as done:
                command = done.value
            else:  # pragma: no cover - the model store never suspends
                raise AssertionError("the load phase waited on something")
        return self.run(handle(self.state, command, self.now))

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def add(self, post: Post, jobs: list[Job]) -> Effects:
        self.store.insert(post, jobs)
        return self.run(
            self.core.add_post_jobs(
                dataclasses.replace(post), [dataclasses.replace(j) for j in jobs], self.now
            )
        )

    def open(
        self,
        sid: str,
        *,
        device: str = "",
        slots: int = 1,
        held: Iterable[tuple[str, int]] = (),
        capabilities: tuple[Target, ...] = SANDBOX_ANY,
        per_account_slots: int = 0,
    ) -> Effects:
        return self.run(
            self.core.open_session(
                sid,
                self.now,
                device_id=device or f"dev-{sid}",
                kind=WorkerKind.API,
                capabilities=capabilities,
                slots=slots,
                held=list(held),
                version="t",
                per_account_slots=per_account_slots,
            )
        )

    def heartbeat(self, sid: str, seq: int = 1) -> Effects:
        return self.run(self.core.heartbeat(sid, seq, self.now))

    def ack(self, sid: str, job_id: str, epoch: int) -> Effects:
        return self.run(self.core.ack(sid, job_id, epoch, self.now))

    def commit(self, sid: str, job_id: str, epoch: int) -> Effects:
        return self.run(self.core.commit_request(sid, job_id, epoch, self.now))

    def result(self, sid: str, r: wg.JobResult) -> Effects:
        return self.run(self.core.result(sid, job_report_from_pb(r), self.now))

    def success(
        self,
        sid: str,
        job_id: str,
        epoch: int,
        *,
        found_existing: bool = False,
        permit: bool = True,
    ) -> Effects:
        """A worker that followed the protocol: it asked for its commit permit first (when it
        holds the lease and publishes rather than finds). `permit=False`: it did not."""
        lease = self.core.leases.get(job_id)
        if (
            permit
            and not found_existing
            and lease is not None
            and (lease.session_id, lease.epoch) == (sid, epoch)
            and not lease.run.committed
        ):
            self.commit(sid, job_id, epoch)
        return self.result(
            sid,
            wg.JobResult(
                job_id=job_id,
                lease_epoch=epoch,
                success=True,
                platform_post_id=f"p-{job_id}",
                url=f"https://sandbox.example/{job_id}",
                found_existing=found_existing,
            ),
        )

    def failure(
        self,
        sid: str,
        job_id: str,
        epoch: int,
        error_class: types_pb2.ErrorClass.ValueType,
        *,
        message: str = "boom",
        retry_at: float | None = None,
        not_created: bool = False,
    ) -> Effects:
        return self.result(
            sid,
            wg.JobResult(
                job_id=job_id,
                lease_epoch=epoch,
                success=False,
                error_class=error_class,
                error_message=message,
                retry_at_unix_ms=int(retry_at * 1000) if retry_at is not None else 0,
                not_created=not_created,
            ),
        )

    def lost(self, sid: str, reason: str = "EOF") -> Effects:
        return self.run(self.core.session_lost(sid, self.now, reason=reason))

    def tick(self) -> Effects:
        return self.run(self.core.tick(self.now))

    def settle(self) -> Effects:
        return self.run(self.core.settle_posts(self.now))

    def restart(self) -> None:
        """A new coordinator process: memory gone, state loaded from the store."""
        self.core = self._new_core()
        self.state = CoordinatorState(self.core, self.state.credentials)
        posts, jobs = self.store.open_posts()
        self.core.load(posts, jobs, self.now)
        self.core.gates.load(self.store.gates.values())
        for dev in self.store.devices.values():
            self.core.devices[dev.id] = dataclasses.replace(dev, logins=dict(dev.logins))

    def job(self, job_id: str) -> Job:
        """The job as the store holds it (what a user would see after a restart)."""
        return self.store.jobs[job_id]
