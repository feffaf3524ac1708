"""The coordinator's decisions are a pure function of (state, command, time): a recorded log of
command values (workers', the timer's and operators'), fed twice through the actor's path (the
load phase, then step.handle) from the same start, gives the same state, the same writes and the
same messages, and leaves the recorded commands as they were. This is what makes a
command log worth keeping (replaying an incident) and lets property tests generate commands."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from lease_harness import T0, Harness, make_post, wire

from coordinator import operator_commands as op
from coordinator.domain import ErrorClass, LoginState, StepLogEntry, Target, WorkerKind
from coordinator.leasing import commands as c
from coordinator.leasing.core import LeaseConfig

A = Target("sandbox", "a")
B = Target("sandbox", "b")
CAPS = (Target("sandbox", "*"),)
CONFIG = LeaseConfig(heartbeat_interval_s=5.0, lease_ttl_s=15.0, claim_timeout_s=40.0)
Log = list[tuple[float, c.Command | op.OperatorCommand]]


def hello(sid: str, device: str, held: tuple[tuple[str, int], ...] = ()) -> c.OpenStream:
    return c.OpenStream(sid, device, WorkerKind.API, CAPS, 2, held, "t")


def report(job_id: str, epoch: int, *, success: bool) -> c.JobReport:
    if success:
        return c.JobReport(job_id, epoch, True, platform_post_id="x1", url="https://x/1")
    return c.JobReport(job_id, epoch, False, error_class=ErrorClass.TRANSIENT, error_message="500")


# One day of a worker's life: leases, a permit, a success, a failure and its retry, a crash
# after a permit, a reconnect that resumes, heartbeat silence, the timer; and its operators' day:
# an edit, its approval and a reschedule, a retry, a cancelled job, a login check, a post resolved
# by hand, a new post created, submitted, approved, scheduled and then cancelled.
RECORDED: Log = [
    (T0, hello("s1", "d1")),
    (T0 + 0.1, c.Ack("s1", "p1-j0", 1)),
    (T0 + 0.2, c.Log("s1", "p1-j0", 1, StepLogEntry("post", "INFO", "opening", 0.0))),
    (T0 + 0.3, c.CommitRequest("s1", "p1-j0", 1)),
    (T0 + 0.4, c.Result("s1", report("p1-j0", 1, success=True))),
    (T0 + 0.5, c.Ack("s1", "p1-j1", 1)),
    (T0 + 0.6, c.Result("s1", report("p1-j1", 1, success=False))),
    (T0 + 2.0, c.Heartbeat("s1", 1, (("p2-j0", 1),))),
    (T0 + 3.0, c.Tick()),
    (T0 + 3.1, c.CommitRequest("s1", "p2-j0", 1)),
    (T0 + 3.2, c.StreamLost("s1", "EOF")),
    (T0 + 4.0, hello("s2", "d1", (("p2-j0", 1),))),
    (T0 + 4.1, c.Result("s2", report("p2-j0", 1, success=True))),
    (T0 + 9.0, c.Tick()),
    (T0 + 40.0, c.Tick()),
    (T0 + 41.0, c.Goodbye("s2")),
    (T0 + 42.0, op.RetryJob("p1-j1", "user:op", False)),
    (T0 + 43.0, op.LoginChecked("d1", A, LoginState.LOGGED_IN, "ok", "user:op")),
    (T0 + 44.0, op.ResolveJob("p1-j1", "https://x/by-hand", "h1", "user:op", "done by hand")),
    (T0 + 45.0, op.CreatePost("p3", "hi", (), (A, B), None, 3, False, "user:author")),
    (T0 + 46.0, op.SubmitPost("p3", "user:author")),
    (T0 + 47.0, op.ApprovePost("p3", "", "user:approver")),
    (T0 + 48.0, op.SchedulePost("p3", T0 + 100.0, "p3-s1-", "user:op")),
    (T0 + 49.0, op.UpdatePost("p3", "new text", None, None, None, "user:author")),
    (T0 + 50.0, op.ApprovePost("p3", "", "user:approver")),
    (T0 + 51.0, op.SchedulePost("p3", T0 + 200.0, "p3-s2-", "user:op")),
    (T0 + 52.0, op.CancelJob("p3-s2-1", "user:op", "not this one")),
    (T0 + 53.0, op.ReopenGate(A, "user:op")),
    (T0 + 54.0, op.CancelPost("p3", "changed my mind", "user:op")),
    (T0 + 55.0, c.Tick()),
]


def replay(log: Log) -> tuple[dict[str, Any], list[Any]]:
    """Run `log` from a fresh start; what came out of it, and what it left behind."""
    h = Harness(config=CONFIG)
    h.add(*make_post("p1", [A, B], T0))
    h.add(*make_post("p2", [A], T0))
    outputs: list[Any] = []
    for at, command in log:
        h.now = at
        try:
            fx = h.command(command)
        except Exception as exc:  # the actor drops such a command; it must drop it both times
            outputs.append(repr(exc))
            continue
        outputs.append(
            (wire(fx), fx.batch.audits, fx.batch.runs, fx.close_sessions, repr(fx.reply))
        )
    core = h.core
    final = {
        "jobs": {k: dataclasses.replace(v) for k, v in core.jobs.items()},
        "leases": {k: (v.epoch, v.session_id, v.deadline) for k, v in core.leases.items()},
        "sessions": {
            k: (s.device_id, sorted(s.jobs), s.draining) for k, s in core.sessions.items()
        },
        "stored": (dict(h.store.jobs), list(h.store.audits)),
    }
    return final, outputs


def test_a_recorded_log_replays_to_the_same_state_writes_and_messages() -> None:
    before = list(RECORDED)
    first, second = replay(RECORDED), replay(RECORDED)
    assert first == second
    assert before == RECORDED  # the commands are values: nothing wrote to them
    final, outputs = first
    assert final["jobs"]["p1-j0"].status.value == "SUCCEEDED"  # not vacuous: the log did work
    assert final["jobs"]["p2-j0"].status.value == "SUCCEEDED"
    stored_jobs = final["stored"][0]
    assert stored_jobs["p1-j1"].status.value == "SUCCEEDED"  # resolved by hand
    assert stored_jobs["p3-s1-0"].last_error == "superseded by a reschedule"
    assert stored_jobs["p3-s2-0"].status.value == "CANCELLED"  # its post was cancelled
    assert final["stored"][1][-1].action == "JOB_CANCELLED"
    assert any(isinstance(o, tuple) and o[0] for o in outputs)


JOBS = st.sampled_from(["p1-j0", "p1-j1", "p2-j0", "nope"])
SIDS = st.sampled_from(["s1", "s2", "s3"])
EPOCHS = st.integers(0, 3)
POSTS = st.sampled_from(["p1", "p2", "nope"])
COMMANDS = st.one_of(
    st.builds(hello, SIDS, st.sampled_from(["d1", "d2"])),
    st.builds(c.Heartbeat, SIDS, st.integers(0, 9)),
    st.builds(c.Ack, SIDS, JOBS, EPOCHS),
    st.builds(c.CommitRequest, SIDS, JOBS, EPOCHS),
    st.builds(c.AwaitingConfirm, SIDS, JOBS, EPOCHS),
    st.builds(c.Result, SIDS, st.builds(report, JOBS, EPOCHS, success=st.booleans())),
    st.builds(c.StreamLost, SIDS, st.just("EOF"), detached=st.booleans()),
    st.builds(c.Goodbye, SIDS),
    st.just(c.Tick()),
    st.builds(op.CancelJob, JOBS, st.just("user:op"), st.just("no")),
    st.builds(op.RetryJob, JOBS, st.just("user:op"), st.booleans()),
    st.builds(op.ConfirmJob, JOBS, st.just("user:op")),
    st.builds(
        op.ResolveJob, JOBS, st.just("https://x/h"), st.just("h"), st.just("user:op"), st.just("")
    ),
    st.builds(
        op.UpdatePost,
        POSTS,
        st.sampled_from(["a", "b"]),
        st.none(),
        st.none(),
        st.none(),
        st.just("user:a"),
    ),
    st.builds(op.ApprovePost, POSTS, st.just(""), st.just("user:b")),
    st.builds(
        op.SchedulePost,
        POSTS,
        st.none() | st.just(T0 + 5.0),
        st.sampled_from(["x-", "y-"]),
        st.just("user:op"),
    ),
    st.builds(op.CancelPost, POSTS, st.just("no"), st.just("user:op")),
    st.builds(
        op.LoginChecked,
        st.sampled_from(["d1", "d2"]),
        st.sampled_from([A, B]),
        st.sampled_from(list(LoginState)),
        st.just(""),
        st.just("user:op"),
    ),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 30.0), COMMANDS), max_size=40))
def test_any_command_log_replays_the_same(steps: list[tuple[float, c.Command]]) -> None:
    log: Log = []
    at = T0
    for gap, command in steps:
        at += gap
        log.append((at, command))
    assert replay(log) == replay(log)
