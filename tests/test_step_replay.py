"""The coordinator's decisions are a pure function of (state, command, time): a recorded log of
command values, fed twice to step.handle from the same start, gives the same state, the same
writes and the same messages, and leaves the recorded commands as they were. This is what makes a
command log worth keeping (replaying an incident) and lets property tests generate commands."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from lease_harness import T0, Harness, make_post, wire

from coordinator.access.registry import Credentials
from coordinator.domain import ErrorClass, StepLogEntry, Target, WorkerKind
from coordinator.leasing import commands as c
from coordinator.leasing.core import LeaseConfig
from coordinator.step import CoordinatorState, handle

A = Target("sandbox", "a")
B = Target("sandbox", "b")
CAPS = (Target("sandbox", "*"),)
CONFIG = LeaseConfig(heartbeat_interval_s=5.0, lease_ttl_s=15.0, claim_timeout_s=40.0)
Log = list[tuple[float, c.Command]]


def hello(sid: str, device: str, held: tuple[tuple[str, int], ...] = ()) -> c.OpenStream:
    return c.OpenStream(sid, device, WorkerKind.API, CAPS, 2, held, "t")


def report(job_id: str, epoch: int, *, success: bool) -> c.JobReport:
    if success:
        return c.JobReport(job_id, epoch, True, platform_post_id="x1", url="https://x/1")
    return c.JobReport(job_id, epoch, False, error_class=ErrorClass.TRANSIENT, error_message="500")


# One day of a worker's life: leases, a permit, a success, a failure and its retry, a crash
# after a permit, a reconnect that resumes, heartbeat silence, the timer.
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
]


def replay(log: Log) -> tuple[dict[str, Any], list[Any]]:
    """Run `log` from a fresh start; what came out of it, and what it left behind."""
    h = Harness(config=CONFIG)
    h.add(*make_post("p1", [A, B], T0))
    h.add(*make_post("p2", [A], T0))
    state = CoordinatorState(h.core, Credentials())
    outputs: list[Any] = []
    for at, command in log:
        h.now = at
        try:
            fx = h.run(handle(state, command, at))
        except Exception as exc:  # the actor drops such a command; it must drop it both times
            outputs.append(repr(exc))
            continue
        outputs.append((wire(fx), fx.batch.audits, fx.batch.runs, fx.close_sessions))
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
    assert any(isinstance(o, tuple) and o[0] for o in outputs)


JOBS = st.sampled_from(["p1-j0", "p1-j1", "p2-j0", "nope"])
SIDS = st.sampled_from(["s1", "s2", "s3"])
EPOCHS = st.integers(0, 3)
COMMANDS = st.one_of(
    st.builds(hello, SIDS, st.sampled_from(["d1", "d2"])),
    st.builds(c.Heartbeat, SIDS, st.integers(0, 9)),
    st.builds(c.Ack, SIDS, JOBS, EPOCHS),
    st.builds(c.CommitRequest, SIDS, JOBS, EPOCHS),
    st.builds(c.AwaitingConfirm, SIDS, JOBS, EPOCHS),
    st.builds(c.Result, SIDS, st.builds(report, JOBS, EPOCHS, success=st.booleans())),
    st.builds(c.StreamLost, SIDS, st.just("EOF")),
    st.builds(c.Goodbye, SIDS),
    st.just(c.Tick()),
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
