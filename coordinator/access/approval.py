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


def applies(credentials: Credentials, principal: Principal | None) -> bool:
    """Does the four-eyes rule judge this caller (authenticated, self-approval not allowed)?"""
    return (
        principal is not None
        and principal.authenticated
        and not credentials.policy.allow_self_approval
    )


def check_not_author(
    post_id: str, principal: Principal | None, found: frozenset[str] | None
) -> None:
    """`found`: the post's authors (None: the rule does not apply to this approval)."""
    if principal is None or found is None:
        return
    if principal.actor in found:
        raise PermissionDenied(
            f"{principal.actor} created or edited post {post_id}: someone else must approve it "
            "(a deployment may allow this with `postroom coordinator --allow-self-approval`)"
        )
