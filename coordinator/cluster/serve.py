"""ClusterServing: a coordinator's life in cluster mode, from standby to serving to a clean stop.

`postroom coordinator --db postgresql://...` runs here once the gRPC server listens. It starts
as a standby (health NOT_SERVING) and runs its ownership turns (member.py).

Placement "one": the turn that holds every shard takes over: the same start-up load as a single
coordinator's (workers reconnecting within their lease keep their jobs), an audit event
(COORDINATOR_ACTIVE), then the actor, then health SERVING and the ready file.

Placement "spread": the first turn that holds any shard does the same with the jobs of the
shards it holds (coordinator.load(shards=...)). After every later turn (reconcile):
- shards gained (a coordinator died or left, or this one's share grew) are taken into the core
  (take_shards);
- shards leaving (a coordinator joined: this one is over its share) stop being dispatched
  (leave_shards, once), then each turn the core is asked to let them go (evict_shards): once
  none of their jobs is leased, or regardless once the hand-off timeout (ClusterConfig
  handoff_timeout_s) has passed; then they are released, and the joining one claims them.

SIGTERM: the coordinator drains as a single one does, then lets its shards go (leave), so the
others take them at their next turn, not after the TTL.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import anyio
import grpc
from anyio.abc import TaskGroup, TaskStatus

from coordinator.cluster.member import ClusterMember, Turn
from coordinator.cluster.tasks import PostTaskConsumer
from coordinator.domain import AuditEvent
from coordinator.errors import CoordinatorError
from coordinator.store.base import WriteBatch
from coordinator.store.shards import ShardLease
from postroom.clock import Clock

log = logging.getLogger("postroom.coordinator")
TOOK_OVER = "COORDINATOR_ACTIVE"  # the audit log's line for a take-over


class ServedCore(Protocol):
    """What serving needs of the coordinator (coordinator/actor.py's Coordinator)."""

    @property
    def clock(self) -> Clock: ...

    async def load(self, shards: list[int] | None = None) -> None: ...

    async def take_shards(self, shards: list[int], /) -> None: ...

    async def leave_shards(self, shards: list[int], /) -> None: ...

    async def evict_shards(self, shards: list[int], /, *, force: bool = False) -> bool: ...

    async def run(self, *, task_status: TaskStatus[None] = ...) -> None: ...

    async def stop(self) -> None: ...


def spans(shards: Iterable[int]) -> str:
    """Shards as an operator reads them: '0-20', '3, 7-9'."""
    runs: list[list[int]] = []
    for shard in sorted(shards):
        if runs and shard == runs[-1][1] + 1:
            runs[-1][1] = shard
        else:
            runs.append([shard, shard])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


@dataclass(slots=True)
class ClusterServing:
    member: ClusterMember
    coordinator: ServedCore
    server: grpc.aio.Server
    serving: Callable[[bool], Awaitable[None]]  # the health service's status
    ready: Callable[[], None]  # the ready file, written once serving
    drain_grace_s: float
    monotonic: Callable[[], float] = time.monotonic  # the hand-off timeout's clock
    tasks: PostTaskConsumer | None = None  # "spread": the post tasks of the shards served
    # Run beside the turns from the start until the drain (the credentials' follower).
    companions: Sequence[Callable[[], Coroutine[Any, Any, None]]] = ()
    _actors: TaskGroup | None = None
    _stopping: bool = False
    _running: bool = False  # the actor was started
    _actor_done: anyio.Event = field(default_factory=anyio.Event)
    # "spread": the shards whose jobs the core holds, and those of them being handed off
    # (since when, on `monotonic`). Only the serving task changes them.
    _served: set[int] = field(default_factory=set)
    _handing: dict[int, float] = field(default_factory=dict)
    _turned: anyio.Event = field(default_factory=anyio.Event)
    _consuming: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    async def run_until_signal(self) -> None:
        role = self.member.role
        await self.serving(False)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            config = self.member.config
            log.info(
                "joining as %s at %s (ownership TTL %g s, placement %s)",
                role.name,
                role.address,
                config.ttl_s,
                config.placement,
            )
            async with anyio.create_task_group() as actors:
                self._actors = actors
                async with anyio.create_task_group() as turns:
                    run = partial(self.member.run, on_turn=self._on_turn)
                    await turns.start(run, self._take_over)
                    for companion in self.companions:
                        turns.start_soon(companion)
                    if self.member.spread and not self.member.held:
                        log.info(
                            "waiting for shards: %s at %s holds none yet; the others hand "
                            "its share over at their next turns",
                            role.name,
                            role.address,
                        )
                    elif self.member.fence is None:  # the first turn did not make it active
                        where = role.leader_address or "none yet"
                        log.info(
                            "standby: %s at %s; the active one is %s",
                            role.name,
                            role.address,
                            where,
                        )
                    async for signum in signals:
                        log.info("received %s: draining", signal.Signals(signum).name)
                        break
                    await self._drain(turns)
        with anyio.CancelScope(shield=True):
            try:
                await self.member.leave()
            except Exception as exc:  # the leases run out by themselves
                log.warning("leaving the cluster failed: %s", exc)

    async def _drain(self, turns: TaskGroup) -> None:
        """The coordinator drains as a single one does; its turns go on renewing meanwhile."""
        self._stopping = True
        self._consuming.cancel()
        await self.serving(False)
        if self._running:
            await self.coordinator.stop()
            await self._actor_done.wait()
        await self.server.stop(self.drain_grace_s)
        turns.cancel_scope.cancel()

    def _on_turn(self, turn: Turn) -> None:
        self._turned.set()

    async def _take_over(self, turn: Turn, started: float) -> None:
        if self._actors is None:
            return
        if self.member.spread:
            if await self.serve_shards(self._actors, started):
                await self._follow()
            return
        await self.coordinator.load()
        if self._stopping:
            return
        role = self.member.role
        span = _epochs(turn.held)
        took = round((time.monotonic() - started) * 1000)
        await self._audit_take_over(len(turn.held), span, took)
        await self._actors.start(self._actor)
        self._running = role.active = True
        await self.serving(True)
        self.ready()
        log.info("active: took over %d shards (epochs %s) in %d ms", len(turn.held), span, took)

    async def _audit_take_over(self, shards: int, epochs: str, took_ms: int) -> None:
        role = self.member.role
        details = {"shards": shards, "epochs": epochs, "address": role.address, "ms": took_ms}
        event = AuditEvent(TOOK_OVER, role.name, "system", self.coordinator.clock.now(), details)
        await self.member.commit(WriteBatch(audits=[event]))  # before anything it serves

    async def _actor(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.coordinator.run(task_status=task_status)
        finally:
            self._actor_done.set()

    # ---- placement "spread" --------------------------------------------------------------

    def serves(self) -> list[int]:
        """The shards whose jobs the core holds and dispatches now (not being handed off)."""
        return sorted(self._served - self._handing.keys())

    async def serve_shards(self, actors: TaskGroup, started: float) -> bool:
        """The first turn holding shards: load their jobs, then run the actor in `actors` and
        say SERVING. False if stopping meanwhile."""
        shards = self.member.shards()
        await self.coordinator.load(shards=shards)
        if self._stopping:
            return False
        self._served = set(shards)
        span = _epochs([lease for lease in self.member.held if lease.shard in self._served])
        took = round((self.member.monotonic() - started) * 1000)
        await self._audit_take_over(len(shards), span, took)
        await actors.start(self._actor)
        if self.tasks is not None:
            self.tasks.shards = self.serves
            actors.start_soon(self._consume, self.tasks)
        self._running = self.member.role.active = True
        await self.serving(True)
        self.ready()
        log.info("serving: took shards %s (%d) in %d ms", spans(shards), len(shards), took)
        return True

    async def _consume(self, tasks: PostTaskConsumer) -> None:
        with self._consuming:
            await tasks.run()

    async def _follow(self) -> None:
        """After every turn, until stopped: the core follows the shards held."""
        while not self._stopping:
            try:
                await self.reconcile()
            except CoordinatorError as exc:  # the database, say: the next turn tries again
                if self._stopping:  # the actor stopped under it
                    return
                log.warning("following the shards held failed (will retry): %s", exc)
            await self._turned.wait()
            self._turned = anyio.Event()

    async def reconcile(self) -> None:
        """One step: take gained shards, start handing off leaving ones, release those whose
        hand-off is done (their core let them go, or was made to after the timeout)."""
        if self._stopping:
            return
        member, core = self.member, self.coordinator
        held = set(member.shards())
        leaving = member.leaving & held
        if gained := sorted(held - leaving - self._served):
            await core.take_shards(gained)
            self._served.update(gained)
            log.info("took shards %s (%d)", spans(gained), len(gained))
        if fresh := sorted((leaving & self._served) - self._handing.keys()):
            await core.leave_shards(fresh)
            self._handing.update(dict.fromkeys(fresh, self.monotonic()))
            log.info("handing shards %s (%d) to a joining coordinator", spans(fresh), len(fresh))
        if idle := sorted(leaving - self._served):  # never in the core: nothing to hand off
            await self._release(idle, forced=False)
        now, timeout = self.monotonic(), member.config.handoff_timeout_s
        overdue = sorted(s for s, since in self._handing.items() if now - since >= timeout)
        waiting = sorted(self._handing.keys() - set(overdue))
        if waiting and await core.evict_shards(waiting, force=False):
            await self._release(waiting, forced=False)
        if overdue and await core.evict_shards(overdue, force=True):
            await self._release(overdue, forced=True)
        member.role.active = bool(member.held)

    async def _release(self, shards: list[int], *, forced: bool) -> None:
        try:
            await self.member.release(shards)  # dropped from the fence even if this fails
        finally:
            for shard in shards:
                self._handing.pop(shard, None)
                self._served.discard(shard)
        if forced:
            log.warning(
                "released shards %s (%d) after the hand-off timeout (%g s) with jobs of theirs "
                "still leased: their new owner takes those leases over",
                spans(shards),
                len(shards),
                self.member.config.handoff_timeout_s,
            )
        else:
            log.info("released shards %s (%d)", spans(shards), len(shards))


def _epochs(leases: Iterable[ShardLease]) -> str:
    found = sorted({lease.epoch for lease in leases})
    if not found:
        return "none"
    return f"{found[0]}" if len(found) == 1 else f"{found[0]}..{found[-1]}"
