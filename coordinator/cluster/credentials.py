"""Operator tokens and device enrollments, the same at every coordinator of a database.

Each coordinator checks tokens against its own memory (coordinator/access/registry.py's
Credentials), but only one changes them: in cluster mode the token and enrollment commands are
routed to shard 0's owner (route.py). The others follow the store: a batch that writes tokens or
enrollments notifies `postroom_credentials` at commit (store/postgres.py), and on each notice,
and every `reload_s` anyway (a notice sent while the listening connection was down is lost),
every coordinator reads them all again and merges them into its Credentials
(Credentials.merge: a revocation is never undone, a device's newer token wins). So a token
created at one coordinator is accepted at every other within a round trip of the database, and
a revoked one refused as fast; the reload bounds both by `reload_s` if a notice goes missing.

A device revoked or given a new token elsewhere loses its sessions here too, as RevokeDevice
ends them where it runs (access/changes.py): the actor hears the stream lost ("device revoked",
its leases recovered as a lost stream's), then the stream's outbox is closed, so the gateway
ends it with UNAUTHENTICATED saying why (access/devices.py end_status). Likewise every session
opened while the coordinators were open ends once another turned authentication on.

The merge is one synchronous step between the actor's, not a command in its mailbox: it must
also run on a coordinator whose actor does not (a standby, or one holding no shard, still checks
the tokens of the calls it forwards), and the sessions it ends exist only where the actor runs.

Wiring (cluster/serve.py, every coordinator, from the start):
`tg.start_soon(follow_credentials, store, coordinator)`.
"""

from __future__ import annotations

import contextlib
import logging

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from coordinator.access.registry import Merged
from coordinator.actor import Coordinator
from coordinator.errors import StoreError
from coordinator.leasing.commands import StreamLost
from coordinator.store.postgres import PostgresStore

log = logging.getLogger("postroom.coordinator")
# The safety net's period: how stale a coordinator's credentials can be when a notice is lost.
DEFAULT_RELOAD_S = 5.0


async def follow_credentials(
    store: PostgresStore, coordinator: Coordinator, *, reload_s: float = DEFAULT_RELOAD_S
) -> None:
    """Keep `coordinator`'s credentials those of the store, until cancelled: reload them on
    every notice and every `reload_s`. A listening connection the server dropped is opened
    again (and the credentials reloaded: notices sent meanwhile are lost)."""
    while True:
        try:
            async with store.listen_credentials() as notified:
                # Listening first: a change committed from here on is noticed, one before it
                # is read now.
                await reload_credentials(store, coordinator)
                while await _next_notice(notified, reload_s):
                    await reload_credentials(store, coordinator)
        except StoreError as exc:
            log.warning("following credentials failed (will retry): %s", exc)
            await anyio.sleep(reload_s)  # pacing the retries, not waiting for a result


async def _next_notice(notified: MemoryObjectReceiveStream[str], wait_s: float) -> bool:
    """Wait for a notice (those already queued come with it: one reload for all), or `wait_s`;
    False once the listening connection is gone."""
    with anyio.move_on_after(wait_s):
        try:
            await notified.receive()
        except anyio.EndOfStream:
            return False
    while True:
        try:
            notified.receive_nowait()
        except anyio.WouldBlock:
            return True
        except anyio.EndOfStream:
            return False


async def reload_credentials(store: PostgresStore, coordinator: Coordinator) -> Merged:
    """Read every token and enrollment, merge them into the coordinator's credentials, and end
    the sessions of the devices revoked or given a new token. What changed."""
    tokens = await store.list_operator_tokens()
    enrollments = await store.list_enrollments()
    creds = coordinator.credentials
    merged = creds.merge(tokens, enrollments)
    # The sessions to end, taken in the same synchronous step as the merge: a session opened
    # after it proved the credentials as they are now.
    doomed: list[tuple[str, str]] = []
    for session in coordinator.core.sessions.values():
        if merged.turned_auth_on:
            doomed.append((session.id, "authentication turned on"))
        elif why := merged.ended.get(session.device_id):
            doomed.append((session.id, why))
    if merged:
        log.info(
            "credentials changed elsewhere: %d tokens, %d enrolled, %d revoked or replaced%s",
            len(merged.tokens),
            len(merged.enrolled),
            len(merged.ended),
            ", authentication on" if merged.turned_auth_on else "",
        )
    for session_id, reason in doomed:
        # The actor first, then the stream: its gateway posts a second StreamLost, a no-op.
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await coordinator.post(StreamLost(session_id, reason))
        coordinator.close_outbox(session_id)
    return merged
