"""Real platform clients and the host that keeps one per account for the worker's whole life.

    AccountHost                    built once from --accounts; owns every PlatformClient
    └── PlatformClient (one per (platform, account); long-lived: connection reuse, the login
        session or OAuth token, one refresh at a time) — subclasses in worker/platforms/*.py,
        found through the `postroom.adapters` entry-point group
    HostedAdapter                  the per-job `PlatformAdapter` the runtime sees; it holds the
                                   job's Transcript and calls its account's client

A client's methods take the job's `Transcript`, which records each exchange (credentials never:
auth headers are masked, login bodies are not recorded, everything passes the Redactor) for the
step notes and the proof screenshot. Each client maps its platform's own error signals to
`worker.errors` in `error_for` (never one shared status table), and never lets an httpx
exception out: `send` turns timeouts and connection errors into `Transient`.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import ClassVar, TypeVar

import httpx

from postroom.clock import Clock
from worker.accounts import AccountConfig, AccountsError
from worker.adapters.base import (
    AFTER_PUBLISH,
    ON_FAILURE,
    AdapterFactory,
    JobSpec,
    PlatformAdapter,
    Prepared,
    Published,
)
from worker.adapters.http import RequestObserver, RequestStatus, ignore_request, send
from worker.adapters.png import Tone, render_card
from worker.config import DEFAULT_REQUEST_TIMEOUT_S, Capability
from worker.errors import AdapterError, Transient
from worker.media import MediaLoader
from worker.redact import REDACTED, Redactor

T = TypeVar("T")
ENTRY_POINT_GROUP = "postroom.adapters"
_MASKED_HEADERS = frozenset(
    {"authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key", "dpop"}
)
_SHOWN_BODY_CHARS = 300
_MAX_TRANSCRIPT_LINES = 60


@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformContext:
    """What every client gets from the worker."""

    clock: Clock
    media: MediaLoader
    redactor: Redactor
    observe: RequestObserver = ignore_request
    timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    # Tests only: route the clients' HTTP through this transport.
    transport: httpx.AsyncBaseTransport | None = None


class Transcript:
    """One job's exchanges with its platform, already scrubbed of credentials."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self.lines: list[str] = []
        self.ok = True

    def note(self, text: str) -> None:
        self.lines.append(self._redactor(text))
        del self.lines[:-_MAX_TRANSCRIPT_LINES]

    def request(self, request: httpx.Request, *, sensitive: bool) -> None:
        target = request.url.path + (f"?{request.url.query.decode()}" if request.url.query else "")
        self.note(f"{request.method} {target}")
        for name, value in request.headers.items():
            if name in _MASKED_HEADERS:
                self.note(f"> {name}: {REDACTED}")
            elif name.startswith(("idempotency", "x-restli", "linkedin-version")):
                self.note(f"> {name}: {value}")
        try:
            content = request.content
        except httpx.RequestNotRead:  # a streamed body (multipart uploads): only its size
            size = request.headers.get("content-length", "?")
            self.note(f"> ({request.headers.get('content-type', 'body')}, {size} bytes)")
            return
        if sensitive:
            self.note("> (body not recorded: it holds credentials)")
        elif request.headers.get("content-type", "").startswith("application/json"):
            self.note(f"> {_clip(content)}")
        elif content:
            self.note(f"> ({len(content)} bytes)")

    def response(self, response: httpx.Response, *, sensitive: bool) -> None:
        self.ok = response.is_success
        self.note(f"< HTTP {response.status_code} {response.reason_phrase}")
        for name, value in response.headers.items():
            if name in _MASKED_HEADERS:
                continue
            if (
                "rate" in name
                or name in ("retry-after", "x-restli-id", "location")
                or (name.startswith(("x-user-limit", "x-app-limit", "x-business-use-case")))
            ):
                self.note(f"< {name}: {value}")
        if sensitive and response.is_success:
            self.note("< (body not recorded: it holds credentials)")
        elif response.content:
            self.note(f"< {_clip(response.content)}")

    def failed(self, error: AdapterError) -> None:
        self.ok = False
        self.note(f"! {type(error).__name__}: {error.message}")

    def card(self, title: str, label: str) -> bytes | None:
        if not self.lines:
            return None
        tone: Tone = "error" if label == ON_FAILURE or not self.ok else "info"
        if label == AFTER_PUBLISH and self.ok:
            tone = "ok"
        return render_card(title, self.lines[-30:], tone=tone)


def _clip(content: bytes) -> str:
    return content[:_SHOWN_BODY_CHARS].decode("utf-8", "replace")


class PlatformClient(abc.ABC):
    """One account's long-lived client. Subclasses set `platform` and implement the rest."""

    platform: ClassVar[str]

    def __init__(self, account: AccountConfig, ctx: PlatformContext) -> None:
        self.account = account
        self.ctx = ctx
        self.clock = ctx.clock
        self.http = httpx.AsyncClient(
            base_url=account.base_url, timeout=ctx.timeout_s, transport=ctx.transport
        )

    # ---- what each platform implements ---------------------------------------------------

    @abc.abstractmethod
    async def prepare(self, job: JobSpec, t: Transcript) -> Prepared:
        """Validate, upload media, build the create request. Safe to repeat."""

    @abc.abstractmethod
    async def commit(self, job: JobSpec, prepared: Prepared, t: Transcript) -> Published:
        """The one call that creates the post, sending the job's platform key where the
        platform takes one."""

    @abc.abstractmethod
    async def verify(self, job: JobSpec, t: Transcript) -> Published | None:
        """Look on the platform for the post this job may already have made."""

    @abc.abstractmethod
    async def check_login(self, t: Transcript) -> bool:
        """Whether the account's credentials work now (False: the platform said no)."""

    @abc.abstractmethod
    def error_for(self, response: httpx.Response) -> AdapterError:
        """This platform's error answer -> design.md's class (RATE_LIMITED with a normalised
        "closed until" instant, AUTH_REQUIRED, INVALID_CONTENT, TRANSIENT, DUPLICATE)."""

    # ---- shared machinery ----------------------------------------------------------------

    async def send(
        self, t: Transcript, request: httpx.Request, *, sensitive: bool = False
    ) -> httpx.Response:
        """Send one request, recording it; only `Transient` escapes for network failures."""
        t.request(request, sensitive=sensitive)
        try:
            response = await send(self.http, request, platform=self.platform, observe=self.observe)
        except Transient as exc:
            t.failed(exc)
            raise
        t.response(response, sensitive=sensitive)
        return response

    def observe(self, platform: str, status: RequestStatus) -> None:
        self.ctx.observe(platform, status)

    def check(self, response: httpx.Response, *ok: int) -> httpx.Response:
        """The response when its status is one of `ok` (default: any 2xx), else its error."""
        if (response.status_code in ok) if ok else response.is_success:
            return response
        raise self.error_for(response)

    async def aclose(self) -> None:
        await self.http.aclose()


def json_of(response: httpx.Response) -> dict[str, object]:
    """The answer's JSON object, or {} when it is not one."""
    try:
        data = response.json()
    except (ValueError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class UnknownAccount(Transient):
    """This worker has no credentials for the job's account (another worker may)."""


PlatformClientClass = Callable[[AccountConfig, PlatformContext], PlatformClient]


def load_platform_class(platform: str) -> PlatformClientClass | None:
    """The client class registered for `platform` in the `postroom.adapters` entry points."""
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=platform):
        loaded = _load(ep)
        if isinstance(loaded, type) and issubclass(loaded, PlatformClient):
            return loaded
    return None


def load_job_adapter(platform: str) -> AdapterFactory | None:
    """The job adapter plug-in registered for `platform`, if any: a `postroom.adapters` entry
    point whose object is not a PlatformClient class but a factory of per-job adapters (called
    with the platform's name; a class implementing PlatformAdapter with `__init__(self,
    platform)` is one). A worker serves `--platform NAME[:ACCOUNT]` through it, no sandbox."""
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=platform):
        loaded = _load(ep)
        if isinstance(loaded, type) and issubclass(loaded, PlatformClient):
            continue
        if not callable(loaded):
            raise PluginError(
                f"plug-in {ep.name} = {ep.value}: not a PlatformClient class nor a callable "
                "that makes a job adapter"
            )
        factory: AdapterFactory = loaded
        return factory
    return None


class PluginError(ValueError):
    """An installed `postroom.adapters` plug-in cannot be used; the message names it."""


def _load(ep: EntryPoint) -> object:
    try:
        return ep.load()
    except Exception as exc:  # a broken plug-in: its name and why, not a traceback
        raise PluginError(f"plug-in {ep.name} = {ep.value} cannot be loaded: {exc!r}") from exc


def known_platforms() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


class AccountHost:
    """Every account's client, made at start-up (bad credentials config fails fast) and closed
    when the worker stops."""

    def __init__(
        self,
        accounts: tuple[AccountConfig, ...],
        ctx: PlatformContext,
        *,
        classes: Mapping[str, PlatformClientClass] | None = None,
    ) -> None:
        self.ctx = ctx
        self._clients: dict[tuple[str, str], PlatformClient] = {}
        for account in accounts:
            cls = (
                load_platform_class(account.platform)
                if classes is None
                else classes.get(account.platform)
            )
            if cls is None:
                names = known_platforms() if classes is None else sorted(classes)
                raise AccountsError(
                    f"account {account.label}: no adapter for platform {account.platform!r}; "
                    f"this worker knows {', '.join(names) or 'none'}"
                )
            self._clients[(account.platform, account.account)] = cls(account, ctx)

    def capabilities(self) -> tuple[Capability, ...]:
        return tuple(Capability(platform, account) for platform, account in self._clients)

    def platforms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(platform for platform, _ in self._clients))

    def client(self, platform: str, account: str) -> PlatformClient:
        client = self._clients.get((platform, account))
        if client is None:
            raise UnknownAccount(f"this worker has no credentials for {platform}:{account}")
        return client

    def factory(self) -> AdapterFactory:
        def make(platform: str) -> PlatformAdapter:
            return HostedAdapter(self, platform)

        return make

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


class HostedAdapter:
    """The runtime's per-job adapter: a transcript, and calls into the account's client.

    Errors leave through `_call`, so a credential a platform echoed in an error never reaches
    the coordinator."""

    def __init__(self, host: AccountHost, platform: str) -> None:
        self._host = host
        self.platform = platform
        self._redactor = host.ctx.redactor
        self._t = Transcript(self._redactor)
        self._title = platform

    def _client(self, account: str) -> PlatformClient:
        self._title = f"{self.platform}:{account}"
        return self._host.client(self.platform, account)

    async def prepare(self, job: JobSpec) -> Prepared:
        return await self._call(lambda: self._client(job.account).prepare(job, self._t))

    async def commit(self, job: JobSpec, prepared: Prepared) -> Published:
        return await self._call(lambda: self._client(job.account).commit(job, prepared, self._t))

    async def verify(self, job: JobSpec) -> Published | None:
        return await self._call(lambda: self._client(job.account).verify(job, self._t))

    async def check_login(self, account: str) -> bool:
        return await self._call(lambda: self._client(account).check_login(self._t))

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except AdapterError as exc:
            exc.message = self._redactor(exc.message)
            exc.args = (exc.message,)
            self._t.failed(exc)
            raise
        except Exception as exc:
            # A bug in a client: transient, and without a repr that might hold a header.
            error = Transient(self._redactor(f"{self.platform} adapter error: {exc!r}"))
            self._t.failed(error)
            raise error from exc

    async def screenshot(self, label: str) -> bytes | None:
        return self._t.card(f"{self._title} {label}", label)

    async def close(self) -> None:
        """Nothing: the account's client outlives the job."""
