"""The worker side of the stream protocol as a pure state machine (no sockets, no clock, no
tasks): `on_message(state, msg, now) -> (state, commands)`. The I/O shell (worker/shell.py) reads
the stream, calls it, and carries the commands out against the `JobRunner`.

A session: Hello -> Welcome (heartbeat interval, lease TTL, the held jobs it resumed) -> Assign,
HeartbeatAck, CommitGrant/Deny, ConfirmJob, CancelJob, Drop, ResultAck, ScreenshotAck,
LoginCheck ... -> Goodbye from either side. Lease deadlines are kept conservative against clock
skew: a renewal counts from when *we sent* the heartbeat it answers, never later than TTL after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from postroom import job_messages
from postroom.v1 import types_pb2
from postroom.v1 import worker_gateway_pb2 as wg
from worker.config import (
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_LEASE_TTL_S,
    KINDS,
    WorkerConfig,
)
from worker.job_state import StreamLimits

# Unanswered heartbeats remembered for their send time; older ones only matter for deadlines.
_MAX_PENDING_HEARTBEATS = 32


class SessionPhase(Enum):
    AWAITING_WELCOME = "awaiting_welcome"
    ACTIVE = "active"


@dataclass(frozen=True, slots=True)
class SessionState:
    phase: SessionPhase = SessionPhase.AWAITING_WELCOME
    session_id: str = ""
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    limits: StreamLimits = field(default_factory=StreamLimits)
    next_seq: int = 1
    pending: tuple[tuple[int, float], ...] = ()  # (seq, sent at) of unanswered heartbeats
    started_at: float = 0.0  # when the stream opened (just before Hello was sent)
    last_heard: float = 0.0  # when the coordinator last sent anything
    leaving: str = ""  # set once either side said Goodbye: take no new jobs on this session
    peer_batches: bool = False  # the Welcome said the coordinator takes WorkerMessage.batch


# ---- commands for the shell --------------------------------------------------------------

# What the coordinator says about one job: its own values (postroom/job_messages.py), under the
# names the runner knows them by.
Confirm = job_messages.Confirm
Cancel = job_messages.Cancel
DropJob = job_messages.Drop
ResultAcked = job_messages.ResultAck
ScreenshotAcked = job_messages.ScreenshotAck


@dataclass(frozen=True, slots=True)
class Welcomed:
    resumed: tuple[wg.HeldJob, ...]
    # The coordinator re-leased the resumed jobs for a TTL after our Hello reached it, so they
    # hold at least until TTL after we sent it.
    deadline: float


@dataclass(frozen=True, slots=True)
class StartJob:
    assign: wg.Assign
    deadline: float


@dataclass(frozen=True, slots=True)
class Renew:
    deadline: float


@dataclass(frozen=True, slots=True)
class AnswerPermit:
    job_id: str
    epoch: int
    granted: bool
    reason: str = ""
    deadline: float = 0.0


@dataclass(frozen=True, slots=True)
class CheckLogin:
    request_id: str
    platform: str
    account: str


@dataclass(frozen=True, slots=True)
class CoordinatorLeaving:
    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str


@dataclass(frozen=True, slots=True)
class Violation:
    """The coordinator broke the protocol: end this stream and reconnect."""

    reason: str


# Commands about one job: carried out by JobRunner.apply.
JobCommand = (
    StartJob | Renew | AnswerPermit | Confirm | Cancel | DropJob | ResultAcked | ScreenshotAcked
)

Command = (
    Welcomed
    | StartJob
    | Renew
    | AnswerPermit
    | Confirm
    | Cancel
    | DropJob
    | ResultAcked
    | ScreenshotAcked
    | CheckLogin
    | CoordinatorLeaving
    | Ignored
    | Violation
)


# ---- messages we send ---------------------------------------------------------------------


def hello(config: WorkerConfig, held: Iterable[wg.HeldJob]) -> wg.WorkerMessage:
    capabilities = [
        types_pb2.Target(platform=c.platform, account=c.account) for c in config.capabilities
    ]
    return wg.WorkerMessage(
        hello=wg.Hello(
            device_id=config.device_id,
            token=config.token,
            kind=KINDS[config.kind],
            capabilities=capabilities,
            slots=config.concurrency,
            per_account_slots=config.per_account_slots,
            held_jobs=list(held),
            version=config.version,
            accepts_batches=True,
        )
    )


def heartbeat(
    state: SessionState, active: Iterable[wg.HeldJob], now: float
) -> tuple[SessionState, wg.WorkerMessage]:
    seq = state.next_seq
    pending = (*state.pending, (seq, now))[-_MAX_PENDING_HEARTBEATS:]
    msg = wg.WorkerMessage(heartbeat=wg.Heartbeat(seq=seq, active=list(active)))
    return replace(state, next_seq=seq + 1, pending=pending), msg


def goodbye(state: SessionState, reason: str) -> tuple[SessionState, wg.WorkerMessage]:
    return replace(state, leaving=reason or "goodbye"), wg.WorkerMessage(
        goodbye=wg.Goodbye(reason=reason)
    )


def is_silent(state: SessionState, now: float) -> bool:
    """Nothing heard for a whole lease TTL: the coordinator (or the path to it) is gone."""
    return state.phase is SessionPhase.ACTIVE and now - state.last_heard > state.lease_ttl_s


def batch(messages: Sequence[wg.WorkerMessage]) -> wg.WorkerMessage:
    """One wire message carrying `messages` in order (a lone one goes as itself)."""
    if len(messages) == 1:
        return messages[0]
    return wg.WorkerMessage(batch=wg.WorkerBatch(messages=messages))


# ---- messages we receive ------------------------------------------------------------------


def unbatch(msg: wg.CoordinatorMessage) -> Sequence[wg.CoordinatorMessage]:
    """The messages one wire message carries, in order; a batch inside a batch is handed on as
    it is, and `on_message` calls it a violation."""
    if msg.WhichOneof("msg") == "batch":
        return msg.batch.messages
    return (msg,)


def on_message(
    state: SessionState, msg: wg.CoordinatorMessage, now: float
) -> tuple[SessionState, list[Command]]:
    kind = msg.WhichOneof("msg")
    state = replace(state, last_heard=now)
    if state.phase is SessionPhase.AWAITING_WELCOME:
        if kind != "welcome":
            return state, [Violation(f"expected Welcome, got {kind}")]
        return _welcome(state, msg.welcome)
    match kind:
        case "welcome":
            return state, [Violation("a second Welcome")]
        case "batch":
            return state, [Violation("a batch inside a batch")]
        case "assign":
            return _assign(state, msg.assign, now)
        case "heartbeat_ack":
            return _heartbeat_ack(state, msg.heartbeat_ack)
        case "commit_grant":
            g = msg.commit_grant
            deadline = g.lease_deadline_unix_ms / 1000.0
            return state, [AnswerPermit(g.job_id, g.lease_epoch, True, "", deadline)]
        case "commit_deny":
            d = msg.commit_deny
            return state, [AnswerPermit(d.job_id, d.lease_epoch, False, d.reason)]
        case "confirm":
            return state, [Confirm(msg.confirm.job_id, msg.confirm.lease_epoch)]
        case "cancel":
            c = msg.cancel
            return state, [Cancel(c.job_id, c.lease_epoch, c.reason)]
        case "drop":
            return state, [DropJob(msg.drop.job_id, msg.drop.lease_epoch, msg.drop.reason)]
        case "result_ack":
            r = msg.result_ack
            return state, [ResultAcked(r.job_id, r.lease_epoch, r.accepted, r.reason)]
        case "screenshot_ack":
            s = msg.screenshot_ack
            return state, [ScreenshotAcked(s.job_id, s.upload_id, s.ok, s.error)]
        case "login_check":
            lc = msg.login_check
            return state, [CheckLogin(lc.request_id, lc.target.platform, lc.target.account)]
        case "goodbye":
            reason = msg.goodbye.reason or "coordinator leaving"
            return replace(state, leaving=state.leaving or reason), [CoordinatorLeaving(reason)]
    return state, [Ignored(f"unknown message {kind!r}")]


def _welcome(state: SessionState, w: wg.Welcome) -> tuple[SessionState, list[Command]]:
    state = replace(
        state,
        phase=SessionPhase.ACTIVE,
        session_id=w.session_id,
        heartbeat_interval_s=(w.heartbeat_interval_ms / 1000.0) or state.heartbeat_interval_s,
        lease_ttl_s=(w.lease_ttl_ms / 1000.0) or state.lease_ttl_s,
        limits=StreamLimits(max_chunk_bytes=w.max_chunk_bytes, max_asset_bytes=w.max_asset_bytes),
        peer_batches=w.accepts_batches,
    )
    return state, [Welcomed(tuple(w.resumed), state.started_at + state.lease_ttl_s)]


def _assign(state: SessionState, a: wg.Assign, now: float) -> tuple[SessionState, list[Command]]:
    if state.leaving:
        # Never acknowledged: the coordinator requeues it when the session closes.
        return state, [Ignored(f"Assign {a.job_id} after goodbye ({state.leaving})")]
    # The lease started when the coordinator sent this, so it cannot run longer than TTL from now.
    deadline = now + state.lease_ttl_s
    if a.lease_deadline_unix_ms > 0:
        deadline = min(deadline, a.lease_deadline_unix_ms / 1000.0)
    return state, [StartJob(a, deadline)]


def _heartbeat_ack(state: SessionState, ack: wg.HeartbeatAck) -> tuple[SessionState, list[Command]]:
    sent_at = next((t for seq, t in state.pending if seq == ack.seq), None)
    pending = tuple((seq, t) for seq, t in state.pending if seq > ack.seq)
    state = replace(state, pending=pending)
    if sent_at is None:
        return state, [Ignored(f"HeartbeatAck for unknown seq {ack.seq}")]
    deadline = sent_at + state.lease_ttl_s
    if ack.lease_deadline_unix_ms > 0:
        deadline = min(deadline, ack.lease_deadline_unix_ms / 1000.0)
    return state, [Renew(deadline)]
