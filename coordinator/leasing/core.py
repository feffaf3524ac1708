"""The lease protocol core: sessions, leases, fencing epochs, commit permits, results, recovery.

Pure state machine: every method takes the current time, mutates only this object's state and
returns Effects (a write batch plus messages to send, in that order). It never touches a socket,
the database or the clock, so the protocol is unit- and property-tested without gRPC
(tests/test_lease_core_props.py).

One writer: the core holds the coordinator's jobs, posts, leases, sessions, devices, gates and
quotas (its GateBook), and only its own methods change them, called by coordinator/step.py's
`handle` in the actor's task (and, once at start-up, by the actor's load). Everyone else gets
copies: the snapshots in Effects, and operators' reads run in the actor (coordinator/reads.py).

Invariants it keeps:
- a job has at most one live lease (one session, one epoch); every lease bumps lease_epoch;
- a message whose (job_id, lease_epoch) is not the job's current lease is refused (Drop/Deny);
- a commit permit is granted only to the current lease with enough time left, and is written
  (committed_epoch) before it is sent; a lease lost after its permit makes the job verify_first;
- a lease lost before its permit is requeued at once (the worker cannot commit without a permit).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable

from coordinator.domain import (
    AuditEvent,
    DeviceRecord,
    JobStatus,
    ScreenshotRecord,
    StepLogEntry,
    Target,
    WorkerKind,
)
from coordinator.leasing import outbound as o
from coordinator.leasing.base import run_row
from coordinator.leasing.dispatch import Dispatching
from coordinator.leasing.effects import (
    CommitDecided,
    Effects,
)

# Re-exported: the lease core's configuration and values are part of its public face.
from coordinator.leasing.state import DEFAULT_CLAIM_TIMEOUT_S as DEFAULT_CLAIM_TIMEOUT_S
from coordinator.leasing.state import DEFAULT_CONFIRM_TIMEOUT_S as DEFAULT_CONFIRM_TIMEOUT_S
from coordinator.leasing.state import DEFAULT_HEARTBEAT_INTERVAL_S as DEFAULT_HEARTBEAT_INTERVAL_S
from coordinator.leasing.state import DEFAULT_MAX_CHUNK_BYTES as DEFAULT_MAX_CHUNK_BYTES
from coordinator.leasing.state import DEFAULT_RUN_TIMEOUT_S as DEFAULT_RUN_TIMEOUT_S
from coordinator.leasing.state import Lease as Lease
from coordinator.leasing.state import LeaseConfig as LeaseConfig
from coordinator.leasing.state import Session as Session


class LeaseCore(Dispatching):
    # ---- sessions ------------------------------------------------------------------------

    def open_session(
        self,
        session_id: str,
        now: float,
        *,
        device_id: str,
        kind: WorkerKind,
        capabilities: tuple[Target, ...],
        slots: int,
        held: Iterable[tuple[str, int]],
        version: str,
        per_account_slots: int = 0,
    ) -> Effects:
        fx = Effects()
        for other in [s for s in self.sessions.values() if s.device_id == device_id]:
            # A device has one stream; a new Hello means the old one is dead.
            reason = "superseded by a new stream"
            fx.extend(self.session_lost(other.id, now, reason=reason, redispatch=False))
            fx.close_sessions.append(other.id)
        session = Session(session_id, device_id, kind, capabilities, max(1, slots), now)
        session.per_account = max(0, per_account_slots)
        self.sessions[session_id] = session
        heapq.heappush(self._beats, (now, session_id))
        resumed, refused = self._resume(session, held, now)
        device = self.devices.get(device_id)
        logins = device.logins if device else {}
        device = DeviceRecord(device_id, kind, capabilities, session.slots, now, version, logins)
        device.per_account_slots = session.per_account
        self.devices[device_id] = device
        fx.batch.devices.append(dataclasses.replace(device, logins=dict(logins)))
        details = {
            "kind": kind.value,
            "slots": session.slots,
            "per_account_slots": session.per_account,
            "resumed": [h.job_id for h in resumed],
            "refused": refused,
        }
        actor = f"device:{device_id}"
        fx.batch.audits.append(AuditEvent("DEVICE_CONNECTED", device_id, actor, now, details))
        c = self.config
        welcome = o.Welcome(session_id, c.heartbeat_interval_s, c.lease_ttl_s, tuple(resumed),
                            c.max_chunk_bytes, c.max_asset_bytes)  # fmt: skip
        fx.send(session_id, welcome)
        fx.extend(self.dispatch(now))
        return fx

    def _resume(
        self, session: Session, held: Iterable[tuple[str, int]], now: float
    ) -> tuple[list[o.HeldJob], list[str]]:
        """The leases a reconnecting worker still holds, back on its new session; and those it
        holds under a lease that is over (job@epoch: the worker drops them)."""
        resumed: list[o.HeldJob] = []
        refused: list[str] = []
        for job_id, epoch in held:
            lease = self.leases.get(job_id)
            job = self.jobs.get(job_id)
            if (
                lease is not None
                and job is not None
                and lease.epoch == epoch
                and job.device_id == session.device_id
                and (lease.session_id is None or lease.session_id not in self.sessions)
            ):
                lease.session_id = session.id
                lease.deadline = now + self.config.lease_ttl_s
                lease.granted_at = now
                session.jobs.add(job_id)
                resumed.append(o.HeldJob(job_id, epoch, lease.run.committed))
            else:
                refused.append(f"{job_id}@{epoch}")
        return resumed, refused

    def heartbeat(
        self,
        session_id: str,
        seq: int,
        now: float,
        active: Iterable[tuple[str, int]] | None = None,
    ) -> Effects:
        """Renew every lease of the stream. `active` is what the worker says it holds: a lease
        it no longer holds (it abandoned the job silently, e.g. its own deadline passed while the
        coordinator was away) must not be kept alive by its heartbeats — it is recovered."""
        fx = Effects()
        session = self.sessions.get(session_id)
        if session is None:
            return fx
        session.last_heartbeat = now
        heapq.heappush(self._beats, (now, session_id))
        if active is not None:
            fx.extend(self._reconcile(session, set(active), now))
        deadline = now + self.config.lease_ttl_s
        for job_id in session.jobs:
            self.leases[job_id].deadline = deadline
        self.devices[session.device_id].last_seen_at = now
        fx.send(session_id, o.HeartbeatAck(seq, deadline))
        return fx

    def quiet_heartbeat_ack(self, session_id: str, seq: int, now: float) -> o.HeartbeatAck | None:
        """The ack of a heartbeat that reported no active job, if it changes nothing here: its
        session holds no lease, so there is nothing to renew or reconcile, only the liveness it
        proves (taken in later by `heard`). Reads only: the gateway answers such a heartbeat
        itself, with the ack `heartbeat` would send, instead of a trip through the actor (most
        of an idle fleet's cost). None: `heartbeat` must decide it (an unknown session gets no
        ack there either)."""
        session = self.sessions.get(session_id)
        if session is None or session.jobs:
            return None
        return o.HeartbeatAck(seq, now + self.config.lease_ttl_s)

    def heard(self, beats: Iterable[tuple[str, float]]) -> Effects:
        """Take in heartbeats answered by `quiet_heartbeat_ack`, as (session_id, when heard):
        the session was alive then, as `heartbeat` records it (the silence that ends a session
        counts from here); a closed session's are ignored. Nothing to write or send."""
        for session_id, at in beats:
            session = self.sessions.get(session_id)
            if session is None or at <= session.last_heartbeat:
                continue
            session.last_heartbeat = at
            heapq.heappush(self._beats, (at, session_id))
            device = self.devices.get(session.device_id)
            if device is not None:
                device.last_seen_at = max(device.last_seen_at, at)
        return Effects()

    def _reconcile(self, session: Session, held: set[tuple[str, int]], now: float) -> Effects:
        fx = Effects()
        # An Assign may still be on its way to the worker: judge only leases older than two
        # heartbeat intervals.
        settled_before = now - 2 * self.config.heartbeat_interval_s
        recovered = False
        for job_id in sorted(session.jobs):
            lease = self.leases[job_id]
            if (job_id, lease.epoch) in held or lease.granted_at > settled_before:
                continue
            session.jobs.discard(job_id)
            if lease.run.committed:
                # It may have published: no rerun before its deadline, then a verifying one.
                lease.session_id = None
            else:
                fx.extend(self._recover(job_id, now, reason="the worker no longer holds it"))
                recovered = True
        if recovered:  # the freed job goes out again at once, not at the next tick
            fx.extend(self.dispatch(now))
        return fx

    def goodbye(self, session_id: str, now: float) -> Effects:
        """The worker drains: no new leases; it finishes what it holds."""
        session = self.sessions.get(session_id)
        if session is not None:
            session.draining = True
            session.last_heartbeat = max(session.last_heartbeat, now)
            heapq.heappush(self._beats, (session.last_heartbeat, session_id))
        return Effects()

    def session_lost(
        self,
        session_id: str,
        now: float,
        *,
        reason: str,
        redispatch: bool = True,
        detached: bool = False,
    ) -> Effects:
        """The stream ended (EOF, error, heartbeat silence, superseded). Leases before their
        commit permit are recovered at once; committed ones wait until their worker surely
        stopped (its deadline, or the commit bound it gave if earlier; it may reconnect and
        report meanwhile), then are rerun with verify_first.

        `detached`: the stream said it ends with its worker alive and dialling again
        (Goodbye.reconnecting, e.g. a fan-out that lost another shard owner): every lease is
        kept as a committed one is, unrenewed, for a new session of the device to resume by
        epoch; the timer recovers those nobody resumed at their deadline. A hostile worker
        saying so gains nothing over going silent: its leases live to the same deadline."""
        fx = Effects()
        session = self.sessions.pop(session_id, None)
        if session is None:
            return fx
        for job_id in sorted(session.jobs):
            lease = self.leases[job_id]
            lease.session_id = None
            if not (lease.run.committed or detached):
                fx.extend(self._recover(job_id, now, reason=f"stream lost: {reason}"))
        device = self.devices.get(session.device_id)
        if device is not None:
            # "Last seen" is when the device was last heard from, not when we gave up on it: a
            # hung device is declared dead a whole TTL after its last heartbeat.
            device.last_seen_at = max(device.last_seen_at, session.last_heartbeat)
            fx.batch.devices.append(dataclasses.replace(device, logins=dict(device.logins)))
        fx.batch.audits.append(
            AuditEvent(
                "DEVICE_DISCONNECTED",
                session.device_id,
                f"device:{session.device_id}",
                now,
                {
                    "reason": f"detached: reconnecting ({reason})" if detached else reason,
                    "held": sorted(session.jobs),
                },
            )
        )
        if redispatch:  # jobs recovered above go to another worker at once, not at the next tick
            fx.extend(self.dispatch(now))
        return fx

    # ---- per-job messages from a worker --------------------------------------------------

    def ack(self, session_id: str, job_id: str, epoch: int, now: float) -> Effects:
        fx = Effects()
        lease = self._lease_of(session_id, job_id, epoch)
        if lease is None:
            self._drop(fx, session_id, job_id, epoch, self._stale_reason(job_id, epoch))
            return fx
        job = self.jobs[job_id]
        if job.status is JobStatus.CLAIMED:
            self._move(fx, job, JobStatus.RUNNING, now)
        return fx

    def log(
        self, session_id: str, job_id: str, epoch: int, entry: StepLogEntry, now: float
    ) -> Effects:
        fx = Effects()
        if not entry.at:  # a copy: the command that carried it stays as it was (replay)
            entry = dataclasses.replace(entry, at=now)
        lease = self._lease_of(session_id, job_id, epoch)
        if lease is None:
            self._drop(fx, session_id, job_id, epoch, self._stale_reason(job_id, epoch))
            return fx
        lease.run.logs.append(entry)
        fx.batch.logs.append((lease.run.id, entry))
        fx.logs.append((job_id, lease.run.id, lease.run.attempt, entry))
        return fx

    def screenshot(
        self,
        session_id: str,
        job_id: str,
        epoch: int,
        upload_id: str,
        rec: ScreenshotRecord,
        now: float,
    ) -> Effects:
        """Record a stored screenshot. Its ack goes out with the batch, after the row's commit:
        the worker deletes its copy on that ack, so it must never precede the row."""
        fx = Effects()
        lease = self._lease_of(session_id, job_id, epoch)
        if lease is None:
            reason = self._stale_reason(job_id, epoch)
            error = f"FAILED_PRECONDITION: {reason}"
            fx.send(session_id, o.ScreenshotAck(job_id, upload_id, False, error=error))
            self._drop(fx, session_id, job_id, epoch, reason)
            return fx
        lease.run.screenshots.append(rec)
        fx.batch.screenshots.append((lease.run.id, rec))
        fx.send(session_id, o.ScreenshotAck(job_id, upload_id, True, asset_id=rec.asset_id))
        return fx

    def lease_is_current(self, session_id: str, job_id: str, epoch: int) -> bool:
        return self._lease_of(session_id, job_id, epoch) is not None

    def commit_request(
        self, session_id: str, job_id: str, epoch: int, now: float, bound_s: float = 0.0
    ) -> Effects:
        """Grant or deny the irreversible act. `bound_s`: the worker's act ends within this long
        of its request (it was sent before now, so now + bound_s is no earlier than its end)."""
        fx = Effects()
        lease = self._lease_of(session_id, job_id, epoch)
        job = self.jobs.get(job_id)
        reason = ""
        if lease is not None:
            lease.asked_commit = True  # one looks before it asks: its look came back
        if lease is None or job is None:
            reason = self._stale_reason(job_id, epoch)
        elif session_id not in self.sessions:
            reason = "session is closed"
        elif job.status not in (JobStatus.CLAIMED, JobStatus.RUNNING):
            reason = f"job is {job.status.value}"
        elif lease.verify_only:
            reason = "this attempt may only look for the post (attempts used up, or post cancelled)"
        elif job.require_confirm and not lease.confirmed:
            reason = "job requires an operator's confirmation first"
        elif self._held(job):
            reason = "the post changed since it was approved"
        elif lease.deadline - now < self.config.commit_min_left_s:
            reason = f"lease has {lease.deadline - now:.1f}s left; renew first"
        if reason or lease is None or job is None:
            fx.send(session_id, o.CommitDeny(job_id, epoch, reason))
            fx.signals.append(CommitDecided(False))
            fx.batch.audits.append(
                AuditEvent(
                    "JOB_COMMIT_DENIED",
                    job_id,
                    self._actor(session_id),
                    now,
                    {"epoch": epoch, "reason": reason},
                )
            )
            return fx
        job.committed_epoch = epoch
        self._committed_by[job_id] = (epoch, lease.run.device_id)
        job.verify_first = False  # this run verified (or did not need to) before asking
        lease.run.committed = True
        lease.commit_ends_at = now + bound_s if bound_s > 0 else None
        self.gates.lease_committed(job.target, job.id, now)
        self._write(fx, job, {job.status}, epoch, now)
        fx.batch.runs.append(run_row(lease.run))
        fx.batch.audits.append(
            AuditEvent("JOB_COMMIT_GRANTED", job_id, self._actor(session_id), now, {"epoch": epoch})
        )
        fx.send(session_id, o.CommitGrant(job_id, epoch, lease.deadline))
        fx.signals.append(CommitDecided(True))
        return fx

    def awaiting_confirm(self, session_id: str, job_id: str, epoch: int, now: float) -> Effects:
        fx = Effects()
        lease = self._lease_of(session_id, job_id, epoch)
        if lease is None:
            self._drop(fx, session_id, job_id, epoch, self._stale_reason(job_id, epoch))
            return fx
        job = self.jobs[job_id]
        if lease.confirmed:
            fx.send(session_id, o.Confirm(job_id, epoch))
        elif job.status is not JobStatus.AWAITING_CONFIRM:
            self._move(fx, job, JobStatus.AWAITING_CONFIRM, now)
            lease.awaiting_since = now
        return fx

    # ---- time: expiry, stuck recovery, wake-ups ------------------------------------------

    def tick(self, now: float) -> Effects:
        fx = Effects()
        ttl = self.config.lease_ttl_s
        for session in [s for s in self.sessions.values() if now - s.last_heartbeat > ttl]:
            lost = self.session_lost(
                session.id, now, reason=f"no heartbeat for {ttl:g}s", redispatch=False
            )
            fx.extend(lost)
            fx.close_sessions.append(session.id)
        for job_id, lease in list(self.leases.items()):
            job = self.jobs[job_id]
            if self._confirm_overdue(lease, now):
                fx.extend(self.confirm_timed_out(job_id, now))
                continue
            if lease.session_id is None:
                if now > self.orphan_due(lease):
                    fx.extend(self._recover(job_id, now, reason=_orphan_reason(lease)))
                continue
            age = now - lease.run.started_at
            stuck = (job.status is JobStatus.CLAIMED and age > self.config.claim_timeout_s) or (
                job.status is JobStatus.RUNNING and age > self.config.run_timeout_s
            )
            if stuck:
                self._drop(fx, lease.session_id, job_id, lease.epoch, "stuck: lease recovered")
                session = self.sessions[lease.session_id]
                session.jobs.discard(job_id)
                if lease.run.committed:
                    # It holds a commit permit and may be publishing right now; a Drop cannot
                    # undo that. Stop renewing the lease and rerun (verifying) only after its
                    # deadline plus the margin, like any lease lost after its permit.
                    lease.session_id = None
                    if session.per_account:
                        session.lingering[job_id] = lease.epoch
                    continue
                fx.extend(self._recover(job_id, now, reason=f"stuck in {job.status.value}"))
        fx.extend(self.dispatch(now))
        return fx

    def next_wakeup(self) -> float | None:
        times: list[float] = []
        due = self.queue.next_due(
            self.jobs, self._open_at_any, self._held, self._dispatched_at, self.scope.serving()
        )
        if due is not None:
            times.append(due)
        for lease in self.leases.values():
            if lease.session_id is None:
                times.append(self.orphan_due(lease) + 0.001)
            if lease.awaiting_since is not None:
                times.append(lease.awaiting_since + self.config.confirm_timeout_s + 0.001)
        oldest = self._oldest_heartbeat()
        if oldest is not None:
            times.append(oldest + self.config.lease_ttl_s + 0.001)
        return min(times) if times else None

    def orphan_due(self, lease: Lease) -> float:
        """When a lease no stream renews may be recovered: once its worker surely stopped, plus
        the margin for what was already on its way."""
        return lease.acts_until() + self.config.expiry_margin_s

    def _oldest_heartbeat(self) -> float | None:
        """min(last_heartbeat) over the sessions: drops entries of closed sessions and beats
        that a later one replaced until the first entry is a session's current one."""
        beats = self._beats
        while beats:
            at, session_id = beats[0]
            session = self.sessions.get(session_id)
            if session is not None and session.last_heartbeat == at:
                return at
            heapq.heappop(beats)
        return None

    def _open_at_any(self, target: Target) -> float:
        return self.gates.open_at(target, float("-inf"))


def _orphan_reason(lease: Lease) -> str:
    if lease.acts_until() < lease.deadline:
        return "the worker's commit bound passed"
    return "lease deadline passed"
