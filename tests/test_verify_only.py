"""An attempt that may have published is never followed by FAILED without a look.

When an attempt fails ambiguously after its commit permit (a 5xx or timeout from the very call
that creates the post) and the job's attempts are used up, the coordinator sends one more attempt
that may only *look* for the post (verify_only). Found -> SUCCEEDED; verified absent -> FAILED;
the lookup itself failing -> another look, up to max_attempts more. Such a lease is never granted a
commit permit, and the worker never posts on one.
"""

from __future__ import annotations

import pytest
from lease_harness import Harness, make_post, one_assign, wire

from coordinator.domain import JobStatus, Target
from postroom.v1 import types_pb2
from postroom.v1 import worker_gateway_pb2 as wg
from worker.adapters.base import JobSpec, Prepared, Published
from worker.errors import NotFoundOnVerify
from worker.lifecycle import publish

TRANSIENT = types_pb2.ERROR_CLASS_TRANSIENT


def exhaust_with_ambiguous_failures(h: Harness, max_attempts: int = 2) -> tuple[str, wg.Assign]:
    """Every attempt commits and then the platform answers 500; returns the next Assign."""
    post, jobs = make_post("p1", [Target("sandbox", "acme")], h.now, max_attempts=max_attempts)
    h.add(post, jobs)
    fx = h.open("s1")
    assign = one_assign(fx)
    for _ in range(max_attempts):
        assert not assign.verify_only
        h.ack("s1", assign.job_id, assign.lease_epoch)
        grant = h.commit("s1", assign.job_id, assign.lease_epoch)
        assert wire(grant)[0][1].WhichOneof("msg") == "commit_grant"
        h.failure("s1", assign.job_id, assign.lease_epoch, TRANSIENT, message="HTTP 500")
        h.advance(3600)
        h.heartbeat("s1")  # the worker stayed connected meanwhile
        assign = one_assign(h.tick())
    return assign.job_id, assign


def test_attempts_used_up_after_an_ambiguous_failure_bring_a_verify_only_attempt() -> None:
    h = Harness()
    job_id, assign = exhaust_with_ambiguous_failures(h)
    assert assign.verify_only and assign.verify_first
    assert h.job(job_id).status is JobStatus.CLAIMED  # not FAILED: the post may exist


def test_a_verify_only_lease_is_never_granted_a_commit_permit() -> None:
    h = Harness()
    job_id, assign = exhaust_with_ambiguous_failures(h)
    fx = h.commit("s1", job_id, assign.lease_epoch)
    [(_, msg)] = wire(fx)
    assert msg.WhichOneof("msg") == "commit_deny"
    assert "only look" in msg.commit_deny.reason


def test_found_by_the_verify_only_attempt_means_succeeded() -> None:
    h = Harness()
    job_id, assign = exhaust_with_ambiguous_failures(h)
    h.success("s1", job_id, assign.lease_epoch, found_existing=True)
    assert h.job(job_id).status is JobStatus.SUCCEEDED


def test_verified_absent_means_failed_at_once() -> None:
    h = Harness()
    job_id, assign = exhaust_with_ambiguous_failures(h)
    h.result(
        "s1",
        wg.JobResult(
            job_id=job_id,
            lease_epoch=assign.lease_epoch,
            success=False,
            error_class=TRANSIENT,
            error_message="no earlier post found",
            verified_absent=True,
        ),
    )
    job = h.job(job_id)
    assert job.status is JobStatus.FAILED
    assert not job.verify_first  # nothing left in doubt


def test_a_failed_lookup_looks_again_but_not_forever() -> None:
    h = Harness()
    job_id, assign = exhaust_with_ambiguous_failures(h, max_attempts=2)
    looks = 0
    while h.job(job_id).status is not JobStatus.FAILED:
        assert assign.verify_only
        looks += 1
        h.failure("s1", job_id, assign.lease_epoch, TRANSIENT, message="lookup: HTTP 503")
        h.advance(3600)
        h.heartbeat("s1")
        fx = h.tick()
        if h.job(job_id).status is JobStatus.FAILED:
            break
        assign = one_assign(fx)
    assert looks == 2  # max_attempts more looks, then it gives up


class _Adapter:
    """A platform where nothing exists; records whether anything was posted."""

    def __init__(self) -> None:
        self.committed = False

    async def prepare(self, job: JobSpec) -> Prepared:
        return Prepared()

    async def screenshot(self, label: str) -> bytes | None:
        return None

    async def commit(self, job: JobSpec, prepared: Prepared) -> Published:
        self.committed = True
        return Published("x", "")

    async def verify(self, job: JobSpec) -> Published | None:
        return None

    async def check_login(self, account: str) -> bool:
        return True

    async def close(self) -> None:
        return None


@pytest.mark.anyio
async def test_the_worker_never_posts_on_a_verify_only_attempt() -> None:
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from worker.lifecycle import StepNote

    class Hooks:
        @asynccontextmanager
        async def step(self, name: str) -> AsyncIterator[StepNote]:
            yield StepNote()

        async def screenshot(self, label: str) -> None:
            return None

        async def confirmation(self) -> None:
            return None

        async def commit_permit(self) -> None:
            raise AssertionError("a verify-only attempt must not ask for a commit permit")

        def begin_commit(self) -> None:
            raise AssertionError("a verify-only attempt must not commit")

        def commit_refused(self) -> str | None:
            raise AssertionError("a verify-only attempt must not commit")

        async def commit_bound_passed(self) -> None:
            raise AssertionError("a verify-only attempt must not commit")

        def commit_bound_scope(self) -> None:
            raise AssertionError("a verify-only attempt must not commit")

    adapter = _Adapter()
    spec = JobSpec(
        job_id="j",
        platform="sandbox",
        account="acme",
        text="t",
        platform_key="k",
        verify_first=True,
        verify_only=True,
    )
    with pytest.raises(NotFoundOnVerify):
        await publish(spec, adapter, Hooks())
    assert not adapter.committed
