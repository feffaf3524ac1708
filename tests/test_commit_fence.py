"""The commit fence (worker/fence.py) over real sockets: a request of a commit whose lease is
gone is never written, however late its connection came up; outside a commit nothing changes;
every connection closes with a reset."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from worker.adapters.http import send
from worker.errors import LeaseLost
from worker.fence import commit_fence

ANSWER = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class Platform:
    """A one-answer HTTP server on 127.0.0.1 port 0 that keeps every byte it receives."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            data = await reader.read(65536)
            self.received += data
            if data:
                writer.write(ANSWER)
                await writer.drain()
            else:
                await reader.read()  # the client closed without sending: nothing to answer
        finally:
            writer.close()


@asynccontextmanager
async def platform() -> AsyncIterator[Platform]:
    p = Platform()
    server = await asyncio.start_server(p._serve, "127.0.0.1", 0)
    p.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield p
    finally:
        server.close()
        await server.wait_closed()


async def post(p: Platform) -> httpx.Response:
    async with httpx.AsyncClient(base_url=p.url, timeout=5) as client:
        request = client.build_request("POST", "/posts", json={"text": "hello"})
        return await send(client, request, platform="sandbox")


@pytest.mark.anyio
async def test_a_commit_whose_lease_is_gone_sends_no_byte() -> None:
    async with platform() as p:
        refused = pytest.raises(LeaseLost, match="not sending POST /posts: lease lost")
        with refused, commit_fence(lambda: "lease lost"):
            await post(p)
        assert bytes(p.received) == b""  # the connection came up; the request never left


@pytest.mark.anyio
async def test_the_fence_is_asked_when_the_request_leaves_not_when_the_commit_begins() -> None:
    verdicts: list[str | None] = [None]  # the lease was fine when the commit began ...
    async with platform() as p:
        with commit_fence(lambda: verdicts[-1]):
            assert (await post(p)).status_code == 201
            verdicts.append("the job is no longer held")  # ... and is lost before the next one
            with pytest.raises(LeaseLost, match="no longer held"):
                await post(p)
        assert bytes(p.received).count(b"POST /posts") == 1


@pytest.mark.anyio
async def test_requests_outside_a_commit_are_not_fenced() -> None:
    async with platform() as p:
        with commit_fence(lambda: "lease lost"):
            pass
        assert (await post(p)).status_code == 201
        assert bytes(p.received).startswith(b"POST /posts")


@pytest.mark.anyio
async def test_connections_close_with_a_reset_so_unacknowledged_bytes_never_land_later() -> None:
    lingers: list[tuple[int, int]] = []

    async def spy(event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            sock = info["return_value"].get_extra_info("socket")
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.calcsize("ii"))
            lingers.append(struct.unpack("ii", raw))

    async with platform() as p, httpx.AsyncClient(base_url=p.url, timeout=5) as client:
        request = client.build_request("GET", "/posts", extensions={"trace": spy})
        assert (await send(client, request, platform="sandbox")).status_code == 201
    assert lingers == [(1, 0)]  # set before anyone else saw the connection: on, 0 seconds
