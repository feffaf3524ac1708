"""Which owners a fanned-out worker stream reaches (fanout.py), and its channels to them.

fanout.py's `FanOutWorkers` proxies a worker's stream to every shard owner (`owners()`: the live
shard holders as of this coordinator's last ownership turn, its own address first). When an
owner dies, `owners()` still names it until its shard leases run out (the ownership TTL and a
turn); a stream that needed a leg to it would fail, and every reconnect with it, until then.
So `LiveOwners` gives the streams `owners()` less the addresses marked DOWN:

- An address is marked down when a leg to it cannot be opened: its connection is refused or
  broken (the channel is in TRANSIENT_FAILURE once a connection was tried, or SHUTDOWN), or is
  not up within `connect_timeout_s`. One probe per address at a time, shared by the streams
  opening meanwhile (a kill makes every stream that had a leg to the victim reconnect at once).
  A leg that fails UNAVAILABLE before its Welcome while its connection is not up (the owner died
  between the probe and the Hello) marks it too. An owner that answers, even to refuse the worker,
  is not down: its answer is the worker's.
- A mark is process-wide and lasts until the address is no longer an owner or `down_s` has
  passed (main.py: twice the ownership TTL, by when a dead owner's shards are claimed by the
  others), whichever comes first. So the set a stream compares with `owners()` at each heartbeat
  is unchanged when the survivors claim the dead owner's shards (its address leaves `owners()`
  and its mark with it), and changes, re-establishing the streams with a leg to it, when it is an
  owner again (restarted: its mark was dropped when it left) or its mark runs out (then a probe
  decides again).

`OwnerChannels` keeps one channel per owner; their reconnection back-off is capped at a second so
a coordinator back at its address is seen up soon after it listens (gRPC's default grows to 2
minutes while it is away).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from coordinator.cluster.forward import DEFAULT_MAX_FORWARDED_MESSAGE_BYTES
from postroom.tls import ClientTls, aio_channel

# How long a leg's connection may take to come up before its owner counts as down.
DEFAULT_CONNECT_TIMEOUT_S = 3.0
# How long an owner stays marked down at most: twice the default ownership TTL (member.py's
# DEFAULT_OWNERSHIP_TTL_S, 6 s); main.py passes twice the configured one.
DEFAULT_OWNER_DOWN_S = 12.0
# The longest wait between two connection attempts of a channel to an owner that is away.
MAX_RECONNECT_BACKOFF_MS = 1_000

_READY = grpc.ChannelConnectivity.READY
_FAILING = grpc.ChannelConnectivity.TRANSIENT_FAILURE
_SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN

log = logging.getLogger("postroom.coordinator")


class OwnerChannels:
    """One channel per owner's address, kept until `close()`: a fanned-out stream holds a call
    to every owner at once, so ForwardToActive.channel (one cached channel, older ones retired
    and closed) would close live legs. Owners are few (the live coordinators)."""

    def __init__(
        self,
        tls: ClientTls,
        *,
        channel_options: Sequence[tuple[str, int | str]] = (
            ("grpc.max_receive_message_length", DEFAULT_MAX_FORWARDED_MESSAGE_BYTES),
            ("grpc.max_send_message_length", DEFAULT_MAX_FORWARDED_MESSAGE_BYTES),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ),
    ) -> None:
        self._tls = tls
        self._options = tuple(channel_options)
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = aio_channel(address, self._tls, options=self._options)
        return self._channels[address]

    async def close(self) -> None:
        """Close every channel (the server has stopped)."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)


@dataclass(slots=True)
class DownOwners:
    """The owner addresses marked down, each until `monotonic()` passes its time (pure: the
    clock is injected)."""

    down_s: float
    monotonic: Callable[[], float] = time.monotonic
    until: dict[str, float] = field(default_factory=dict)

    def mark(self, address: str) -> bool:
        """Mark `address` down for `down_s` from now; True when it was not marked."""
        now = self.monotonic()
        fresh = self.until.get(address, now) <= now
        self.until[address] = now + self.down_s
        return fresh

    def live(self, owners: Sequence[str]) -> list[str]:
        """`owners` less those marked down; a mark of an address no longer an owner, or run
        out, is forgotten."""
        now = self.monotonic()
        self.until = {a: t for a, t in self.until.items() if t > now and a in owners}
        return [a for a in owners if a not in self.until]


async def connects(channel: grpc.aio.Channel, timeout_s: float) -> bool:
    """Whether `channel`'s connection is up, or comes up within `timeout_s`. A channel already
    failing (it retries at most MAX_RECONNECT_BACKOFF_MS apart) is given its next attempt."""
    first = True
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                state = channel.get_state(try_to_connect=True)
                if state is _READY:
                    return True
                if state is _SHUTDOWN or (state is _FAILING and not first):
                    return False
                first = False
                await channel.wait_for_state_change(state)
    except TimeoutError:
        return False


class LiveOwners:
    """The owners a fanned-out stream reaches: `owners()` less those marked down (module
    docstring), for every stream of this coordinator."""

    def __init__(
        self,
        owners: Callable[[], Sequence[str]],
        channel: Callable[[str], Awaitable[grpc.aio.Channel]],
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        down_s: float = DEFAULT_OWNER_DOWN_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._owners = owners
        self._channel = channel
        self._connect_timeout_s = connect_timeout_s
        self.down = DownOwners(down_s, monotonic)
        self._probes: dict[str, asyncio.Task[bool]] = {}  # address -> its probe under way

    def all(self) -> list[str]:
        """Every owner, once each, this coordinator first."""
        return list(dict.fromkeys(self._owners()))

    def now(self) -> list[str]:
        """The owners not marked down (what a stream's legs are compared with)."""
        return self.down.live(self.all())

    async def reachable(self) -> list[str]:
        """The owners not marked down whose connection is up (or came up in time); the others
        are marked down now."""
        candidates = self.now()
        up = await asyncio.gather(*(self._reachable(a) for a in candidates))
        return [a for a, ok in zip(candidates, up, strict=True) if ok]

    async def failed_open(self, address: str) -> None:
        """A leg to `address` ended UNAVAILABLE before its Welcome: down if its connection is
        not up (it died since its probe; an owner that answered is not down)."""
        channel = await self._channel(address)
        if channel.get_state(try_to_connect=False) is not _READY:
            self.mark_down(address)

    def mark_down(self, address: str) -> None:
        if self.down.mark(address):
            log.warning(
                "the shard owner at %s does not answer: workers' streams go on without it "
                "until it is no longer an owner (at most %g s, then it is tried again)",
                address,
                self.down.down_s,
            )

    async def _reachable(self, address: str) -> bool:
        probe = self._probes.get(address)
        if probe is None:
            probe = asyncio.create_task(self._probe(address))
            self._probes[address] = probe
        # Shielded: a stream that goes away does not cancel the others' probe.
        return await asyncio.shield(probe)

    async def _probe(self, address: str) -> bool:
        try:
            up = await connects(await self._channel(address), self._connect_timeout_s)
            if not up:
                self.mark_down(address)
            return up
        finally:
            del self._probes[address]
