"""ClusterServing: a coordinator's life in cluster mode, from standby to active to a clean stop.

`postroom coordinator --db postgresql://...` runs here once the gRPC server listens. It starts
as a standby (health NOT_SERVING, workers' streams relayed to the active) and runs its
ownership turns (member.py). The turn that holds every shard takes over: the same start-up load
as a single coordinator's (workers reconnecting within their lease keep their jobs), an audit
event (COORDINATOR_ACTIVE), then the actor, then health SERVING and the ready file. SIGTERM:
the active drains as a single coordinator does, then lets its shards go (leave), so a standby
takes over at its next turn, not after the TTL.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import grpc
from anyio.abc import TaskGroup, TaskStatus

from coordinator.actor import Coordinator
from coordinator.cluster.member import ClusterMember, Turn
from coordinator.domain import AuditEvent
from coordinator.store.base import WriteBatch

log = logging.getLogger("postroom.coordinator")
TOOK_OVER = "COORDINATOR_ACTIVE"  # the audit log's line for a take-over


@dataclass(slots=True)
class ClusterServing:
    member: ClusterMember
    coordinator: Coordinator
    server: grpc.aio.Server
    serving: Callable[[bool], Awaitable[None]]  # the health service's status
    ready: Callable[[], None]  # the ready file, written once active
    drain_grace_s: float
    _actors: TaskGroup | None = None
    _stopping: bool = False
    _actor_done: anyio.Event = field(default_factory=anyio.Event)

    async def run_until_signal(self) -> None:
        role = self.member.role
        await self.serving(False)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            ttl = self.member.config.ttl_s
            log.info("joining as %s at %s (ownership TTL %g s)", role.name, role.address, ttl)
            async with anyio.create_task_group() as actors:
                self._actors = actors
                async with anyio.create_task_group() as turns:
                    await turns.start(self.member.run, self._take_over)
                    if self.member.fence is None:  # the first turn did not make it the active
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
        """The active drains as a single coordinator does; its turns go on renewing meanwhile."""
        self._stopping = True
        await self.serving(False)
        if self.member.role.active:
            await self.coordinator.stop()
            await self._actor_done.wait()
        await self.server.stop(self.drain_grace_s)
        turns.cancel_scope.cancel()

    async def _take_over(self, turn: Turn, started: float) -> None:
        await self.coordinator.load()
        if self._stopping or self._actors is None:
            return
        role = self.member.role
        epochs = sorted({lease.epoch for lease in turn.held})
        span = f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}..{epochs[-1]}"
        took = round((time.monotonic() - started) * 1000)
        details = {"shards": len(turn.held), "epochs": span, "address": role.address, "ms": took}
        event = AuditEvent(TOOK_OVER, role.name, "system", self.coordinator.clock.now(), details)
        await self.member.commit(WriteBatch(audits=[event]))  # before anything it serves
        await self._actors.start(self._actor)
        role.active = True
        await self.serving(True)
        self.ready()
        log.info("active: took over %d shards (epochs %s) in %d ms", len(turn.held), span, took)

    async def _actor(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.coordinator.run(task_status=task_status)
        finally:
            self._actor_done.set()
