"""Four eyes: a post is approved by someone who neither created nor edited its content.

Authorship comes from the audit log (POST_CREATED, and POST_UPDATED events that changed the
text, media or targets), which is append-only and names token identities once authentication is
on. Only authenticated approvals are checked: on an open coordinator the actor is whatever the
caller typed, so the check would prove nothing. `--allow-self-approval` turns it off.
"""

from __future__ import annotations

from coordinator.access.registry import Credentials, Principal
from coordinator.errors import PermissionDenied
from coordinator.store.base import Store

CONTENT_FIELDS = frozenset({"text", "media", "targets"})
MAX_AUTHOR_EVENTS = 10_000


async def authors(store: Store, post_id: str) -> set[str]:
    """Actors who created the post or changed its content."""
    found: set[str] = set()
    for action in ("POST_CREATED", "POST_UPDATED"):
        events = await store.list_audit(
            since=None, subject_id=post_id, action=action, after_seq=0, limit=MAX_AUTHOR_EVENTS
        )
        for event in events:
            changed = event.details.get("changed") if action == "POST_UPDATED" else None
            if changed is None or CONTENT_FIELDS & set(changed):
                found.add(event.actor)
    return found


async def check_not_author(
    store: Store, credentials: Credentials, post_id: str, principal: Principal | None
) -> None:
    """`principal`: the caller, taken in the RPC's task (the actor runs in its own)."""
    if principal is None or not principal.authenticated:
        return
    if credentials.policy.allow_self_approval:
        return
    if principal.actor in await authors(store, post_id):
        raise PermissionDenied(
            f"{principal.actor} created or edited post {post_id}: someone else must approve it "
            "(a deployment may allow this with `postroom coordinator --allow-self-approval`)"
        )
