"""Bluesky: one account on its PDS, through atproto's XRPC HTTP API.

Contract (https://docs.bsky.app/docs/api/at-protocol-xrpc-api, https://atproto.com/specs/xrpc):

    POST com.atproto.server.createSession   {identifier, password} -> {did, handle, accessJwt,
                                            refreshJwt}   (once per worker; rate limited 30/5 min)
    POST com.atproto.server.refreshSession  Bearer refreshJwt -> a new pair
    GET  com.atproto.server.getSession      (login check)
    GET  com.atproto.identity.resolveHandle ?handle= -> {did}        (mention facets)
    POST com.atproto.repo.uploadBlob        image bytes, Content-Type -> {blob}
    POST com.atproto.repo.createRecord      {repo, collection: app.bsky.feed.post, rkey, record}
                                            -> {uri, cid}
    GET  com.atproto.repo.getRecord         ?repo&collection&rkey -> {uri, value}   (verify)

Auth: `Authorization: Bearer <accessJwt>`. The session is the account's, kept for the worker's
life: an access token the PDS calls `ExpiredToken`/`InvalidToken` (HTTP 400) is refreshed once
(one refresh at a time) and the call repeated once; only when the refresh fails does the client
log in again. Credentials: `identifier` (handle, DID or e-mail) and `app_password`.

Errors, as the PDS answers them (`{"error": "...", "message": "..."}`): 429 `RateLimitExceeded`
-> RATE_LIMITED until `RateLimit-Reset` (epoch seconds; `RateLimit-Limit/Remaining/Policy`
beside it); 401 `AuthenticationRequired` ("Invalid identifier or password"), `AccountTakedown`,
`AccountDeactivated` -> AUTH_REQUIRED; 400 `InvalidRequest` (record validation, e.g. "grapheme
too big (maximum 300, ...)") -> INVALID_CONTENT; 5xx -> TRANSIENT.

Never twice: the record key is a TID derived from the job's platform key (bluesky_text.tid_for),
the same on every attempt. `verify` is a getRecord there. The PDS refuses a second create at a
key that exists (it answers 500 InternalServerError); the client then looks (getRecord) and
reports a Duplicate naming the record it found, which the runtime verifies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

import anyio
import httpx

from worker.accounts import AccountConfig, AccountsError
from worker.adapters import ratelimit
from worker.adapters.base import JobSpec, Prepared, Published
from worker.errors import (
    AdapterError,
    AuthRequired,
    Duplicate,
    InvalidContent,
    Transient,
)
from worker.media import MediaFile
from worker.platforms.base import PlatformClient, PlatformContext, Transcript, json_of
from worker.platforms.bluesky_text import detect_spans, facet, image_size, tid_for

POST_COLLECTION = "app.bsky.feed.post"
DEFAULT_APP_URL = "https://bsky.app"
# app.bsky.embed.images: at most 4 images of at most 1,000,000 bytes each.
MAX_IMAGES = 4
MAX_IMAGE_BYTES = 1_000_000
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
# What the PDS says about a session token it no longer takes (HTTP 400, or 401 elsewhere).
_STALE_TOKEN_ERRORS = frozenset({"ExpiredToken", "InvalidToken"})
_AUTH_ERRORS = frozenset(
    {
        "AuthenticationRequired",
        "AuthMissing",
        "AuthFactorTokenRequired",
        "AccountTakedown",
        "AccountDeactivated",
        *_STALE_TOKEN_ERRORS,
    }
)


@dataclass(frozen=True, slots=True)
class Session:
    did: str
    handle: str
    access_jwt: str
    refresh_jwt: str


RequestFor = Callable[[Session], httpx.Request]


class BlueskyClient(PlatformClient):
    platform: ClassVar[str] = "bluesky"

    def __init__(self, account: AccountConfig, ctx: PlatformContext) -> None:
        super().__init__(account, ctx)
        self._identifier = account.secret("identifier")
        self._password = account.secret("app_password")
        self._app_url = account.str_option("app_url", DEFAULT_APP_URL).rstrip("/")
        langs = account.str_option("langs", "")
        self._langs = [lang.strip() for lang in langs.split(",") if lang.strip()]
        if len(self._langs) > 3:
            raise AccountsError(f"account {account.label}: langs takes at most 3 languages")
        self._session: Session | None = None
        # One login or refresh at a time: concurrent jobs wait for it and share the result.
        self._session_lock = anyio.Lock()
        self.logins = 0
        self.refreshes = 0

    # ---- the post ------------------------------------------------------------------------

    async def prepare(self, job: JobSpec, t: Transcript) -> Prepared:
        media = await self.ctx.media.load_all(job.media)
        _check_media(media)
        facets = await self._facets(job.text, t)
        record: dict[str, object] = {
            "$type": POST_COLLECTION,
            "text": job.text,
            "createdAt": _iso(self.clock.now()),
        }
        if facets:
            record["facets"] = facets
        if self._langs:
            record["langs"] = self._langs
        if media:
            record["embed"] = {
                "$type": "app.bsky.embed.images",
                "images": [await self._image(file, t) for file in media],
            }
        rkey = tid_for(job.platform_key or job.job_id)
        return Prepared(
            payload={"rkey": rkey, "record": record},
            summary=f"{POST_COLLECTION} at rkey {rkey}: {len(facets)} facet(s), "
            f"{len(media)} image(s)",
        )

    async def commit(self, job: JobSpec, prepared: Prepared, t: Transcript) -> Published:
        rkey = str(prepared.payload["rkey"])
        session = await self._current(t)
        body = {
            "repo": session.did,
            "collection": POST_COLLECTION,
            "rkey": rkey,
            "record": prepared.payload["record"],
        }
        response = await self._authed(
            t, lambda s: self._xrpc("POST", "com.atproto.repo.createRecord", s, json=body)
        )
        if response.is_success:
            uri = json_of(response).get("uri")
            return self._published(session.did, rkey, uri if isinstance(uri, str) else None)
        if response.status_code >= 500:
            # A create at a key that exists fails with a bare 500: look before calling it so.
            found = await self._record(t, session.did, rkey)
            if found is not None:
                raise Duplicate(
                    f"bluesky: a record already exists at rkey {rkey}",
                    existing_id=found.post_id,
                    http_status=response.status_code,
                )
        raise self.error_for(response)

    async def verify(self, job: JobSpec, t: Transcript) -> Published | None:
        session = await self._current(t)
        return await self._record(t, session.did, tid_for(job.platform_key or job.job_id))

    async def check_login(self, t: Transcript) -> bool:
        try:
            if self._session is None:
                await self._current(t)
            else:
                self.check(
                    await self._authed(
                        t,
                        lambda s: self._xrpc("GET", "com.atproto.server.getSession", s),
                        sensitive=True,  # the answer holds the account's e-mail address
                    )
                )
        except AuthRequired:
            return False
        return True

    # ---- errors --------------------------------------------------------------------------

    def error_for(self, response: httpx.Response) -> AdapterError:
        status = response.status_code
        body = json_of(response)
        error = str(body.get("error") or "")
        detail = str(body.get("message") or response.reason_phrase)
        message = f"bluesky: HTTP {status} {error or response.reason_phrase}: {detail}"
        if status == 429:
            now = self.clock.now()
            limit = ratelimit.normalise(response.headers, now=now, body=body)
            return ratelimit.rate_limited(message, limit, now=now, http_status=status)
        if status in (401, 403) or error in _AUTH_ERRORS:
            return AuthRequired(message, http_status=status)
        if status == 404:
            # XRPCNotSupported / MethodNotImplemented: base_url is not a PDS. Someone must
            # fix the account; retrying the same cannot help.
            return AuthRequired(f"{message} (is base_url the account's PDS?)", http_status=status)
        if status == 408 or status >= 500:
            return Transient(message, http_status=status)
        return InvalidContent(message, http_status=status)

    # ---- records, blobs, facets ----------------------------------------------------------

    async def _record(self, t: Transcript, did: str, rkey: str) -> Published | None:
        params = {"repo": did, "collection": POST_COLLECTION, "rkey": rkey}
        response = await self._authed(
            t, lambda s: self._xrpc("GET", "com.atproto.repo.getRecord", s, params=params)
        )
        if response.status_code == 400 and json_of(response).get("error") == "RecordNotFound":
            return None
        self.check(response)
        uri = json_of(response).get("uri")
        return self._published(did, rkey, uri if isinstance(uri, str) else None)

    def _published(self, did: str, rkey: str, uri: str | None) -> Published:
        # The DID, not the handle, in the web URL: it never changes, and a handle given as the
        # `identifier` credential would be redacted out of every message.
        return Published(
            post_id=uri or f"at://{did}/{POST_COLLECTION}/{rkey}",
            url=f"{self._app_url}/profile/{did}/post/{rkey}",
        )

    async def _image(self, file: MediaFile, t: Transcript) -> dict[str, object]:
        response = await self._authed(
            t,
            lambda s: self._xrpc(
                "POST",
                "com.atproto.repo.uploadBlob",
                s,
                content=file.data,
                headers={"Content-Type": file.content_type},
            ),
        )
        blob = json_of(self.check(response)).get("blob")
        if not isinstance(blob, dict):
            raise Transient("bluesky: uploadBlob answered without a blob")
        image: dict[str, object] = {"alt": "", "image": blob}
        size = image_size(file.data)
        if size is not None:
            image["aspectRatio"] = {"width": size[0], "height": size[1]}
        return image

    async def _facets(self, text: str, t: Transcript) -> list[dict[str, object]]:
        facets: list[dict[str, object]] = []
        dids: dict[str, str | None] = {}
        for span in detect_spans(text):
            if span.kind != "mention":
                facets.append(facet(span))
                continue
            if span.value not in dids:
                dids[span.value] = await self._resolve(span.value, t)
            did = dids[span.value]
            if did is not None:
                facets.append(facet(span, did))
        return facets

    async def _resolve(self, handle: str, t: Transcript) -> str | None:
        """The handle's DID; None when it does not resolve (the mention stays plain text)."""
        request = self.http.build_request(
            "GET", "/xrpc/com.atproto.identity.resolveHandle", params={"handle": handle}
        )
        response = await self.send(t, request)
        if response.status_code == 400:
            return None
        did = json_of(self.check(response)).get("did")
        return did if isinstance(did, str) and did.startswith("did:") else None

    # ---- the session ---------------------------------------------------------------------

    def _xrpc(
        self,
        method: str,
        nsid: str,
        session: Session,
        *,
        params: dict[str, str] | None = None,
        json: object = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Request:
        return self.http.build_request(
            method,
            f"/xrpc/{nsid}",
            params=params,
            json=json,
            content=content,
            headers={"Authorization": f"Bearer {session.access_jwt}", **(headers or {})},
        )

    async def _authed(
        self, t: Transcript, request_for: RequestFor, *, sensitive: bool = False
    ) -> httpx.Response:
        """Send with the account's session; a stale access token is renewed and the call
        repeated once."""
        session = await self._current(t)
        response = await self.send(t, request_for(session), sensitive=sensitive)
        if _stale_token(response):
            t.note("the access token is stale: renewing the session")
            session = await self._renew(t, session)
            response = await self.send(t, request_for(session), sensitive=sensitive)
        return response

    async def _current(self, t: Transcript) -> Session:
        if self._session is not None:
            return self._session
        async with self._session_lock:
            if self._session is None:
                self._session = await self._login(t)
            return self._session

    async def _renew(self, t: Transcript, stale: Session) -> Session:
        async with self._session_lock:
            if self._session is not None and self._session is not stale:
                return self._session  # another job renewed it while this one waited
            # A refresh that fails in passing (429, 5xx) raises and keeps the stale session,
            # so the next attempt refreshes again instead of spending a login.
            session = await self._refresh(t, stale)
            if session is None:
                self._session = None
                session = await self._login(t)
            self._session = session
            return session

    async def _login(self, t: Transcript) -> Session:
        self.logins += 1
        request = self.http.build_request(
            "POST",
            "/xrpc/com.atproto.server.createSession",
            json={"identifier": self._identifier.reveal(), "password": self._password.reveal()},
        )
        response = self.check(await self.send(t, request, sensitive=True))
        t.note(f"logged in (login #{self.logins} of this worker for this account)")
        return self._session_from(response)

    async def _refresh(self, t: Transcript, stale: Session) -> Session | None:
        """The renewed session; None when the refresh token is no good either."""
        self.refreshes += 1
        request = self.http.build_request(
            "POST",
            "/xrpc/com.atproto.server.refreshSession",
            headers={"Authorization": f"Bearer {stale.refresh_jwt}"},
        )
        response = await self.send(t, request, sensitive=True)
        if response.is_success:
            return self._session_from(response)
        error = json_of(response).get("error")
        if response.status_code in (400, 401) and error != "AccountTakedown":
            t.note(f"refresh refused ({error}): logging in again")
            return None
        raise self.error_for(response)

    def _session_from(self, response: httpx.Response) -> Session:
        body = json_of(response)
        fields = {key: body.get(key) for key in ("did", "handle", "accessJwt", "refreshJwt")}
        if not all(isinstance(value, str) and value for value in fields.values()):
            raise Transient("bluesky: the session answer lacks did, handle or tokens")
        access, refresh = str(fields["accessJwt"]), str(fields["refreshJwt"])
        self.ctx.redactor.add(access)
        self.ctx.redactor.add(refresh)
        return Session(str(fields["did"]), str(fields["handle"]), access, refresh)


def _stale_token(response: httpx.Response) -> bool:
    return response.status_code in (400, 401) and (
        json_of(response).get("error") in _STALE_TOKEN_ERRORS
    )


def _check_media(media: list[MediaFile]) -> None:
    if len(media) > MAX_IMAGES:
        raise InvalidContent(f"bluesky: at most {MAX_IMAGES} images per post, not {len(media)}")
    for file in media:
        if file.content_type not in IMAGE_TYPES:
            raise InvalidContent(
                f"bluesky: {file.filename} is {file.content_type}; this adapter posts images "
                "only (PNG, JPEG, WebP, GIF)"
            )
        if len(file.data) > MAX_IMAGE_BYTES:
            raise InvalidContent(
                f"bluesky: {file.filename} is {len(file.data):,} bytes; an image may be at most "
                f"{MAX_IMAGE_BYTES:,} bytes (app.bsky.embed.images)"
            )


def _iso(now: float) -> str:
    return (
        datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
