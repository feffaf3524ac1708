"""Operators' reads of live state, run inside the actor (Coordinator.read) between commands, so
every answer is one consistent view. Each returns copies (dataclass copies or wire messages):
nothing live leaves the actor."""

from __future__ import annotations

import dataclasses

from coordinator.convert import device_pb
from coordinator.domain import Post, Target
from coordinator.errors import FailedPrecondition, NotFound
from coordinator.gates import GateView
from coordinator.leasing.core import LeaseCore
from postroom.v1 import types_pb2 as pb


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
