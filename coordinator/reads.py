"""Operators' reads of live state, run inside the actor (Coordinator.read) between commands, so
every answer is one consistent view. Each returns copies (dataclass copies or wire messages):
nothing live leaves the actor.

Under placement "spread" each core holds only its shards, so the lists of devices and gates are
read from the store instead (`devices_from_store`, `gates_from_store`): every coordinator gives
the same answer. Only which devices are connected comes from the core (`connected`): a worker's
stream reaches every serving coordinator (cluster/fanout.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping

from coordinator.convert import device_pb
from coordinator.domain import LEASED_STATUSES, Job, Post, Target
from coordinator.errors import FailedPrecondition, NotFound
from coordinator.gates import GateBook, GateView, Quota
from coordinator.leasing.core import LeaseCore
from coordinator.store.base import Cursor, JobFilter, Store
from postroom.v1 import types_pb2 as pb

# Rows a store read of leased jobs fetches at a time.
LEASED_PAGE = 1000


def post(core: LeaseCore, post_id: str) -> Post | None:
    """An open post as it is now (None: not open; the store has it)."""
    live = core.posts.get(post_id)
    return dataclasses.replace(live) if live is not None else None


def devices(core: LeaseCore) -> list[pb.Device]:
    sessions = {s.device_id: s for s in core.sessions.values()}
    out = []
    for dev in sorted(core.devices.values(), key=lambda d: d.id):
        session = sessions.get(dev.id)
        out.append(
            device_pb(
                dev,
                online=session is not None,
                free_slots=session.free_slots if session else 0,
                job_ids=sorted(session.jobs) if session else [],
            )
        )
    return out


def login_session(core: LeaseCore, device_id: str, target: Target) -> str:
    """The session to ask for a login check of `target`, or why there is none."""
    if device_id not in core.devices:
        raise NotFound(f"device {device_id} has never connected")
    session = next((s for s in core.sessions.values() if s.device_id == device_id), None)
    if session is None:
        raise FailedPrecondition(f"device {device_id} is offline; start it, then check again")
    if not session.serves(target):
        raise FailedPrecondition(f"device {device_id} does not serve {target}")
    return session.id


def gates(core: LeaseCore, now: float) -> list[GateView]:
    """Every gate, and an open one for each target with a job but no gate yet."""
    known = {j.target for j in core.jobs.values()}
    return core.gates.views(now, extra=sorted(known))


def connected(core: LeaseCore) -> set[str]:
    """The devices with a stream open to this coordinator."""
    return {s.device_id for s in core.sessions.values()}


async def leased_jobs(store: Store) -> list[Job]:
    """Every job under a lease now, in every shard (from the store)."""
    out: list[Job] = []
    for status in sorted(LEASED_STATUSES, key=lambda s: s.value):
        before: Cursor | None = None
        while True:
            flt = JobFilter(status=status)
            page = await store.list_jobs(flt, limit=LEASED_PAGE, offset=0, before=before)
            out += page
            if len(page) < LEASED_PAGE:
                break
            before = (page[-1].created_at, page[-1].id)
    return out


async def devices_from_store(store: Store, online: Collection[str]) -> list[pb.Device]:
    """Every device as the store has it (capabilities, login badges, last seen), the jobs each
    holds in every shard, and `online`: the devices connected (as this coordinator sees them).
    Free slots: the device's slots less the jobs it holds."""
    held: dict[str, list[str]] = {}
    for job in await leased_jobs(store):
        if job.device_id:
            held.setdefault(job.device_id, []).append(job.id)
    out = []
    for dev in sorted(await store.list_devices(), key=lambda d: d.id):
        jobs = sorted(held.get(dev.id, ()))
        up = dev.id in online
        free = max(0, dev.slots - len(jobs)) if up else 0
        out.append(device_pb(dev, online=up, free_slots=free, job_ids=jobs))
    return out


async def gates_from_store(store: Store, quotas: Mapping[str, Quota], now: float) -> list[GateView]:
    """`gates` from the store: every stored gate, and an open one for each target with an
    active job; a quota's use counted from the commits in its window (as a core counts them
    when it loads; leases in flight are not counted: no core's memory is read)."""
    book = GateBook(quotas)
    records = await store.list_gates()
    book.load(records)
    known = {j.target for j in await store.load_active_jobs()}
    for target in sorted(known | {r.target for r in records}):
        quota = book.quota(target)
        if quota is not None:
            since = now - quota.window_s
            n = await store.count_commits_since(target.platform, target.account, since)
            book.seed_commits(target, [now] * n)
    return book.views(now, extra=sorted(known))
