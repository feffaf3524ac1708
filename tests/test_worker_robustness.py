"""A worker outlives what it cannot control: a coordinator that accepts the connection and then
says nothing (a stalled or SIGSTOPped process: the HTTP/2 handshake never completes), and bad
input in a login check (a 100 KB account name, an adapter that blows up). Each ends that attempt
or that request, never the worker process.

(tests/test_worker_survives_stall.py does the same with real processes and a 20 s SIGSTOP.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import anyio
import grpc
import pytest
from conftest import coordinator_server

from postroom.clock import SystemClock
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as pb
from worker.adapters.base import AdapterRegistry, PlatformAdapter
from worker.config import BackoffPolicy, Capability, WorkerConfig
from worker.job_runner import JobRunner
from worker.shell import Worker

WAIT_S = 10.0


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[str, list[int]]]:
    """Accepts TCP connections and never answers (as a stopped process's kernel does)."""
    accepted: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted))
        writers.append(writer)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}", accepted
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


class FreezingProxy:
    """A TCP proxy in front of the coordinator that can freeze: bytes stop flowing both ways
    and new connections are accepted but not connected on (what a SIGSTOPped process looks
    like from the network), until thawed."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.thawed = asyncio.Event()
        self.thawed.set()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        await self.thawed.wait()
        host, _, port = self.upstream.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        self._writers.append(up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self.thawed.wait()
            writer.write(data)
            await writer.drain()
        writer.close()

    async def close(self) -> None:
        self.thawed.set()
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()


class ExplodingAdapter:
    """Every call fails with an error no adapter is supposed to raise."""

    async def check_login(self, account: str) -> bool:
        raise RuntimeError(f"boom on {account[:10]}")

    async def close(self) -> None:
        pass


def _config(address: str, **kw: object) -> WorkerConfig:
    return WorkerConfig(
        coordinator=address,
        device_id=str(kw.pop("device_id", "robust-1")),
        capabilities=(Capability("sandbox", "acme"),),
        welcome_timeout_s=0.3,
        reconnect=BackoffPolicy(initial_s=0.05, factor=1.0, max_s=0.05),
        drain_timeout_s=2.0,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.anyio
async def test_a_coordinator_that_never_answers_is_dialled_again_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="postroom.worker.session")

    def attempts() -> int:
        return sum("no Welcome within" in r.getMessage() for r in caplog.records)

    async with silent_server() as (address, accepted):
        worker = Worker(config=_config(address), adapters=AdapterRegistry({}))
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(WAIT_S):
                while attempts() < 3:  # noqa: ASYNC110 - a poll with a deadline, on purpose
                    await anyio.sleep(0.01)
            worker.stop()  # holds no job: returns at once, without an exception
        assert accepted, "it did reach the silent server"
        assert worker.sessions_started == 0


@pytest.mark.anyio
async def test_a_coordinator_frozen_mid_session_is_waited_out_and_rejoined(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="postroom.worker.session")

    def failures() -> int:
        return sum("stream to" in r.getMessage() for r in caplog.records)

    async with coordinator_server(
        tmp_path, fake_clock=False, heartbeat_interval_s=0.2, lease_ttl_s=0.6
    ) as env:
        proxy = FreezingProxy(env.address)
        address = await proxy.start()
        worker = Worker(config=_config(address, device_id="robust-3"), adapters=AdapterRegistry({}))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                with anyio.fail_after(WAIT_S):
                    await worker.ready.wait()
                    proxy.thawed.clear()  # the coordinator stalls
                    # Its silence is noticed, and dialling again into the stall times out twice.
                    while failures() < 3:  # noqa: ASYNC110 - a poll with a deadline
                        await anyio.sleep(0.01)
                    proxy.thawed.set()  # it continues
                    while worker.sessions_started < 2:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                worker.stop()
        finally:
            await proxy.close()


@pytest.mark.anyio
async def test_a_login_check_for_a_100kb_account_is_answered_without_asking_anyone() -> None:
    calls: list[str] = []

    class Recording(ExplodingAdapter):
        async def check_login(self, account: str) -> bool:
            calls.append(account)
            return True

    runner = JobRunner(
        adapters=AdapterRegistry({"sandbox": lambda name: cast(PlatformAdapter, Recording())}),
        clock=SystemClock(),
        slots=1,
    )
    state, message = await runner.check_login("sandbox", "a" * 100_000)
    assert state == pb.LOGIN_STATE_UNKNOWN
    assert "not an account name" in message
    assert calls == []


@pytest.mark.anyio
async def test_a_login_check_that_blows_up_ends_that_check_not_the_worker(tmp_path: Path) -> None:
    async with (
        coordinator_server(tmp_path, fake_clock=False) as env,
        grpc.aio.insecure_channel(env.address) as channel,
    ):
        stub = publishing_pb2_grpc.PublishingStub(channel)
        worker = Worker(
            config=_config(env.address, device_id="robust-2"),
            adapters=AdapterRegistry(
                {"sandbox": lambda name: cast(PlatformAdapter, ExplodingAdapter())}
            ),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(WAIT_S):
                await worker.ready.wait()
            answer = await stub.CheckLogin(
                pub.CheckLoginRequest(device_id="robust-2", platform="sandbox", account="acme")
            )
            assert answer.badge.state == pb.LOGIN_STATE_UNKNOWN
            assert "RuntimeError" in answer.badge.message
            # Still the same session, still answering.
            again = await stub.CheckLogin(
                pub.CheckLoginRequest(device_id="robust-2", platform="sandbox", account="acme")
            )
            assert again.badge.state == pb.LOGIN_STATE_UNKNOWN
            assert worker.sessions_started == 1
            worker.stop()
