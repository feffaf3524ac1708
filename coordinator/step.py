"""The coordinator's one entry point for what workers and the timer tell it:
`handle(state, command, now) -> Effects`.

A table maps each command type (coordinator/leasing/commands.py) to one small handler over the
lease core; nothing here does I/O or reads the clock. The actor (coordinator/actor.py) is the
only caller: it commits the effects' writes in one transaction, then sends their messages.
Read top to bottom: the state, the entry point, one handler per command, then the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coordinator.access import devices
from coordinator.access.registry import Credentials
from coordinator.leasing import commands as c
from coordinator.leasing.core import LeaseCore
from coordinator.leasing.effects import Effects


@dataclass(slots=True)
class CoordinatorState:
    """What the commands decide over. The actor's task is its one writer: the core owns jobs,
    posts, leases, sessions, devices and gates (with their quotas); credentials own operator
    tokens and device enrollments."""

    core: LeaseCore
    credentials: Credentials


def handle(state: CoordinatorState, command: c.Command, now: float) -> Effects:
    """Decide one command: mutate `state`, return what to write and send (in that order)."""
    return _HANDLERS[type(command)](state, command, now)


def _open(state: CoordinatorState, cmd: c.OpenStream, now: float) -> Effects:
    # The identity the Hello proved may have been revoked while it waited in the mailbox.
    if not devices.still_valid(state.credentials, cmd.enrollment):
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


def _ack(state: CoordinatorState, cmd: c.Ack, now: float) -> Effects:
    return state.core.ack(cmd.session_id, cmd.job_id, cmd.epoch, now)


def _log(state: CoordinatorState, cmd: c.Log, now: float) -> Effects:
    return state.core.log(cmd.session_id, cmd.job_id, cmd.epoch, cmd.entry, now)


def _screenshot(state: CoordinatorState, cmd: c.Screenshot, now: float) -> Effects:
    core = state.core
    return core.screenshot(cmd.session_id, cmd.job_id, cmd.epoch, cmd.upload_id, cmd.record, now)


def _commit_request(state: CoordinatorState, cmd: c.CommitRequest, now: float) -> Effects:
    return state.core.commit_request(cmd.session_id, cmd.job_id, cmd.epoch, now)


def _awaiting_confirm(state: CoordinatorState, cmd: c.AwaitingConfirm, now: float) -> Effects:
    return state.core.awaiting_confirm(cmd.session_id, cmd.job_id, cmd.epoch, now)


def _result(state: CoordinatorState, cmd: c.Result, now: float) -> Effects:
    return state.core.result(cmd.session_id, cmd.report, now)


def _goodbye(state: CoordinatorState, cmd: c.Goodbye, now: float) -> Effects:
    return state.core.goodbye(cmd.session_id, now)


def _stream_lost(state: CoordinatorState, cmd: c.StreamLost, now: float) -> Effects:
    return state.core.session_lost(cmd.session_id, now, reason=cmd.reason)


def _tick(state: CoordinatorState, cmd: c.Tick, now: float) -> Effects:
    return state.core.tick(now)


_HANDLERS: dict[type[Any], Callable[[CoordinatorState, Any, float], Effects]] = {
    c.OpenStream: _open,
    c.Heartbeat: _heartbeat,
    c.Ack: _ack,
    c.Log: _log,
    c.Screenshot: _screenshot,
    c.CommitRequest: _commit_request,
    c.AwaitingConfirm: _awaiting_confirm,
    c.Result: _result,
    c.Goodbye: _goodbye,
    c.StreamLost: _stream_lost,
    c.Tick: _tick,
}
