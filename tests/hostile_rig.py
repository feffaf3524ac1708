"""What the hostile-input tests share: an operator token sent with every call, a log handler that
collects the coordinator's ERROR records (from any thread), a guard worker whose jobs nothing a
hostile client sends may change, and a check that they did not.

The guard: an enrolled device holding two jobs of a post nobody else knows about, one of them
past its commit permit. `Guard.unchanged()` compares them with the store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import anyio
import anyio.from_thread
import grpc
from conftest import InProcess, coordinator_server, job_ids, publish
from scripted_worker import ScriptedWorker

from coordinator.domain import Job
from postroom.v1 import access_pb2, publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

if TYPE_CHECKING:
    _Unary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _Stream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
else:  # not subscriptable at run time
    _Unary = grpc.aio.UnaryUnaryClientInterceptor
    _Stream = grpc.aio.UnaryStreamClientInterceptor

GUARD_DEVICE = "guard-w0"
GUARD_ACCOUNT = "guard"


class BearerToken(_Unary, _Stream):
    """Sends an operator token with every call."""

    def __init__(self, secret: str) -> None:
        self._metadata = (("authorization", f"Bearer {secret}"),)

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=tuple(details.metadata or ()) + self._metadata)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class ErrorLog(logging.Handler):
    """ERROR records of the coordinator's loggers, from any thread; attach with `with`."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("postroom.coordinator"):
            self.records.append(record)

    def __enter__(self) -> ErrorLog:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


async def admin_channel(env: InProcess) -> grpc.aio.Channel:
    """Turn authentication on (the first admin token) and return a channel that sends it."""
    async with grpc.aio.insecure_channel(env.address) as plain:
        admin = await publishing_pb2_grpc.PublishingStub(plain).CreateToken(
            access_pb2.CreateTokenRequest(name="fuzzer", role=access_pb2.ROLE_ADMIN)
        )
    bearer = cast(Any, BearerToken(admin.secret))
    return grpc.aio.insecure_channel(env.address, interceptors=[bearer])


async def enroll(
    stub: publishing_pb2_grpc.PublishingAsyncStub, name: str, accounts: list[tuple[str, str]]
) -> str:
    """Enroll a device; its token."""
    enrolled = await stub.EnrollDevice(
        access_pb2.EnrollDeviceRequest(
            name=name, accounts=[pb.Target(platform=p, account=a) for p, a in accounts]
        )
    )
    return enrolled.secret


@dataclass
class Guard:
    env: InProcess
    worker: ScriptedWorker
    post_ids: list[str]
    jobs: list[Job]

    async def changes(self) -> list[str]:
        """How the guarded jobs differ from when they were set up (empty: they do not); and
        the guard's stream must still answer a heartbeat."""
        store = self.env.coordinator.store
        now = [await store.get_job(j.id) for j in self.jobs]
        out = []
        for before, after in zip(self.jobs, now, strict=True):
            if before != after:
                events = await store.list_audit(
                    since=None, subject_id=before.id, action="", after_seq=0, limit=100
                )
                out.append(f"{before.id}: {[(e.action, e.actor, dict(e.details)) for e in events]}")
        ack = await self.worker.sync()
        if ack.lease_deadline_unix_ms <= 0:
            out.append("the guard's heartbeat was not answered")
        return out


async def start_guard(env: InProcess, stub: publishing_pb2_grpc.PublishingAsyncStub) -> Guard:
    token = await enroll(stub, GUARD_DEVICE, [("sandbox", GUARD_ACCOUNT)])
    worker = ScriptedWorker(
        env.address, GUARD_DEVICE, capabilities=[("sandbox", GUARD_ACCOUNT)], slots=2, token=token
    )
    await worker.__aenter__()
    await worker.hello()
    first = await publish(stub, text="guarded", targets=[("sandbox", GUARD_ACCOUNT)])
    assign = (await worker.next("assign")).assign
    await worker.ack(assign)
    grant = await worker.commit(assign)
    assert isinstance(grant, wg.CommitGrant), grant
    second = await publish(stub, text="guarded too", targets=[("sandbox", GUARD_ACCOUNT)])
    assign2 = (await worker.next("assign")).assign
    await worker.ack(assign2)
    await worker.sync()
    store = env.coordinator.store
    jobs = [await store.get_job(j) for j in job_ids(first) + job_ids(second)]
    return Guard(env, worker, [first.id, second.id], jobs)


class _FuzzRig(Protocol):
    guard: Guard
    channel: grpc.aio.Channel


R = TypeVar("R", bound=_FuzzRig)


@contextlib.contextmanager
def hostile_session(
    tmp: Path,
    setup: Callable[[anyio.from_thread.BlockingPortal, InProcess, ErrorLog], Awaitable[R]],
) -> Iterator[R]:
    """An in-process coordinator driven from the test's thread through a portal, its ERROR log
    watched, and the rig `setup` builds (a guard worker, an admin channel); torn down after."""
    with (
        ErrorLog() as errors,
        anyio.from_thread.start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(coordinator_server(tmp)) as env,
    ):
        rig = portal.call(setup, portal, env, errors)
        try:
            yield rig
        finally:
            portal.call(rig.guard.worker.kill)
            portal.call(rig.channel.close, None)


def report_fuzz(heading: str, table: str, record: dict[str, Any]) -> None:
    """Print the generated-input counts; also append them to $POSTROOM_FUZZ_REPORT (make fuzz)."""
    print(f"\n{heading}:\n{table}")
    if path := os.environ.get("POSTROOM_FUZZ_REPORT"):
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
