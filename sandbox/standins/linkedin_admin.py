"""The LinkedIn stand-in's admin API (`/_standin/...`, not LinkedIn's): register members and
their tokens, inject faults, read back the posts and request counts. See sandbox/standins/
linkedin.py for the routes and what each takes.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandbox.standins.linkedin_model import FaultError, LinkedInState, Member, parse_fault


class Admin:
    def __init__(self, state: LinkedInState) -> None:
        self.state = state

    async def add_tokens(self, request: Request) -> Response:
        data = await request.json()
        member, token = data.get("member"), data.get("access_token")
        orgs = data.get("organizations", [])
        if not isinstance(member, str) or not isinstance(token, str) or not token:
            return JSONResponse({"error": "member and access_token are required"}, 400)
        known = self.state.members.get(member)
        self.state.members[member] = Member(
            urn=member, organizations=tuple(orgs) or (known.organizations if known else ())
        )
        self.state.access_tokens[token] = member
        self.state.expired.discard(token)
        refresh, client_id = data.get("refresh_token"), data.get("client_id")
        if isinstance(client_id, str):
            self.state.clients[client_id] = str(data.get("client_secret", ""))
        if isinstance(refresh, str) and isinstance(client_id, str):
            self.state.refresh_tokens[refresh] = (member, client_id)
        return JSONResponse({"member": member}, status_code=201)

    async def list_tokens(self, request: Request) -> Response:
        member = request.query_params.get("member", "")
        return JSONResponse({"member": member, "issued": self.state.issued.get(member, [])})

    async def add_fault(self, request: Request) -> Response:
        try:
            fault = parse_fault(await request.json())
        except (ValueError, FaultError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        self.state.faults.append((fault, [fault.count]))
        return JSONResponse({"kind": fault.kind.value, "count": fault.count}, status_code=201)

    async def list_faults(self, request: Request) -> Response:
        faults = [
            {"kind": f.kind.value, "op": f.op.value, "member": f.member, "remaining": left[0]}
            for f, left in self.state.faults
        ]
        return JSONResponse({"faults": faults})

    async def clear_faults(self, request: Request) -> Response:
        cleared = len(self.state.faults)
        self.state.faults.clear()
        return JSONResponse({"cleared": cleared})

    async def admin_posts(self, request: Request) -> Response:
        author = request.query_params.get("author")
        posts = [p.admin_json() for p in self.state.posts if author in (None, p.author)]
        return JSONResponse({"posts": posts, "count": len(posts)})

    async def stats(self, request: Request) -> Response:
        return JSONResponse(
            {
                "requests": dict(self.state.requests),
                "by_member": {m: dict(c) for m, c in self.state.member_requests.items()},
                "posts": len(self.state.posts),
                "hanging": self.state.hanging,
            }
        )
