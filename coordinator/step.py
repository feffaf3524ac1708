"""The coordinator's one entry point for everything that changes its state:
`handle(state, command, now) -> Effects`.

A table maps each command type to one small handler over the lease core: what workers and the
timer say (coordinator/leasing/commands.py) and what operators ask (coordinator/
operator_commands.py: posts in coordinator/posts.py, tokens and enrollments in access/changes.py,
jobs, logins and gates here). Nothing here does I/O or reads the clock. The actor
(coordinator/actor.py) is the only caller: it loads what an operator command needs from the
store first (coordinator/loading.py), commits the effects' writes in one transaction, then sends
their messages and answers the operator with `Effects.reply`.
Read top to bottom: the state, the entry point, one handler per command, then the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coordinator import operator_commands as op
from coordinator import posts, posttasks
from coordinator.access import changes
from coordinator.access.approval import applies
from coordinator.access.registry import Credentials
from coordinator.errors import FailedPrecondition, NotFound, PermissionDenied
from coordinator.leasing import commands as c
from coordinator.leasing.core import LeaseCore
from coordinator.leasing.effects import Effects


@dataclass(slots=True)
class CoordinatorState:
    """What the commands decide over; `handle`, run by the actor's task, is its one writer: the
    core holds jobs, posts, leases, sessions, devices and gates (with their quotas); credentials
    hold operator tokens and device enrollments."""

    core: LeaseCore
    credentials: Credentials


def handle(state: CoordinatorState, command: c.Command | op.OperatorCommand, now: float) -> Effects:
    """Decide one command: mutate `state`, return what to write and send (in that order)."""
    return _HANDLERS[type(command)](state, command, now)


def _open(state: CoordinatorState, cmd: c.OpenStream, now: float) -> Effects:
    # The identity the Hello proved may have been revoked while it waited in the mailbox.
    if not state.credentials.still_valid(cmd.enrollment):
        fx = Effects()
        fx.close_sessions.append(cmd.session_id)
        return fx
    return state.core.open_session(
        cmd.session_id,
        now,
        device_id=cmd.device_id,
        kind=cmd.kind,
        capabilities=cmd.capabilities,
        slots=cmd.slots,
        held=cmd.held,
        version=cmd.version,
        per_account_slots=cmd.per_account_slots,
    )


def _heartbeat(state: CoordinatorState, cmd: c.Heartbeat, now: float) -> Effects:
    return state.core.heartbeat(cmd.session_id, cmd.seq, now, active=cmd.active)


def _heard(state: CoordinatorState, cmd: c.Heard, now: float) -> Effects:
    return state.core.heard(cmd.beats)


def _ack(state: CoordinatorState, cmd: c.Ack, now: float) -> Effects:
    return state.core.ack(cmd.session_id, cmd.job_id, cmd.epoch, now)


def _log(state: CoordinatorState, cmd: c.Log, now: float) -> Effects:
    return state.core.log(cmd.session_id, cmd.job_id, cmd.epoch, cmd.entry, now)


def _screenshot(state: CoordinatorState, cmd: c.Screenshot, now: float) -> Effects:
    core = state.core
    return core.screenshot(cmd.session_id, cmd.job_id, cmd.epoch, cmd.upload_id, cmd.record, now)


def _commit_request(state: CoordinatorState, cmd: c.CommitRequest, now: float) -> Effects:
    return state.core.commit_request(cmd.session_id, cmd.job_id, cmd.epoch, now, cmd.bound_s)


def _awaiting_confirm(state: CoordinatorState, cmd: c.AwaitingConfirm, now: float) -> Effects:
    return state.core.awaiting_confirm(cmd.session_id, cmd.job_id, cmd.epoch, now)


def _result(state: CoordinatorState, cmd: c.Result, now: float) -> Effects:
    return state.core.result(cmd.session_id, cmd.report, now)


def _goodbye(state: CoordinatorState, cmd: c.Goodbye, now: float) -> Effects:
    return state.core.goodbye(cmd.session_id, now)


def _stream_lost(state: CoordinatorState, cmd: c.StreamLost, now: float) -> Effects:
    return state.core.session_lost(cmd.session_id, now, reason=cmd.reason, detached=cmd.detached)


def _tick(state: CoordinatorState, cmd: c.Tick, now: float) -> Effects:
    return state.core.tick(now)


# ---- operators: new posts, jobs, logins, gates ----------------------------------------------


def _may_create_approved(state: CoordinatorState, cmd: op.CreatePost) -> None:
    """A post approved by its own creator: only where the four-eyes rule lets the caller
    approve what it wrote (decided here, with the credentials as they are now)."""
    if cmd.approve and applies(state.credentials, cmd.principal):
        raise PermissionDenied(
            f"{cmd.actor} cannot approve a post it creates (four eyes): create it without "
            "approve, and let someone else approve it (a deployment may allow this with "
            "`postroom coordinator --allow-self-approval`)"
        )


def _create_post(state: CoordinatorState, cmd: op.CreatePost, now: float) -> Effects:
    _may_create_approved(state, cmd)
    return posts.create(state.core, cmd, now)


def _create_posts(state: CoordinatorState, cmd: op.CreatePosts, now: float) -> Effects:
    for item in cmd.items:  # all checked before any changes: all of them, or none
        _may_create_approved(state, item)
    return posts.create_many(state.core, cmd, now)


def _job(state: CoordinatorState, cmd: op.JobCommand) -> None:
    """Make sure the core holds the job: a finished post's comes back with the post and all its
    jobs (what the load phase brought). A job of a shard another coordinator owns is refused
    (NotOwner) before anything changes: its writes would be outside this one's fence."""
    if cmd.job_id in state.core.jobs:
        return  # the core holds only jobs of shards it owns
    loaded = cmd.loaded
    job = next((j for j in loaded.jobs if j.id == cmd.job_id), None) if loaded else None
    if loaded is None or job is None:
        raise NotFound(f"job {cmd.job_id} does not exist")
    state.core.scope.check_owner(job.target)
    state.core.adopt(loaded.post, loaded.jobs)


def _cancel_job(state: CoordinatorState, cmd: op.CancelJob, now: float) -> Effects:
    _job(state, cmd)
    return state.core.cancel(cmd.job_id, cmd.actor, cmd.reason, now)


def _retry_job(state: CoordinatorState, cmd: op.RetryJob, now: float) -> Effects:
    _job(state, cmd)
    job = state.core.jobs[cmd.job_id]
    post = state.core.posts.get(job.post_id)
    if post is None or post.approved_hash != job.content_hash:
        raise FailedPrecondition(
            f"post {job.post_id} changed since this job was scheduled; approve and schedule the "
            "post again instead"
        )
    return state.core.retry_now(cmd.job_id, cmd.actor, cmd.force, now)


def _confirm_job(state: CoordinatorState, cmd: op.ConfirmJob, now: float) -> Effects:
    _job(state, cmd)
    return state.core.confirm(cmd.job_id, cmd.actor, now)


def _resolve_job(state: CoordinatorState, cmd: op.ResolveJob, now: float) -> Effects:
    _job(state, cmd)
    core = state.core
    return core.resolve(cmd.job_id, cmd.url, cmd.platform_post_id, cmd.actor, cmd.reason, now)


def _login_checked(state: CoordinatorState, cmd: op.LoginChecked, now: float) -> Effects:
    core = state.core
    fx, requeued = core.login_checked(
        cmd.device_id, cmd.target, cmd.state, cmd.message, cmd.actor, now
    )
    device = core.devices.get(cmd.device_id)
    copy = dataclasses.replace(device, logins=dict(device.logins)) if device else None
    fx.reply = (requeued, copy)
    return fx


def _reopen_gate(state: CoordinatorState, cmd: op.ReopenGate, now: float) -> Effects:
    fx = state.core.reopen_gate(cmd.target, cmd.actor, now)
    views = state.core.gates.views(now, extra=[cmd.target])
    (fx.reply,) = [v for v in views if v.target == cmd.target]
    return fx


def _apply_post_tasks(state: CoordinatorState, cmd: op.ApplyPostTasks, now: float) -> Effects:
    fx = Effects()
    for task, stored in zip(cmd.tasks, cmd.loaded, strict=True):
        post, jobs = (stored.post, stored.jobs) if stored is not None else (None, ())
        fx.extend(posttasks.apply(state.core, task, post, jobs, now))
    return fx


def _core(
    fn: Callable[[LeaseCore, Any, float], Effects],
) -> Callable[[CoordinatorState, Any, float], Effects]:
    return lambda state, cmd, now: fn(state.core, cmd, now)


def _access(
    fn: Callable[[Credentials, LeaseCore, Any, float], Effects],
) -> Callable[[CoordinatorState, Any, float], Effects]:
    return lambda state, cmd, now: fn(state.credentials, state.core, cmd, now)


_HANDLERS: dict[type[Any], Callable[[CoordinatorState, Any, float], Effects]] = {
    c.OpenStream: _open,
    c.Heartbeat: _heartbeat,
    c.Heard: _heard,
    c.Ack: _ack,
    c.Log: _log,
    c.Screenshot: _screenshot,
    c.CommitRequest: _commit_request,
    c.AwaitingConfirm: _awaiting_confirm,
    c.Result: _result,
    c.Goodbye: _goodbye,
    c.StreamLost: _stream_lost,
    c.Tick: _tick,
    op.CreatePost: _create_post,
    op.CreatePosts: _create_posts,
    op.UpdatePost: _core(posts.update),
    op.SubmitPost: _core(posts.submit),
    op.ApprovePost: _core(posts.approve),
    op.SchedulePost: _core(posts.schedule),
    op.CancelPost: _core(posts.cancel),
    op.DeletePost: _core(posts.delete),
    op.CancelJob: _cancel_job,
    op.RetryJob: _retry_job,
    op.ConfirmJob: _confirm_job,
    op.ResolveJob: _resolve_job,
    op.LoginChecked: _login_checked,
    op.ReopenGate: _reopen_gate,
    op.CreateToken: _access(changes.create_token),
    op.RevokeToken: _access(changes.revoke_token),
    op.EnrollDevice: _access(changes.enroll_device),
    op.RevokeDevice: _access(changes.revoke_device),
    op.ApplyPostTasks: _apply_post_tasks,
}
