"""Where each message of a fanned-out worker stream goes (fanout.py): pure, no I/O.

`Routes` is the bookkeeping of one stream that fanout.py's `FanOutWorkers` proxies to every shard
owner (upstream 0 first, the coordinator the worker dialled): each owner's Hello with its share
of slots (`split_slots`), the one Welcome merged from theirs, which owner leased which job (the
latest lease wins) and which asked which login check, the heartbeats awaiting every owner's ack.
Messages in, messages out per upstream; fanout.py's module docstring gives the rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from postroom.v1 import worker_gateway_pb2 as wg

# Heartbeats not yet acknowledged by every upstream, remembered (the worker keeps 32 too).
MAX_PENDING_HEARTBEATS = 32

# Worker messages about one job, by the oneof field, and where their job id is.
_JOB_MESSAGES = frozenset(
    {"ack", "log", "screenshot", "commit_request", "awaiting_confirm", "result"}
)


def split_slots(slots: int, upstreams: int) -> list[int]:
    """Each upstream's share of the worker's slots: even, the first ones take the remainder, at
    least 1 each (an owner refuses 0). A worker's invalid count (< 1) is left for the owners to
    refuse."""
    if slots < 1:
        return [slots] * upstreams
    return [
        max(1, slots // upstreams + (1 if i < slots % upstreams else 0)) for i in range(upstreams)
    ]


def _min_set(values: Sequence[int]) -> int:
    """The smallest value set (0 = unset, the worker's default) among the upstreams'."""
    set_values = [v for v in values if v > 0]
    return min(set_values) if set_values else 0


def _job_id(msg: wg.WorkerMessage, kind: str) -> str:
    inner: Any = getattr(msg, kind)
    job_id: str = inner.job_id
    return job_id


@dataclass(slots=True)
class _Beat:
    waiting: set[int]
    deadline_ms: int = 0


@dataclass(slots=True)
class Routes:
    """Where each message of one fanned-out stream goes (pure: no I/O). Upstream 0 is the
    first (the coordinator the worker dialled)."""

    upstreams: int
    worker_batches: bool = False  # the worker's Hello said it takes CoordinatorBatch
    # job_id -> (the upstream that leased it, under which epoch): the latest lease wins (a
    # shard handed over to another owner re-leases its jobs under a higher epoch).
    jobs: dict[str, tuple[int, int]] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)  # login check request_id -> upstream
    beats: dict[int, _Beat] = field(default_factory=dict)  # heartbeat seq -> acks awaited
    upstream_batches: list[bool] = field(default_factory=list)
    said_goodbye: bool = False  # a coordinator's Goodbye was passed on

    # ---- the opening ----------------------------------------------------------------------

    def hellos(self, hello: wg.Hello) -> list[wg.WorkerMessage]:
        """The Hello for each upstream: the worker's, with that upstream's share of slots."""
        self.worker_batches = hello.accepts_batches
        out = []
        for share in split_slots(hello.slots, self.upstreams):
            one = wg.Hello()
            one.CopyFrom(hello)
            one.slots = share
            out.append(wg.WorkerMessage(hello=one))
        return out

    def welcome(self, welcomes: Sequence[wg.Welcome]) -> wg.Welcome:
        """The one Welcome the worker gets, from every upstream's (in upstream order)."""
        resumed: list[wg.HeldJob] = []
        seen: set[tuple[str, int]] = set()
        for i, w in enumerate(welcomes):
            for held in w.resumed:
                self._leased(i, held.job_id, held.lease_epoch)
                if (held.job_id, held.lease_epoch) not in seen:
                    seen.add((held.job_id, held.lease_epoch))
                    resumed.append(held)
        self.upstream_batches = [w.accepts_batches for w in welcomes]
        return wg.Welcome(
            session_id=welcomes[0].session_id,
            heartbeat_interval_ms=_min_set([w.heartbeat_interval_ms for w in welcomes]),
            lease_ttl_ms=_min_set([w.lease_ttl_ms for w in welcomes]),
            resumed=resumed,
            max_chunk_bytes=_min_set([w.max_chunk_bytes for w in welcomes]),
            max_asset_bytes=_min_set([w.max_asset_bytes for w in welcomes]),
            accepts_batches=all(self.upstream_batches),
        )

    # ---- upstream -> worker ---------------------------------------------------------------

    def from_upstream(self, i: int, msg: wg.CoordinatorMessage) -> list[bytes]:
        """What upstream i's wire message becomes for the worker (serialized; maybe nothing)."""
        inner = msg.batch.messages if msg.WhichOneof("msg") == "batch" else (msg,)
        kept = [m for m in inner if self._keep(i, m)]
        if len(kept) > 1 and self.worker_batches:
            batch = wg.CoordinatorMessage(batch=wg.CoordinatorBatch(messages=kept))
            return [batch.SerializeToString()]
        return [m.SerializeToString() for m in kept]

    def _keep(self, i: int, msg: wg.CoordinatorMessage) -> bool:
        kind = msg.WhichOneof("msg")
        if kind == "assign":
            self._leased(i, msg.assign.job_id, msg.assign.lease_epoch)
        elif kind == "login_check":
            self.requests[msg.login_check.request_id] = i
        elif kind in ("result_ack", "drop"):
            # The worker forgets the job (unless about an older lease: it keeps the newer).
            about: Any = getattr(msg, kind)
            lease = self.jobs.get(about.job_id)
            if lease is not None and lease[0] == i and not 0 < about.lease_epoch < lease[1]:
                del self.jobs[about.job_id]
        elif kind == "heartbeat_ack":
            return self._acked(i, msg.heartbeat_ack)
        elif kind == "goodbye":
            if self.said_goodbye:
                return False
            self.said_goodbye = True
        return True

    def _leased(self, i: int, job_id: str, epoch: int) -> None:
        lease = self.jobs.get(job_id)
        if lease is None or epoch >= lease[1]:
            self.jobs[job_id] = (i, epoch)

    def upstream_of(self, job_id: str) -> int:
        """The upstream that leased the job; the first for a job none did."""
        lease = self.jobs.get(job_id)
        return 0 if lease is None else lease[0]

    def _acked(self, i: int, ack: wg.HeartbeatAck) -> bool:
        """Upstream i acknowledged a heartbeat; True (with `ack` now the merged one) once every
        upstream has."""
        beat = self.beats.get(ack.seq)
        if beat is None or i not in beat.waiting:
            return False
        beat.waiting.discard(i)
        if ack.lease_deadline_unix_ms > 0:
            beat.deadline_ms = min(
                d for d in (beat.deadline_ms, ack.lease_deadline_unix_ms) if d > 0
            )
        if beat.waiting:
            return False
        del self.beats[ack.seq]
        ack.lease_deadline_unix_ms = beat.deadline_ms
        return True

    # ---- worker -> upstreams --------------------------------------------------------------

    def from_worker(self, msg: wg.WorkerMessage) -> list[tuple[int, bytes]]:
        """What the worker's wire message becomes for each upstream, in upstream order."""
        if msg.WhichOneof("msg") == "batch":
            parts: dict[int, list[wg.WorkerMessage]] = {}
            for one in msg.batch.messages:
                for i, routed in self._route(one):
                    parts.setdefault(i, []).append(routed)
            out = []
            for i in sorted(parts):
                msgs = parts[i]
                if len(msgs) > 1 and self.upstream_batches[i]:
                    whole = wg.WorkerMessage(batch=wg.WorkerBatch(messages=msgs))
                    out.append((i, whole.SerializeToString()))
                else:
                    out += [(i, m.SerializeToString()) for m in msgs]
            return out
        return [(i, m.SerializeToString()) for i, m in self._route(msg)]

    def _route(self, msg: wg.WorkerMessage) -> list[tuple[int, wg.WorkerMessage]]:
        kind = msg.WhichOneof("msg")
        if kind == "heartbeat":
            return self._heartbeats(msg.heartbeat)
        if kind == "goodbye":
            return [(i, msg) for i in range(self.upstreams)]
        if kind in _JOB_MESSAGES:
            return [(self.upstream_of(_job_id(msg, kind)), msg)]
        if kind == "login_check":
            return [(self.requests.pop(msg.login_check.request_id, 0), msg)]
        # A second Hello, a nested batch, a kind newer than this coordinator: the first
        # upstream's gateway answers it as it would directly.
        return [(0, msg)]

    def _heartbeats(self, beat: wg.Heartbeat) -> list[tuple[int, wg.WorkerMessage]]:
        self.beats[beat.seq] = _Beat(set(range(self.upstreams)))
        while len(self.beats) > MAX_PENDING_HEARTBEATS:
            del self.beats[min(self.beats)]
        active: list[list[wg.HeldJob]] = [[] for _ in range(self.upstreams)]
        for held in beat.active:
            active[self.upstream_of(held.job_id)].append(held)
        return [
            (i, wg.WorkerMessage(heartbeat=wg.Heartbeat(seq=beat.seq, active=jobs)))
            for i, jobs in enumerate(active)
        ]
