"""The order of adapter calls for one job attempt, and nothing else: where each wait and check
of the lease protocol sits relative to the irreversible call. The runner supplies the waits and
checks through `JobHooks` (it owns the job's state and the stream); this module owns the order.

    [verify (verify_only: and stop there)] -> prepare -> [before_confirm screenshot ->
      confirmation] -> commit permit
      -> begin_commit (lease check) -> commit (each request fenced, aborted if the lease is
         lost: worker/fence.py)
      -> after_publish screenshot
    commit says Duplicate -> verify: found = success (found_existing), else the Duplicate stands

An adapter with steps of its own (a browser playbook's compose and submit steps) is given a
`StepSink` by the runtime (`SteppedAdapter.bind_steps`): each of its steps is then its own step
log line with its duration, inside the lifecycle step that called it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import anyio

from worker.adapters.base import AFTER_PUBLISH, BEFORE_CONFIRM, JobSpec, PlatformAdapter, Published
from worker.errors import Duplicate, NotFoundOnVerify, Transient
from worker.fence import commit_fence


class StepNote:
    """What a step says about itself in its closing log line."""

    def __init__(self) -> None:
        self.message = ""


class JobHooks(Protocol):
    def step(self, name: str) -> AbstractAsyncContextManager[StepNote]:
        """Span, duration metric and log lines around one step."""
        ...

    async def screenshot(self, label: str) -> None:
        """Take and send a proof screenshot; never raises."""
        ...

    async def confirmation(self) -> None:
        """Say AwaitingConfirm and wait for the operator's ConfirmJob."""
        ...

    async def commit_permit(self) -> None:
        """Send CommitRequest and wait for the grant; raises LeaseLost when denied."""
        ...

    def begin_commit(self) -> None:
        """Last check before the irreversible call (no await follows it before the call);
        raises LeaseLost when the lease is gone or too close to its deadline."""
        ...

    def commit_refused(self) -> str | None:
        """The same check, asked again just before each request of the commit leaves: why the
        lease (or the commit's bound) no longer allows it, or None."""
        ...

    async def commit_bound_passed(self) -> None:
        """Return once the bound the CommitRequest gave for the commit has passed."""
        ...

    def commit_bound_scope(self) -> anyio.CancelScope | None:
        """A cancel scope whose deadline is that bound, when the event loop can time it (the
        clock is the system's); None: the commit is timed by commit_bound_passed."""
        ...


class StepSink(Protocol):
    """What an adapter with steps of its own (a browser playbook) reports them through: each
    becomes its own step log line with its duration. The runtime binds it (`SteppedAdapter`)."""

    def step(self, name: str) -> AbstractAsyncContextManager[StepNote]: ...

    def commit_refused(self) -> str | None:
        """As `JobHooks.commit_refused`: asked just before the commit's request leaves."""
        ...

    def commit_bound_s(self) -> float:
        """The longest the irreversible step may take: shorter than the lease margin, so it
        ends before an unrenewed lease does."""
        ...


@runtime_checkable
class SteppedAdapter(Protocol):
    def bind_steps(self, sink: StepSink) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    published: Published
    found_existing: bool


async def publish(spec: JobSpec, adapter: PlatformAdapter, hooks: JobHooks) -> Outcome:
    """Run one attempt; raises the adapter's `AdapterError`, or `LeaseLost` to abandon."""
    if spec.verify_first:
        async with hooks.step("verify") as note:
            found = await adapter.verify(spec)
            note.message = (
                f"found {found.post_id} {found.url}: not posting again"
                if found
                else "no earlier post found"
            )
        if found is not None:
            return Outcome(found, found_existing=True)
        if spec.verify_only:
            # The coordinator's attempts are used up; posting now could post a second time.
            raise NotFoundOnVerify("verify-only attempt: no earlier post found; not publishing")
    async with hooks.step("prepare") as note:
        prepared = await adapter.prepare(spec)
        note.message = prepared.summary or "prepared"
    if spec.require_confirm:
        await hooks.screenshot(BEFORE_CONFIRM)
        async with hooks.step("await_confirm") as note:
            await hooks.confirmation()
            note.message = "confirmed by an operator"
    async with hooks.step("commit_permit") as note:
        await hooks.commit_permit()
        note.message = "commit permit granted"
    try:
        async with hooks.step("commit") as note:
            hooks.begin_commit()
            # The call runs to its end (bounded by the adapter's timeout) unless the lease is lost
            # first: then the job's scope aborts it and its connection closes with a reset, so a
            # request the platform has not acknowledged never lands later; one it has is in
            # doubt, and the next attempt looks first. And no request of it leaves once the lease
            # is lost (a slow connect): worker/fence.py. An operator's cancel does not abort it.
            with commit_fence(hooks.commit_refused):
                published = await _within_bound(adapter.commit(spec, prepared), hooks)
            note.message = f"published {published.post_id} {published.url}"
    except Duplicate as dup:
        async with hooks.step("verify") as note:
            found = await adapter.verify(spec)
            note.message = (
                f"the platform's duplicate is {found.post_id} {found.url}"
                if found
                else "the platform says duplicate, but no matching post was found"
            )
        if found is None:
            dup.failed_step = "commit"
            raise
        return Outcome(found, found_existing=True)
    await hooks.screenshot(AFTER_PUBLISH)
    return Outcome(published, found_existing=False)


async def _within_bound(commit: Awaitable[Published], hooks: JobHooks) -> Published:
    """The commit, aborted when its bound passes: the coordinator reruns the job from then on
    (looking first) if this worker is lost, so nothing of it may land later. Aborting closes its
    connections with a reset (worker/fence.py); what the platform acknowledged is in doubt."""
    published: Published | None = None
    failure: Exception | None = None
    bounded = hooks.commit_bound_scope()
    if bounded is not None:  # the event loop times it: no watcher task per commit
        with bounded:
            published = await commit
    else:
        bounded = anyio.CancelScope()

        async def watch() -> None:
            await hooks.commit_bound_passed()
            bounded.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            with bounded:
                try:
                    published = await commit
                except Exception as exc:  # raised as it is below, not inside a task group's group
                    failure = exc
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if published is None:
        raise Transient(
            "in doubt: the commit did not end within its bound and was aborted; the platform may "
            "have the post, so the next attempt looks first"
        )
    return published
