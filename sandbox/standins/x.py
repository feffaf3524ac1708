"""A stand-in for the X API v2, mounted at `/x` by `postroom sandbox` (base_url `{sandbox}/x`).

It serves what postroom's X adapter uses, with the paths, bodies, headers and error shapes of
X's OpenAPI description (xdevplatform/xdk `specs/openapi.json`, subset in
tests/contracts/x-openapi.json, checked with schemathesis) and X's documentation
(https://docs.x.com/x-api): `POST /2/tweets`, `GET /2/users/me`, `GET /2/users/{id}/tweets`,
the media upload (`POST /2/media/upload/initialize`, `/{id}/append`, `/{id}/finalize`,
`GET /2/media/upload?command=STATUS`) and the OAuth 2.0 refresh (`POST /2/oauth2/token`).
It issues and checks bearer tokens (refresh rotates both), refuses a recent same-text tweet with
X's 403 "duplicate content", counts rate-limit windows and sends X's `x-rate-limit-*` and
24-hour headers, and records every tweet it accepts.

Admin, under `/_standin`: `POST accounts` {username, access_token, refresh_token, client_id,
client_secret?, token_ttl_s?, tweets_per_day?, requests_per_window?}; `GET accounts/{username}`
(its current tokens); `POST accounts/{username}/expire` / `revoke`; `POST|GET|DELETE faults`
(see x_faults.Fault); `GET tweets?username=`; `GET stats`.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.standins.x_faults import (
    DUPLICATE_DETAIL,
    FaultKind,
    Op,
    Reply,
    Window,
    invalid_request,
    problem,
    rate_limit_headers,
)
from sandbox.standins.x_gate import Gate, ok, send
from sandbox.standins.x_media import MediaApi
from sandbox.standins.x_params import (
    TimelineQuery,
    bad_query,
    check_me_query,
    fields_of,
    parse_timeline_query,
)
from sandbox.standins.x_state import (
    MAX_WEIGHTED_LENGTH,
    Account,
    Clock,
    Tweet,
    XState,
    rfc3339,
    weighted_length,
)
from sandbox.standins.x_tokens import AdminApi, TokenApi

_CREATE_FIELDS = frozenset(
    {
        "card_uri",
        "community_id",
        "direct_message_deep_link",
        "edit_options",
        "for_super_followers_only",
        "geo",
        "made_with_ai",
        "media",
        "nullcast",
        "paid_partnership",
        "poll",
        "quote_tweet_id",
        "reply",
        "reply_settings",
        "share_with_followers",
        "text",
    }
)


class TweetsApi:
    def __init__(self, state: XState, gate: Gate) -> None:
        self.state = state
        self.gate = gate

    async def create(self, request: Request) -> Response:
        entered = self.gate.enter(request, Op.CREATE)
        if isinstance(entered, Response):
            return entered
        account, fault, rate = entered
        state = self.state
        headers = rate_limit_headers(
            rate, user_day=state.user_day(account), app_day=state.app_day()
        )
        try:
            body = await request.json()
        except ValueError:
            return send(invalid_request("Request body is not valid JSON."), headers)
        parsed = _create_body(body)
        if isinstance(parsed, Reply):
            return send(parsed, headers)
        text, media_ids = parsed
        problem_reply = self._content_problem(account, text, media_ids)
        if problem_reply is not None:
            return send(problem_reply, headers)
        user_day, app_day = state.user_day(account), state.app_day()
        if user_day.remaining <= 0 or app_day.remaining <= 0:
            exhausted = Window(user_day.limit, 0, user_day.reset)
            app = Window(app_day.limit, 0, app_day.reset) if app_day.remaining <= 0 else app_day
            return send(problem(429), rate_limit_headers(rate, user_day=exhausted, app_day=app))
        tweet = state.record(account, text, media_ids)
        headers = rate_limit_headers(
            rate, user_day=state.user_day(account, use=True), app_day=state.app_day(use=True)
        )
        if fault is not None and fault.kind is FaultKind.ACCEPT_THEN_HANG:
            # The tweet exists; the client never hears so (it times out, or dies waiting).
            await _hang(request, fault.hang_s)
            return send(problem(503))
        data = {"id": tweet.id, "text": tweet.shown, "edit_history_tweet_ids": [tweet.id]}
        return ok({"data": data}, 201, headers)

    def _content_problem(self, account: Account, text: str, media_ids: list[str]) -> Reply | None:
        if not text.strip() and not media_ids:
            return invalid_request("Post text or media is required.", {"text": [text]})
        length = weighted_length(text)
        if length > MAX_WEIGHTED_LENGTH:
            message = f"Post text is too long ({length} weighted characters; the limit is 280)."
            return invalid_request(message, {"text": [text[:50]]})
        now = self.state.clock()
        uploads = [self.state.uploads.get(media_id) for media_id in media_ids]
        alone = {"tweet_video", "tweet_gif", "amplify_video"}
        if (
            any(u is None or u.username != account.username or not u.usable(now) for u in uploads)
            or (len(uploads) > 1 and any(u is not None and u.category in alone for u in uploads))
            or len(set(media_ids)) != len(media_ids)
        ):
            return invalid_request("Your media IDs are invalid.", {"media.media_ids": media_ids})
        if self.state.duplicate_of(account, text) is not None:
            return problem(403, DUPLICATE_DETAIL)
        return None

    async def me(self, request: Request) -> Response:
        entered = self.gate.enter(request, Op.ME)
        if isinstance(entered, Response):
            return entered
        account, _, rate = entered
        wrong = check_me_query(request.query_params.multi_items())
        if wrong is not None:
            return send(wrong, rate_limit_headers(rate))
        return ok({"data": account.public_json()}, headers=rate_limit_headers(rate))

    async def timeline(self, request: Request) -> Response:
        entered = self.gate.enter(request, Op.TIMELINE)
        if isinstance(entered, Response):
            return entered
        _, _, rate = entered
        headers = rate_limit_headers(rate)
        user_id = request.path_params["id"]
        if not user_id.isdigit() or len(user_id) > 19:
            return send(bad_query("id", user_id), headers)
        query = parse_timeline_query(request.query_params.multi_items())
        if isinstance(query, Reply):
            return send(query, headers)
        if self.state.user_by_id(user_id) is None:
            return ok({"errors": [_user_not_found(user_id)]}, headers=headers)
        tweets = [t for t in self.state.timeline(user_id) if query.admits(t)]
        page = tweets[query.offset : query.offset + query.max_results]
        meta: dict[str, Any] = {"result_count": len(page)}
        if not page:
            return ok({"meta": meta}, headers=headers)
        meta |= {"newest_id": page[0].id, "oldest_id": page[-1].id}
        if query.offset + query.max_results < len(tweets):
            meta["next_token"] = TimelineQuery.token_for(query.offset + query.max_results)
        fields = fields_of(query.fields)
        return ok({"data": [_tweet_json(t, fields) for t in page], "meta": meta}, headers=headers)


def _create_body(body: object) -> tuple[str, list[str]] | Reply:
    if not isinstance(body, dict):
        return invalid_request("Request body must be a JSON object.")
    for key in body:
        if key not in _CREATE_FIELDS:
            return invalid_request(
                f"$.{key}: is not defined in the schema and the schema does not allow "
                "additional properties"
            )
    text = body.get("text", "")
    if not isinstance(text, str):
        return invalid_request("$.text: string found, " + type(text).__name__ + " expected")
    media = body.get("media")
    media_ids: list[str] = []
    if media is not None:
        ids = media.get("media_ids") if isinstance(media, dict) else None
        if (
            not isinstance(ids, list)
            or not 1 <= len(ids) <= 4
            or not all(isinstance(i, str) and i.isdigit() and len(i) <= 19 for i in ids)
        ):
            return invalid_request("Your media IDs are invalid.", {"media.media_ids": [str(ids)]})
        media_ids = list(ids)
    return text, media_ids


def _tweet_json(tweet: Tweet, fields: frozenset[str]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": tweet.id,
        "text": tweet.shown,
        "edit_history_tweet_ids": [tweet.id],
    }
    if "created_at" in fields:
        data["created_at"] = rfc3339(tweet.created_at)
    if "author_id" in fields:
        data["author_id"] = tweet.author_id
    if "attachments" in fields and tweet.media_ids:
        data["attachments"] = {"media_keys": [f"3_{m}" for m in tweet.media_ids]}
    return data


def _user_not_found(user_id: str) -> dict[str, Any]:
    return {
        "value": user_id,
        "detail": f"Could not find user with id: [{user_id}].",
        "title": "Not Found Error",
        "resource_type": "user",
        "parameter": "id",
        "resource_id": user_id,
        "type": "https://api.x.com/2/problems/resource-not-found",
    }


async def _hang(request: Request, seconds: float) -> None:
    # Until the client gives up (a SIGKILLed worker's socket closes) or `seconds` pass.
    with anyio.move_on_after(seconds):
        while (await request.receive())["type"] != "http.disconnect":
            pass


async def _http_problem(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer X's problem JSON too, never a bare text page."""
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    return send(problem(status))


def create_app(*, clock: Clock = time.time) -> Starlette:
    """A fresh X stand-in with no accounts; `clock` gives Unix seconds."""
    state = XState(clock=clock)
    gate = Gate(state)
    tweets, media = TweetsApi(state, gate), MediaApi(state, gate)
    tokens, admin = TokenApi(state), AdminApi(state)
    app = Starlette(
        exception_handlers={404: _http_problem, 405: _http_problem},
        routes=[
            Route("/2/tweets", tweets.create, methods=["POST"]),
            Route("/2/users/me", tweets.me, methods=["GET"]),
            Route("/2/users/{id}/tweets", tweets.timeline, methods=["GET"]),
            Route("/2/media/upload/initialize", media.initialize, methods=["POST"]),
            Route("/2/media/upload/{id}/append", media.append, methods=["POST"]),
            Route("/2/media/upload/{id}/finalize", media.finalize, methods=["POST"]),
            Route("/2/media/upload", media.status, methods=["GET"]),
            Route("/2/oauth2/token", tokens.token, methods=["POST"]),
            Route("/_standin/accounts", admin.add_account, methods=["POST"]),
            Route("/_standin/accounts/{username}", admin.get_account, methods=["GET"]),
            Route("/_standin/accounts/{username}/expire", admin.expire, methods=["POST"]),
            Route("/_standin/accounts/{username}/revoke", admin.revoke, methods=["POST"]),
            Route("/_standin/faults", admin.add_fault, methods=["POST"]),
            Route("/_standin/faults", admin.list_faults, methods=["GET"]),
            Route("/_standin/faults", admin.clear_faults, methods=["DELETE"]),
            Route("/_standin/tweets", admin.tweets, methods=["GET"]),
            Route("/_standin/stats", admin.stats, methods=["GET"]),
        ],
    )
    app.state.x = state
    return app


def x_state(app: Starlette) -> XState:
    state = app.state.x
    assert isinstance(state, XState)
    return state
