"""Never twice, never lost: a Hypothesis state machine of the lease core, workers and a platform.

Random interleavings of sessions opening and dying, heartbeats, acks, commit requests, posts made
on a model platform, results (success, TRANSIENT, RATE_LIMITED, AUTH_REQUIRED, INVALID_CONTENT),
replays of old messages, clock jumps, goodbyes, coordinator restarts (a new LeaseCore loaded
from the model store), and the operators' whole command set as values through step.handle after
the load phase (Harness.command): edits (which hold a post's jobs until it is approved and
scheduled again), reschedules (which supersede waiting jobs), cancelling posts and jobs, retries,
confirmations of jobs that require one, login checks either way, and posts resolved by hand.
Coordinator -> worker messages sit in each worker's inbox until a rule delivers them, so a worker
may act on a stale belief, as a real one does.

The model worker is honest but not lucky: it publishes only after a CommitGrant and only while its
own lease deadline (learned from Assign, HeartbeatAck, CommitGrant) has not passed; it may die
right after publishing; with verify_first it looks on the platform first and reports the post it
finds. Checked after every step: one live lease per job; no grant for a stale epoch; no job re-run
without verify_first while an earlier permit's post may exist; no job lost; the store's rows equal
the core's (every CAS hit); at most one worker able to publish a job; no job posted twice. At the
end everything is driven to completion: every job finished, every SUCCEEDED job posted once, and
no job in doubt FAILED on an attempt that lost its lease before it looked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, TypeVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from lease_harness import Harness, make_post, wire

from coordinator import operator_commands as op
from coordinator.convert import job_report_from_pb
from coordinator.domain import (
    LEASED_STATUSES,
    TERMINAL_JOB_STATUSES,
    JobStatus,
    LoginState,
    PostStatus,
    StepLogEntry,
    Target,
)
from coordinator.errors import FailedPrecondition, NotFound
from coordinator.leasing import commands as c
from coordinator.leasing.core import LeaseConfig
from coordinator.leasing.effects import Effects
from coordinator.retry import RetryPolicies, RetryPolicy
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

TTL = 15.0
CONFIG = LeaseConfig(
    heartbeat_interval_s=5.0,
    lease_ttl_s=TTL,
    expiry_margin_s=1.0,
    commit_min_left_s=2.0,
    claim_timeout_s=20.0,
    run_timeout_s=30.0,
    restart_grace_s=TTL,
)
RETRY = RetryPolicies(
    default=RetryPolicy(
        initial_interval_s=1.0, max_interval_s=8.0, default_rate_limit_s=20.0, max_rate_limited=4
    )
)
DEVICES = ("D0", "D1", "D2")
# D0 runs one job per account at a time (Hello.per_account_slots = 1, as a browser worker does).
PER_ACCOUNT = {"D0": 1}
TARGETS = (Target("sandbox", "a"), Target("sandbox", "b"), Target("sandbox", "c"))
FAILURES = {
    "transient": pb.ERROR_CLASS_TRANSIENT,
    "rate_limited": pb.ERROR_CLASS_RATE_LIMITED,
    "auth": pb.ERROR_CLASS_AUTH_REQUIRED,
    "invalid": pb.ERROR_CLASS_INVALID_CONTENT,
}
MAX_POSTS = 6
SETTLE_ROUNDS = 400

workers_st = st.sampled_from(DEVICES)
picks = st.integers(min_value=0, max_value=1_000)


@dataclass
class WRun:
    """One (job, epoch) as the worker holding it believes it to be."""

    job_id: str
    epoch: int
    deadline: float
    verify_first: bool
    pkey: str = ""  # the job's platform key when it was assigned
    confirm: bool = False  # the job requires an operator's confirmation before its permit
    confirmed: bool = False
    verified: bool = False
    found: bool = False
    granted: bool = False
    posted: bool = False
    # The coordinator took the lease back after this run published: it only reports now.
    gone: bool = False
    reported: wg.JobResult | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.job_id, self.epoch)


@dataclass
class Sent:
    kind: str  # "ack" | "log" | "commit" | "result"
    job_id: str
    epoch: int
    result: wg.JobResult | None = None


@dataclass
class WorkerModel:
    device: str
    slots: int = 1
    alive: bool = False
    session: str | None = None
    inbox: list[wg.CoordinatorMessage] = field(default_factory=list)
    runs: dict[tuple[str, int], WRun] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)


M = TypeVar("M", bound="LeaseProtocol")
P = ParamSpec("P")


def step(f: Callable[Concatenate[M, P], None]) -> Callable[Concatenate[M, P], None]:
    """Marks a rule's completion, so teardown knows (deterministically) whether one failed."""

    @functools.wraps(f)
    def wrapper(self: M, /, *args: P.args, **kwargs: P.kwargs) -> None:
        self.steps_ok = False
        f(self, *args, **kwargs)
        self.steps_ok = True

    return wrapper


class LeaseProtocol(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(config=CONFIG, retry=RETRY)
        self.workers = {d: WorkerModel(d) for d in DEVICES}
        self.owner: dict[str, str] = {}  # session id -> device
        # The account's posts by platform key (post, target, content: what a worker looks for
        # when it verifies): (job id, device or "person", epoch) of each.
        self.platform: dict[str, list[tuple[str, str, int]]] = {}
        # Job -> epoch of its latest commit permit, while that run may have posted.
        self.in_doubt: dict[str, int] = {}
        self.n_sessions = 0
        self.n_posts = 0
        self.n_schedules = 0
        self.settling = False
        self.steps_ok = True

    def event(self, what: str) -> None:
        """Statistics (pytest --hypothesis-show-statistics): how often the random phase, not the
        final settling, reaches each interesting situation."""
        if currently_in_test_context():
            hypothesis_event(f"settling: {what}" if self.settling else what)

    # ---- plumbing --------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.h.now

    def emit(self, fx: Effects) -> Effects:
        """The batch is already applied (Harness.run); check and route the messages."""
        for sid, msg in wire(fx):
            kind = msg.WhichOneof("msg")
            if kind == "commit_grant":
                self.check_grant(sid, msg.commit_grant)
            elif kind == "assign":
                self.check_assign(sid, msg.assign)
            self.event(f"sent {kind}")
            if kind == "assign" and msg.assign.verify_first:
                self.event("assign verify_first")
            if kind == "drop" and "stuck" in msg.drop.reason:
                self.event("stuck drop")
            if kind == "welcome" and msg.welcome.resumed:
                self.event("resumed")
            if kind == "cancel":
                self.event("cancel sent")
            device = self.owner.get(sid)
            if device is not None and self.workers[device].session == sid:
                self.workers[device].inbox.append(msg)
        for sid in fx.close_sessions:
            self.disconnect(sid)
        return fx

    def disconnect(self, sid: str) -> None:
        device = self.owner.get(sid)
        if device is not None and self.workers[device].session == sid:
            self.workers[device].session = None
            self.workers[device].inbox.clear()

    def could_publish(self, run: WRun) -> bool:
        return (
            run.granted
            and not run.posted
            and not run.gone
            and run.reported is None
            and self.now < run.deadline
        )

    def publishers(self, job_id: str) -> list[tuple[str, WRun]]:
        return [
            (w.device, r)
            for w in self.workers.values()
            if w.alive
            for r in w.runs.values()
            if r.job_id == job_id and self.could_publish(r)
        ]

    def check_grant(self, sid: str, grant: wg.CommitGrant) -> None:
        job = self.h.core.jobs[grant.job_id]
        lease = self.h.core.leases.get(grant.job_id)
        assert lease is not None, f"grant for {grant.job_id}, which has no lease"
        assert (lease.epoch, lease.session_id) == (grant.lease_epoch, sid), "stale grant"
        assert job.lease_epoch == grant.lease_epoch
        assert self.h.store.jobs[grant.job_id].committed_epoch == grant.lease_epoch
        others = [
            (d, r.epoch) for d, r in self.publishers(grant.job_id) if r.epoch != grant.lease_epoch
        ]
        assert not others, f"grant for {grant.job_id}@{grant.lease_epoch} while {others} may post"
        self.in_doubt[grant.job_id] = grant.lease_epoch

    def check_assign(self, sid: str, a: wg.Assign) -> None:
        if a.job_id in self.in_doubt:
            assert a.verify_first, f"{a.job_id} re-run without verify_first after a permit"
        lease = self.h.core.leases[a.job_id]
        assert (lease.epoch, lease.session_id) == (a.lease_epoch, sid)
        others = [(d, r.epoch) for d, r in self.publishers(a.job_id)]
        assert not others, f"{a.job_id} re-leased while {others} may still publish it"
        session = self.h.core.sessions[sid]
        if session.per_account:
            target = self.h.core.jobs[a.job_id].target
            same = [j for j in session.jobs if self.h.core.jobs[j].target == target]
            lingering = [
                j
                for j, e in session.lingering.items()
                if (kept := self.h.core.leases.get(j)) is not None
                and kept.epoch == e
                and kept.session_id is None
                and self.h.core.jobs[j].target == target
            ]
            assert len(same) + len(lingering) <= session.per_account, (
                f"{a.job_id} is a second job of {target} on {sid}: {same} {lingering}"
            )
            self.event("assign under a per-account bound")

    def run_of(self, w: WorkerModel, pick: int) -> WRun | None:
        runs = [r for _, r in sorted(w.runs.items())]
        return runs[pick % len(runs)] if runs else None

    def receive(self, w: WorkerModel, msg: wg.CoordinatorMessage) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "welcome":
            kept = {(r.job_id, r.lease_epoch) for r in msg.welcome.resumed}
            for key, run in list(w.runs.items()):
                if key in kept or run.gone:
                    continue
                if run.posted:
                    run.gone = True  # not ours any more, but we published it: report it
                else:
                    del w.runs[key]
        elif kind == "assign":
            a = msg.assign
            w.runs[(a.job_id, a.lease_epoch)] = WRun(
                a.job_id,
                a.lease_epoch,
                a.lease_deadline_unix_ms / 1000,
                a.verify_first,
                pkey=a.platform_key,
                confirm=a.require_confirm,
            )
        elif kind == "confirm":
            confirmed = w.runs.get((msg.confirm.job_id, msg.confirm.lease_epoch))
            if confirmed is not None:
                confirmed.confirmed = True
        elif kind == "heartbeat_ack":
            deadline = msg.heartbeat_ack.lease_deadline_unix_ms / 1000
            for held in w.runs.values():
                if not held.gone:
                    held.deadline = max(held.deadline, deadline)
        elif kind == "commit_grant":
            g = msg.commit_grant
            granted = w.runs.get((g.job_id, g.lease_epoch))
            if granted is not None and not granted.gone:
                granted.granted = True
                granted.deadline = max(granted.deadline, g.lease_deadline_unix_ms / 1000)
        elif kind in ("drop", "cancel"):
            body = msg.drop if kind == "drop" else msg.cancel
            stopped = w.runs.get((body.job_id, body.lease_epoch))
            if stopped is not None:
                if stopped.posted:
                    stopped.gone = True
                else:
                    del w.runs[stopped.key]
        elif kind == "result_ack":
            w.runs.pop((msg.result_ack.job_id, msg.result_ack.lease_epoch), None)

    def deliver(self, w: WorkerModel, n: int) -> None:
        for _ in range(n):
            if not w.inbox:
                return
            self.receive(w, w.inbox.pop(0))

    def connect(self, w: WorkerModel, slots: int) -> None:
        if not w.alive:
            w.alive, w.runs = True, {}
        if w.session is not None:
            self.disconnect(w.session)  # the worker dials again; its old stream is dead to it
        self.n_sessions += 1
        sid = f"s{self.n_sessions}"
        w.session, w.slots = sid, slots
        self.owner[sid] = w.device
        held = [r.key for r in w.runs.values() if not r.gone and r.reported is None]
        per_account = PER_ACCOUNT.get(w.device, 0)
        self.emit(
            self.h.open(sid, device=w.device, slots=slots, held=held, per_account_slots=per_account)
        )

    def send_result(self, w: WorkerModel, run: WRun, r: wg.JobResult) -> None:
        assert w.session is not None
        run.reported = r
        w.sent.append(Sent("result", run.job_id, run.epoch, r))
        fx = self.emit(self.h.result(w.session, r))
        (ack,) = [m.result_ack for sid, m in wire(fx) if m.WhichOneof("msg") == "result_ack"]
        if (
            ack.accepted
            and not r.success
            and r.error_class != pb.ERROR_CLASS_TRANSIENT
            and self.in_doubt.get(run.job_id) == run.epoch
        ):
            del self.in_doubt[run.job_id]  # the permit's run says, truthfully: nothing posted

    def success_of(self, run: WRun) -> wg.JobResult:
        return wg.JobResult(
            job_id=run.job_id,
            lease_epoch=run.epoch,
            success=True,
            platform_post_id=f"post-{run.job_id}",
            url=f"https://sandbox.example/{run.job_id}",
            found_existing=run.found and not run.posted,
        )

    def step_worker(self, w: WorkerModel, run: WRun) -> None:
        """What a healthy worker does next with a run (used to drive everything home)."""
        if w.session is None:
            return
        if run.reported is not None:
            self.send_result(w, run, run.reported)  # no ResultAck yet: say it again
            return
        if run.posted or run.found:
            self.send_result(w, run, self.success_of(run))
            return
        if run.gone:
            return
        self.emit(self.h.ack(w.session, run.job_id, run.epoch))
        self.deliver(w, len(w.inbox))
        if run.key not in w.runs:
            return
        if run.verify_first and not run.verified:
            self.verify(run)
            if run.found:
                self.send_result(w, run, self.success_of(run))
                return
        if self.await_confirm(w, run):
            return
        if not run.granted:
            self.emit(self.h.heartbeat(w.session))
            self.emit(self.h.commit(w.session, run.job_id, run.epoch))
            self.deliver(w, len(w.inbox))
        if run.key in w.runs and self.could_publish(run):
            self.publish(w, run)
            self.send_result(w, run, self.success_of(run))
        elif run.key in w.runs and not run.granted:
            del w.runs[run.key]  # denied for good (its lease is gone): abandon it

    def await_confirm(self, w: WorkerModel, run: WRun) -> bool:
        """A job that requires a confirmation: say so and wait (True) until it comes."""
        if not run.confirm or run.confirmed or run.granted or w.session is None:
            return False
        self.emit(self.h.command(c.AwaitingConfirm(w.session, run.job_id, run.epoch)))
        self.deliver(w, len(w.inbox))
        return not run.confirmed

    def verify(self, run: WRun) -> None:
        self.event("verified")
        if self.platform.get(run.pkey):
            self.event("verify found")
            run.found = True
            return
        run.verified = True
        lease = self.h.core.leases.get(run.job_id)
        if lease is not None and lease.epoch == run.epoch:
            # Looked after every earlier permit's deadline: nothing was posted, nothing will be.
            self.in_doubt.pop(run.job_id, None)

    def publish(self, w: WorkerModel, run: WRun) -> None:
        assert self.could_publish(run)
        posts = self.platform.setdefault(run.pkey, [])
        posts.append((run.job_id, w.device, run.epoch))
        run.posted = True
        self.event("published")
        assert len(posts) == 1, f"{run.job_id}'s post made twice: {posts}"

    # ---- work arriving ---------------------------------------------------------------------

    def add(self, targets: set[Target], max_attempts: int) -> None:
        self.n_posts += 1
        post, jobs = make_post(
            f"p{self.n_posts}",
            sorted(targets),
            self.now,
            max_attempts=max_attempts,
            require_confirm=self.n_posts % 3 == 0,  # p3, p6: a person confirms each job
        )
        self.emit(self.h.add(post, jobs))

    @initialize(
        posts=st.lists(
            st.tuples(st.sets(st.sampled_from(TARGETS), min_size=1, max_size=2), st.integers(2, 3)),
            min_size=1,
            max_size=3,
        ),
        slots=st.lists(st.integers(1, 3), min_size=len(DEVICES), max_size=len(DEVICES)),
    )
    @step
    def initial_posts(self, posts: list[tuple[set[Target], int]], slots: list[int]) -> None:
        """Work, and every worker connected (rules that need one are not always enabled)."""
        for targets, max_attempts in posts:
            self.add(targets, max_attempts)
        for device, n in zip(DEVICES, slots, strict=True):
            self.connect(self.workers[device], n)

    @precondition(lambda self: self.n_posts < MAX_POSTS)
    @rule(where=st.sets(st.sampled_from(TARGETS), min_size=1, max_size=3))
    @step
    def add_post(self, where: set[Target]) -> None:
        self.add(where, 3)

    # ---- workers ---------------------------------------------------------------------------

    @rule(device=workers_st, slots=st.integers(1, 3))
    @step
    def open_session(self, device: str, slots: int) -> None:
        self.connect(self.workers[device], slots)

    @rule(device=workers_st)
    @step
    def heartbeat(self, device: str) -> None:
        w = self.workers[device]
        if w.session is not None:
            self.emit(self.h.heartbeat(w.session))

    def heartbeat_all(self) -> None:
        for w in self.workers.values():
            if w.session is not None:
                self.emit(self.h.heartbeat(w.session))

    @rule(device=workers_st, n=st.integers(1, 8))
    @step
    def deliver_some(self, device: str, n: int) -> None:
        self.deliver(self.workers[device], n)

    def deliver_all(self) -> None:
        for w in self.workers.values():
            self.deliver(w, len(w.inbox))

    @rule(device=workers_st, pick=picks, steps=st.integers(1, 4))
    @step
    def worker_progresses(self, device: str, pick: int, steps: int) -> None:
        """The worker reads its messages and takes one run a few steps further."""
        w = self.workers[device]
        for _ in range(steps):
            self.deliver(w, len(w.inbox))
            run = self.run_of(w, pick)
            if run is None or not w.alive:
                return
            self.next_step(w, run)

    def next_step(self, w: WorkerModel, run: WRun) -> None:
        if run.reported is not None:
            if w.session is not None:
                self.send_result(w, run, run.reported)  # no ResultAck yet: say it again
        elif (run.posted or run.found) and w.session is not None:
            self.send_result(w, run, self.success_of(run))
        elif run.gone:
            return
        elif self.could_publish(run):
            self.publish(w, run)
        elif run.verify_first and not run.verified:
            self.verify(run)
        elif self.await_confirm(w, run):
            return
        elif w.session is not None and not run.granted:
            w.sent.append(Sent("commit", run.job_id, run.epoch))
            self.emit(self.h.ack(w.session, run.job_id, run.epoch))
            self.emit(self.h.commit(w.session, run.job_id, run.epoch))

    @rule(device=workers_st, pick=picks)
    @step
    def ack(self, device: str, pick: int) -> None:
        w = self.workers[device]
        run = self.run_of(w, pick)
        if w.session is not None and run is not None and not run.gone:
            w.sent.append(Sent("ack", run.job_id, run.epoch))
            self.emit(self.h.ack(w.session, run.job_id, run.epoch))

    @rule(device=workers_st, pick=picks)
    @step
    def log_step(self, device: str, pick: int) -> None:
        w = self.workers[device]
        run = self.run_of(w, pick)
        if w.session is not None and run is not None and not run.gone:
            w.sent.append(Sent("log", run.job_id, run.epoch))
            entry = StepLogEntry("compose", "INFO", "typing", self.now)
            self.emit(
                self.h.run(self.h.core.log(w.session, run.job_id, run.epoch, entry, self.now))
            )

    def verify_on_platform(self, device: str, pick: int) -> None:
        w = self.workers[device]
        run = self.run_of(w, pick)
        if w.alive and run is not None and run.verify_first and not run.verified and not run.gone:
            self.verify(run)

    @rule(device=workers_st, pick=picks)
    @step
    def ask_commit(self, device: str, pick: int) -> None:
        w = self.workers[device]
        run = self.run_of(w, pick)
        if w.session is None or run is None or run.gone or run.granted or run.found:
            return
        if run.verify_first and not run.verified:
            return
        w.sent.append(Sent("commit", run.job_id, run.epoch))
        self.emit(self.h.commit(w.session, run.job_id, run.epoch))

    @rule(device=workers_st, pick=picks)
    @step
    def publish_on_platform(self, device: str, pick: int) -> None:
        w = self.workers[device]
        run = self.run_of(w, pick)
        if w.alive and run is not None and self.could_publish(run) and run.reported is None:
            self.publish(w, run)

    def report_success(self, device: str, pick: int) -> None:
        w = self.workers[device]
        run = self.run_of(w, pick)
        if w.session is not None and run is not None and (run.posted or run.found):
            self.send_result(w, run, self.success_of(run))

    @rule(
        device=workers_st,
        pick=picks,
        # Mostly retryable failures, so that jobs live long enough to meet trouble.
        failure=st.sampled_from(["transient"] * 3 + ["rate_limited"] * 2 + ["auth", "invalid"]),
        retry_in=st.none() | st.floats(1.0, 60.0),
    )
    @step
    def report_failure(self, device: str, pick: int, failure: str, retry_in: float | None) -> None:
        w = self.workers[device]
        run = self.run_of(w, pick)
        if w.session is None or run is None or run.gone or run.found:
            return
        if run.posted and failure != "transient":
            return  # after posting, only a timeout is possible: the answer never came
        retry_at = self.now + retry_in if retry_in is not None and failure == "rate_limited" else 0
        r = wg.JobResult(
            job_id=run.job_id,
            lease_epoch=run.epoch,
            success=False,
            error_class=FAILURES[failure],
            error_message=failure,
            retry_at_unix_ms=int(retry_at * 1000),
        )
        self.send_result(w, run, r)

    @rule(device=workers_st, pick=picks, dies=st.booleans())
    @step
    def worker_publishes_then_vanishes(self, device: str, pick: int, dies: bool) -> None:
        """The dangerous moment: the post is made, and the answer never reaches the coordinator
        (the process dies, or only its stream does and it may report later)."""
        w = self.workers[device]
        self.deliver(w, len(w.inbox))
        run = self.run_of(w, pick)
        if run is None or not self.could_publish(run):
            return
        self.publish(w, run)
        if dies:
            self.crash(device)
        else:
            self.stream_breaks(device)

    @rule(device=workers_st)
    @step
    def crash(self, device: str) -> None:
        """SIGKILL: the broken stream is noticed at once; everything the process held is gone."""
        w = self.workers[device]
        if w.session is not None:
            sid = w.session
            self.disconnect(sid)
            self.emit(self.h.lost(sid, "EOF"))
        w.alive, w.runs = False, {}

    @rule(device=workers_st)
    @step
    def stream_breaks(self, device: str) -> None:
        """The network drops the stream; the process lives on with its jobs and may redial."""
        w = self.workers[device]
        if w.session is not None:
            sid = w.session
            self.disconnect(sid)
            self.emit(self.h.lost(sid, "connection reset"))

    @rule(device=workers_st, dies=st.booleans())
    @step
    def stream_detached(self, device: str, dies: bool) -> None:
        """The stream ends with Goodbye(reconnecting) (a fan-out lost another shard owner): the
        session's leases stay, unrenewed, to their deadlines. `dies`: the process died (or lied)
        right after: nobody resumes them, the timer recovers them."""
        w = self.workers[device]
        if w.session is not None:
            sid = w.session
            self.disconnect(sid)
            lost = self.h.core.session_lost(sid, self.now, reason="fan-out ended", detached=True)
            self.emit(self.h.run(lost))
        if dies:
            w.alive, w.runs = False, {}

    @rule(device=workers_st)
    @step
    def goodbye(self, device: str) -> None:
        w = self.workers[device]
        if w.session is not None:
            self.emit(self.h.run(self.h.core.goodbye(w.session, self.now)))

    @rule(device=workers_st, pick=picks)
    @step
    def replay_old_message(self, device: str, pick: int) -> None:
        """A message the worker sent earlier arrives again (late duplicate, stale epoch)."""
        w = self.workers[device]
        if w.session is None or not w.sent:
            return
        old = w.sent[pick % len(w.sent)]
        if old.kind == "ack":
            self.emit(self.h.ack(w.session, old.job_id, old.epoch))
        elif old.kind == "log":
            entry = StepLogEntry("compose", "INFO", "again", self.now)
            self.emit(
                self.h.run(self.h.core.log(w.session, old.job_id, old.epoch, entry, self.now))
            )
        elif old.kind == "commit":
            self.emit(self.h.commit(w.session, old.job_id, old.epoch))
        else:
            assert old.result is not None
            self.emit(self.h.result(w.session, old.result))

    # ---- time and the coordinator ------------------------------------------------------------

    @rule(dt=st.floats(0.1, 6.0))
    @step
    def time_passes(self, dt: float) -> None:
        self.h.advance(dt)

    @rule(dt=st.floats(0.5, 9.0))
    @step
    def time_passes_healthily(self, dt: float) -> None:
        """Time passes in a healthy fleet: dead workers are restarted by their supervisor, cut
        off ones redial (offering what they hold), all heartbeat and read their messages."""
        self.h.advance(dt)
        for w in self.workers.values():
            if w.session is None:
                self.connect(w, w.slots)
            else:
                self.emit(self.h.heartbeat(w.session))
            self.deliver(w, len(w.inbox))
        self.emit(self.h.tick())

    @rule(dt=st.floats(TTL + 0.1, 3 * TTL))
    @step
    def time_jumps_past_the_ttl(self, dt: float) -> None:
        self.h.advance(dt)

    @rule()
    @step
    def tick(self) -> None:
        self.emit(self.h.tick())

    @rule()
    @step
    def settle_posts(self) -> None:
        self.emit(self.h.settle())

    @rule()
    @step
    def coordinator_restarts(self) -> None:
        """A new process: memory and every stream gone; workers live on and may redial."""
        self.emit(self.h.settle())  # the old process's last flush
        self.restart()

    def restart(self) -> None:
        self.h.restart()
        for sid in list(self.owner):
            self.disconnect(sid)

    @rule(device=workers_st, pick=picks, what=st.sampled_from(["commit", "success", "failure"]))
    @step
    def coordinator_dies_before_its_flush(self, device: str, pick: int, what: str) -> None:
        """A worker's message reaches the coordinator, which dies before committing the batch:
        nothing of it is durable, nothing is sent back; the worker believes it was said."""
        w = self.workers[device]
        run = self.run_of(w, pick)
        if w.session is None or run is None or run.gone or run.reported is not None:
            return
        core = self.h.core
        if what == "commit" and not run.granted and (run.verified or not run.verify_first):
            core.commit_request(w.session, run.job_id, run.epoch, self.now)
        elif what == "success" and (run.posted or run.found):
            run.reported = self.success_of(run)
            core.result(w.session, job_report_from_pb(run.reported), self.now)
        elif what == "failure" and not run.found:
            run.reported = wg.JobResult(
                job_id=run.job_id,
                lease_epoch=run.epoch,
                success=False,
                error_class=pb.ERROR_CLASS_TRANSIENT,
                error_message="timeout",
            )
            core.result(w.session, job_report_from_pb(run.reported), self.now)
        self.restart()

    # ---- operators ---------------------------------------------------------------------------

    def pick_job(self, pick: int) -> str:
        ids = sorted(self.h.store.jobs)
        return ids[pick % len(ids)]

    def pick_post(self, pick: int) -> str:
        ids = sorted(self.h.store.posts)
        return ids[pick % len(ids)]

    def operator(self, command: op.OperatorCommand) -> bool:
        """An operator's command through the actor's path; False if it was refused."""
        try:
            self.emit(self.h.command(command))
        except (FailedPrecondition, NotFound):
            return False
        return True

    @rule(pick=picks)
    @step
    def operator_cancels(self, pick: int) -> None:
        if pick % 5:
            return  # operators cancel rarely; jobs must live long enough to meet trouble
        job_id = self.pick_job(pick)
        lease = self.h.core.leases.get(job_id)
        committed = lease is not None and lease.run.committed
        if not self.operator(op.CancelJob(job_id, "user:op", "no longer wanted")):
            return
        assert not committed, f"{job_id} cancelled while its run holds a commit permit"
        assert self.h.store.jobs[job_id].status is JobStatus.CANCELLED

    @rule(pick=picks)
    @step
    def operator_retries(self, pick: int) -> None:
        self.operator(op.RetryJob(self.pick_job(pick), "user:op", False))

    @rule(pick=picks)
    @step
    def operator_confirms(self, pick: int) -> None:
        waiting = [j for j, job in sorted(self.h.store.jobs.items())
                   if job.status is JobStatus.AWAITING_CONFIRM]  # fmt: skip
        if waiting and self.operator(op.ConfirmJob(waiting[pick % len(waiting)], "user:op")):
            self.event("confirmed")

    @rule(where=st.sampled_from(TARGETS), device=workers_st)
    @step
    def login_restored(self, where: Target, device: str) -> None:
        self.operator(op.LoginChecked(device, where, LoginState.LOGGED_IN, "ok", "user:op"))

    @rule(pick=picks)
    @step
    def operator_resolves_by_hand(self, pick: int) -> None:
        """A person publishes the post by hand (or finds the one a worker made) and says so."""
        if pick % 7:
            return  # rare: jobs must live long enough to meet trouble
        job_id = self.pick_job(pick)
        pkey = self.h.store.jobs[job_id].platform_key
        made = not self.platform.get(pkey)
        if made:  # the person's post, made before they say so
            self.platform[pkey] = [(job_id, "person", 0)]
        if not self.operator(op.ResolveJob(job_id, "https://by.hand/1", "h1", "user:op", "")):
            if made:
                del self.platform[pkey]
            return
        self.event("resolved by hand")
        assert self.h.store.jobs[job_id].status is JobStatus.SUCCEEDED

    @rule(where=st.sampled_from(TARGETS), device=workers_st)
    @step
    def login_check_finds_it_signed_out(self, where: Target, device: str) -> None:
        checked = op.LoginChecked(device, where, LoginState.NEEDS_LOGIN, "signed out", "user:op")
        self.operator(checked)

    @rule(pick=picks, then=st.sampled_from(["nothing", "approve", "approve and schedule"]))
    @step
    def operator_edits(self, pick: int, then: str) -> None:
        """New text: the approval no longer holds, so the post's jobs are held (never handed out,
        never granted a permit) until it is approved and scheduled again."""
        post_id = self.pick_post(pick)
        edit = op.UpdatePost(post_id, f"edit {pick}", None, None, None, "user:author")
        if not self.operator(edit):
            return
        self.event("edited")
        if then != "nothing":
            self.operator(op.ApprovePost(post_id, "", "user:approver"))
        if then == "approve and schedule":
            self.reschedule(post_id, None)

    @rule(pick=picks, shift=st.sampled_from([None, 0.0, 5.0, 40.0]))
    @step
    def operator_reschedules(self, pick: int, shift: float | None) -> None:
        """Schedule again, now or later: waiting jobs of the earlier schedule are superseded,
        published and publishing targets are left alone."""
        self.reschedule(self.pick_post(pick), None if shift is None else self.now + shift)

    def reschedule(self, post_id: str, when: float | None) -> None:
        self.n_schedules += 1
        new_ids = f"{post_id}-s{self.n_schedules}-"
        if self.operator(op.SchedulePost(post_id, when, new_ids, "user:op")):
            self.event("rescheduled")

    @rule(pick=picks)
    @step
    def operator_cancels_post(self, pick: int) -> None:
        if pick % 9:
            return  # rare: posts must live long enough to meet trouble
        if self.operator(op.CancelPost(self.pick_post(pick), "no longer wanted", "user:op")):
            self.event("post cancelled")

    # ---- invariants --------------------------------------------------------------------------

    @invariant()
    def one_live_lease_per_job_and_memory_equals_the_store(self) -> None:
        core, store = self.h.core, self.h.store
        for job_id, lease in core.leases.items():
            job = core.jobs[job_id]
            assert job.status in LEASED_STATUSES, f"{job_id} {job.status} has a lease"
            assert lease.epoch == job.lease_epoch, f"{job_id} lease at a stale epoch"
            if lease.session_id is not None:
                assert job_id in core.sessions[lease.session_id].jobs
        for sid, session in core.sessions.items():
            for job_id in session.jobs:
                assert core.leases[job_id].session_id == sid, f"{job_id} in two sessions"
            if session.per_account:
                targets = [core.jobs[j].target for j in session.jobs]
                assert all(targets.count(t) <= session.per_account for t in targets), (
                    f"{sid} holds more than {session.per_account} job(s) of one account"
                )
        for job_id, job in core.jobs.items():
            assert job == store.jobs[job_id], f"{job_id}: memory and store disagree"

    @invariant()
    def no_job_lost(self) -> None:
        core = self.h.core
        heaps = core.queue._heaps
        for job_id, stored in self.h.store.jobs.items():
            if stored.status in TERMINAL_JOB_STATUSES:
                continue
            assert job_id in core.jobs, f"{job_id} ({stored.status}) forgotten by the core"
            if stored.status in LEASED_STATUSES:
                assert job_id in core.leases, f"{job_id} is {stored.status} with no lease"
            elif stored.status is JobStatus.QUEUED and not core._held(core.jobs[job_id]):
                # (A held job, of an edited post, is queued again by its next schedule.)
                entries = heaps.get(stored.target, [])
                assert any(j == job_id and nb == stored.not_before for nb, _, j in entries), (
                    f"{job_id} is QUEUED but not in the ready queue"
                )

    @invariant()
    def never_two_posts_and_never_two_publishers(self) -> None:
        for pkey, posts in self.platform.items():
            assert len(posts) <= 1, f"{pkey} posted twice: {posts}"
        for job_id in self.h.store.jobs:
            able = self.publishers(job_id)
            assert len(able) <= 1, f"{job_id}: {len(able)} workers may publish it now: {able}"

    # ---- the end: drive everything home ------------------------------------------------------

    def teardown(self) -> None:
        if not self.steps_ok:
            return  # a step failed: report that, not what settling would say about it
        self.settle_everything()
        jobs = self.h.store.jobs
        unfinished = {j: job.status.value for j, job in jobs.items()}
        unfinished = {
            j: s for j, s in unfinished.items() if JobStatus(s) not in TERMINAL_JOB_STATUSES
        }
        assert not unfinished, f"jobs never finished: {unfinished}"
        for job_id, job in jobs.items():
            posts = [p for made in self.platform.values() for p in made if p[0] == job_id]
            if job.status is JobStatus.SUCCEEDED:
                # Its own post, or the one an earlier job of the target made, which it found.
                found = self.platform.get(job.platform_key, [])
                assert len(posts) == 1 or (not posts and len(found) == 1), (
                    f"{job_id} SUCCEEDED with posts {posts}, {found} under its key"
                )
            elif posts:
                # A FAILED/CANCELLED job whose post may exist must be marked to look first.
                assert job.verify_first, f"{job_id} is {job.status} but its post exists: {posts}"
            if job.status is JobStatus.FAILED and job.verify_first:
                assert failed_on_a_look(self.h, job_id), f"{job_id} FAILED in doubt unlooked"

    def people_catch_up(self) -> None:
        """What operators do for work that waits for them: log in again, confirm, approve an
        edited post and schedule it again (which also refreshes its held jobs)."""
        for job in list(self.h.core.jobs.values()):
            if job.status is JobStatus.NEEDS_LOGIN:
                self.login_restored(job.target, job.device_id or DEVICES[0])
            elif job.status is JobStatus.AWAITING_CONFIRM:
                self.operator(op.ConfirmJob(job.id, "user:op"))
        for post_id, post in sorted(self.h.store.posts.items()):
            core = self.h.core
            held = [j for j in core.jobs_of(post_id) if j.status is JobStatus.QUEUED]
            if post.status is PostStatus.CANCELLED:
                # A job that was publishing when its post was cancelled, and then lost its
                # lease, waits again, held: a person cancels it too.
                for job in held:
                    self.operator(op.CancelJob(job.id, "user:op", "post cancelled"))
                continue
            if post.status is PostStatus.PENDING_APPROVAL:
                self.operator(op.ApprovePost(post_id, "", "user:approver"))
            if any(core._held(j) for j in held):
                self.reschedule(post_id, None)

    def settle_everything(self) -> None:
        self.settling = True
        for w in self.workers.values():
            self.connect(w, max(w.slots, 2))
        for _ in range(SETTLE_ROUNDS):
            store = self.h.store
            if all(j.status in TERMINAL_JOB_STATUSES for j in store.jobs.values()):
                return
            for w in self.workers.values():
                self.deliver(w, len(w.inbox))
                for run in [r for _, r in sorted(w.runs.items())]:
                    if run.key in w.runs:
                        self.step_worker(w, run)
                self.deliver(w, len(w.inbox))
            self.people_catch_up()
            busy = any(w.runs or w.inbox for w in self.workers.values())
            wake = self.h.core.next_wakeup()
            if busy or wake is None or wake <= self.now + 2.0:
                self.h.advance(2.0)
            else:
                self.h.advance(wake - self.now)  # nothing to do until then
            self.heartbeat_all()
            self.tick()
            self.settle_posts()


def failed_on_a_look(h: Harness, job_id: str) -> bool:
    """A job in doubt that FAILED did so on an attempt that looked: its result came back, or it
    asked for a commit permit (one looks first). A lease lost before that tells nothing."""
    audits = [a for a in h.store.audits if a.subject_id == job_id]
    last = next(a for a in reversed(audits) if a.details.get("to") == JobStatus.FAILED.value)
    if last.action != "JOB_STUCK_RECOVERY":
        return True
    asks = ("JOB_COMMIT_GRANTED", "JOB_COMMIT_DENIED")
    return any(a.action in asks and a.details["epoch"] == last.details["epoch"] for a in audits)


TestLeaseProtocol = LeaseProtocol.TestCase
TestLeaseProtocol.settings = settings(
    max_examples=700,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    # No explain phase: its tracer makes the long final settling crawl.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)


def test_the_model_replays_one_known_path_to_a_single_post() -> None:
    """A fixed walk through the machine (the properties must not be vacuous): a permit, a post,
    a crash before reporting, recovery after the deadline, a verifying rerun that finds it."""
    m = LeaseProtocol()
    m.initial_posts([], [1, 1, 1])
    m.add({TARGETS[0]}, 3)
    m.deliver_all()
    (run,) = m.workers["D0"].runs.values()
    m.ack("D0", 0)
    m.ask_commit("D0", 0)
    m.deliver_all()
    assert run.granted
    m.publish_on_platform("D0", 0)
    m.crash("D0")
    m.time_jumps_past_the_ttl(TTL + 2)
    m.heartbeat_all()
    m.tick()
    m.deliver_all()
    ((holder, rerun),) = [(w.device, r) for w in m.workers.values() for r in w.runs.values()]
    assert holder != "D0" and rerun.verify_first and rerun.epoch == 2
    m.verify_on_platform(holder, 0)
    assert rerun.found
    m.report_success(holder, 0)
    m.deliver_all()
    (job,) = m.h.store.jobs.values()
    assert job.status is JobStatus.SUCCEEDED
    assert job.result_post_id == f"post-{job.id}"
    assert m.platform == {job.platform_key: [(job.id, "D0", 1)]}
    m.one_live_lease_per_job_and_memory_equals_the_store()
    m.no_job_lost()
    m.never_two_posts_and_never_two_publishers()
    m.teardown()


def test_the_model_replays_a_late_success_after_the_rerun_met_a_login_wall() -> None:
    """A's post lands but its answer does not; the job is rerun on D1, which meets a login wall;
    then A comes back and reports the post it made. The job must end SUCCEEDED, posted once."""
    m = LeaseProtocol()
    m.initial_posts([], [1, 1, 1])
    m.add({TARGETS[0]}, 3)
    m.worker_progresses("D0", 0, 1)  # ack + commit request
    m.deliver_some("D0", 8)  # the grant
    m.worker_publishes_then_vanishes("D0", 0, False)  # posted; the stream drops; D0 lives
    m.time_jumps_past_the_ttl(TTL + 2)
    m.open_session("D1", 1)
    m.tick()  # D0's lease is over: the job is rerun on D1, verifying first
    m.deliver_some("D1", 8)
    (rerun,) = m.workers["D1"].runs.values()
    assert rerun.verify_first
    m.report_failure("D1", 0, "auth", None)
    (job_id,) = m.h.store.jobs
    assert m.h.store.jobs[job_id].status is JobStatus.NEEDS_LOGIN
    m.open_session("D0", 1)
    m.worker_progresses("D0", 0, 2)  # reads its Welcome, reports the post it made
    assert m.h.store.jobs[job_id].status is JobStatus.SUCCEEDED
    assert m.platform == {m.h.store.jobs[job_id].platform_key: [(job_id, "D0", 1)]}
    m.one_live_lease_per_job_and_memory_equals_the_store()
    m.no_job_lost()
    m.never_two_posts_and_never_two_publishers()
    m.teardown()
