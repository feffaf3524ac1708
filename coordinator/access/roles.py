"""The least role each `postroom.v1.Publishing` RPC needs: one table, checked at the edge.

A method missing from the table needs ADMIN (fail closed); a test checks that the table names
every method of the service, so a new RPC cannot slip through unclassified.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from coordinator.access.records import Role

PUBLISHING_SERVICE = "postroom.v1.Publishing"

_V, _AU, _AP, _AD = Role.VIEWER, Role.AUTHOR, Role.APPROVER, Role.ADMIN

RPC_ROLES: Mapping[str, Role] = MappingProxyType(
    {
        # Reading: posts, jobs, their logs and screenshots, devices, gates, the audit log.
        "GetPost": _V,
        "ListPosts": _V,
        "GetJob": _V,
        "ListJobs": _V,
        "WatchJob": _V,
        "GetAsset": _V,
        "ListDevices": _V,
        "ListRateLimits": _V,
        "ListAuditEvents": _V,
        "WatchEvents": _V,
        "WhoAmI": _V,
        # Writing posts and driving them; nothing goes out without an approver.
        "CreatePost": _AU,  # approved at once (approve): approver, checked by the RPC
        "CreatePosts": _AU,  # likewise, per post
        "UpdatePost": _AU,
        "SubmitPost": _AU,
        "SchedulePost": _AU,
        "CancelPost": _AU,
        "DeletePost": _AU,
        "CancelJob": _AU,
        "RetryJob": _AU,  # with force (through a closed gate): approver, checked by the RPC
        "CheckLogin": _AU,
        # Letting content out, and overriding the safety nets.
        "ApprovePost": _AP,
        "ConfirmJob": _AP,
        "ResolveJob": _AP,  # says a post is out: as strong as approving it
        "ReopenRateLimit": _AP,
        # Who may talk to the coordinator.
        "CreateToken": _AD,
        "ListTokens": _AD,
        "RevokeToken": _AD,
        "EnrollDevice": _AD,
        "ListEnrollments": _AD,
        "RevokeDevice": _AD,
    }
)


def needed_role(method: str) -> Role:
    return RPC_ROLES.get(method, Role.ADMIN)
