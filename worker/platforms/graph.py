"""Meta Graph API machinery shared by the Facebook Pages and Instagram clients.

The contract both use (https://developers.facebook.com/docs/graph-api/overview,
https://developers.facebook.com/docs/graph-api/guides/error-handling,
https://developers.facebook.com/docs/graph-api/overview/rate-limiting):

- every call is `{base_url}/{api_version}/{node-id}[/{edge}]`, answers are JSON;
- the token travels as `Authorization: Bearer <token>` (Graph also takes `access_token=`, but a
  header keeps it out of URLs, and the Transcript masks it);
- bodies are form-encoded (multipart for uploads), as the facebook-business SDK sends them;
- a failure, whatever its HTTP status, is
  `{"error": {"message", "type", "code", "error_subcode", "is_transient", "fbtrace_id"}}`;
- throttling is codes 4 (app), 17 (user), 32 (page), 341, 613 and the Business Use Case codes
  80001 (Pages) / 80002 (Instagram), with the usage in two headers:
  `X-Business-Use-Case-Usage` (`estimated_time_to_regain_access`, in MINUTES) and
  `X-App-Usage` (`call_count` / `total_cputime` / `total_time`: percent of a rolling hour).

`meta_rate_limit` turns those headers into one "closed until" instant: the latest of the BUC
estimate, the X-App-Usage window and a fallback floor. X-App-Usage says how full the rolling hour
is but not when its oldest calls leave it, so at 100 % or more the only instant that is surely
free is a whole window (`APP_USAGE_WINDOW_S`, one hour) from now: we wait that long rather than
come back early and be throttled again (an operator can still "retry now").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

import httpx

from worker.accounts import AccountConfig, AccountsError
from worker.adapters import ratelimit
from worker.adapters.ratelimit import RateLimit
from worker.errors import (
    AdapterError,
    AuthRequired,
    Duplicate,
    InvalidContent,
    RateLimited,
    Transient,
)
from worker.platforms.base import PlatformClient, PlatformContext, Transcript, json_of

DEFAULT_API_VERSION = "v21.0"
# A throttled answer that says nothing usable: come back after this (ratelimit's default).
FALLBACK_WAIT_S = ratelimit.DEFAULT_FALLBACK_S
# X-App-Usage percentages are of a rolling hour.
APP_USAGE_WINDOW_S = 3600.0
# How far back `verify` looks for a post this job may have made.
DEFAULT_RECONCILE_WINDOW_S = 24 * 3600.0
# The newest posts a reconcile reads (one page of the edge; Graph's maximum is 100).
RECONCILE_PAGE_SIZE = 100

RATE_LIMIT_CODES = frozenset({4, 17, 32, 341, 613, 80001, 80002})
# 102 session, 104 no token, 190 expired / invalid token (subcodes 458-467 say why).
TOKEN_CODES = frozenset({102, 104, 190})
# 3 capability, 10 permission denied, 200-299 a named permission missing.
PERMISSION_CODES = frozenset({3, 10, *range(200, 300)})
DUPLICATE_CODE = 506
# 1 unknown, 2 service down; -1 / -2 are Instagram's server error and download timeout.
TRANSIENT_CODES = frozenset({1, 2, -1, -2})
_VERSION = re.compile(r"^v\d+\.\d+$")


@dataclass(frozen=True, slots=True)
class GraphError:
    """The `error` object of a Graph answer."""

    code: int | None
    subcode: int | None
    message: str
    type: str = ""
    is_transient: bool = False
    fbtrace_id: str = ""

    def describe(self, http_status: int) -> str:
        codes = f"code {self.code}" + (f"/{self.subcode}" if self.subcode is not None else "")
        trace = f", fbtrace_id {self.fbtrace_id}" if self.fbtrace_id else ""
        return f"{self.message} ({codes}, HTTP {http_status}{trace})"


def parse_graph_error(body: Mapping[str, object]) -> GraphError | None:
    error = body.get("error")
    if not isinstance(error, Mapping):
        return None
    return GraphError(
        code=_int(error.get("code")),
        subcode=_int(error.get("error_subcode")),
        message=str(error.get("message") or "Graph API error"),
        type=str(error.get("type") or ""),
        is_transient=error.get("is_transient") is True,
        fbtrace_id=str(error.get("fbtrace_id") or ""),
    )


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


# ---- rate limits --------------------------------------------------------------------------------


def parse_app_usage(value: str, now: float) -> float | None:
    """`X-App-Usage: {"call_count": 100, "total_cputime": 25, "total_time": 25}` -> the instant
    the rolling hour is surely free again, when any figure has reached 100 %; else None."""
    try:
        data = json.loads(value)
    except ValueError:
        return None
    if not isinstance(data, Mapping):
        return None
    figures = [
        float(v)
        for key in ("call_count", "total_cputime", "total_time")
        if isinstance(v := data.get(key), int | float) and not isinstance(v, bool)
    ]
    if not figures or max(figures) < 100:
        return None
    return now + APP_USAGE_WINDOW_S


def meta_rate_limit(headers: Mapping[str, str], *, now: float) -> RateLimit:
    """The latest of: the BUC estimate (minutes), the X-App-Usage window, a `Retry-After` if a
    proxy added one, and `now + FALLBACK_WAIT_S` (a throttled answer never reopens sooner)."""
    h = {k.lower(): v for k, v in headers.items()}
    found: list[tuple[float, int, str]] = [(now + FALLBACK_WAIT_S, 0, "fallback")]
    buc = h.get("x-business-use-case-usage")
    if buc is not None and (at := ratelimit.parse_business_use_case_usage(buc, now)) is not None:
        found.append((at, 2, "x-business-use-case-usage"))
    app = h.get("x-app-usage")
    if app is not None and (at := parse_app_usage(app, now)) is not None:
        found.append((at, 2, "x-app-usage"))
    retry_after = h.get("retry-after")
    if retry_after is not None and (at := ratelimit.parse_retry_after(retry_after, now)):
        found.append((at, 1, "retry-after"))
    at, _, source = max(found)
    return RateLimit(
        closed_until=at,
        quota_cap=at - now >= ratelimit.QUOTA_CAP_THRESHOLD_S,
        source=source,
    )


# ---- errors -------------------------------------------------------------------------------------


def graph_error_for(response: httpx.Response, *, platform: str, now: float) -> AdapterError:
    """Meta's error answer -> design.md's class. The Graph `code` decides; the HTTP status only
    when the body is not a Graph error (a proxy's page, say)."""
    status = response.status_code
    error = parse_graph_error(json_of(response))
    if error is None:
        return _by_status(response, platform=platform, now=now)
    text = f"{platform}: {error.describe(status)}"
    code = error.code
    if code in RATE_LIMIT_CODES:
        return rate_limited(text, response, now=now)
    if code in TOKEN_CODES:
        return AuthRequired(
            f"{text}: the access token is expired or invalid; make a new one and update the "
            "account's credential",
            http_status=status,
        )
    if code in PERMISSION_CODES:
        return AuthRequired(
            f"{text}: the token lacks a permission this call needs; grant it and make a new token",
            http_status=status,
        )
    if code == DUPLICATE_CODE:
        return Duplicate(text, http_status=status)
    if error.is_transient or code in TRANSIENT_CODES or status >= 500:
        return Transient(text, http_status=status)
    # 100 invalid parameter, 368 policy block, and any other refusal of this request as it is.
    return InvalidContent(text, http_status=status)


def rate_limited(text: str, response: httpx.Response, *, now: float) -> RateLimited:
    limit = meta_rate_limit(response.headers, now=now)
    return ratelimit.rate_limited(text, limit, now=now, http_status=response.status_code)


def _by_status(response: httpx.Response, *, platform: str, now: float) -> AdapterError:
    status = response.status_code
    text = f"{platform}: HTTP {status} {response.reason_phrase} (not a Graph error answer)"
    if status == 429:
        return rate_limited(text, response, now=now)
    if status in (401, 403):
        return AuthRequired(text, http_status=status)
    if status == 408 or status >= 500:
        return Transient(text, http_status=status)
    return InvalidContent(text, http_status=status)


# ---- the client base ----------------------------------------------------------------------------


def graph_time(value: object) -> float | None:
    """Graph's `2024-05-01T12:00:00+0000` (also ISO with a colon or Z) -> Unix seconds."""
    if not isinstance(value, str):
        return None
    for layout in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"):
        try:
            return datetime.strptime(value.replace("Z", "+0000"), layout).timestamp()
        except ValueError:
            continue
    return None


def same_text(published: object, wanted: str) -> bool:
    """Whether a post's text is the job's: exact, but for line endings and outer whitespace,
    which Facebook and Instagram trim."""
    if not isinstance(published, str):
        return False
    return _norm(published) == _norm(wanted)


def _norm(text: str) -> str:
    return text.replace("\r\n", "\n").strip()


def float_option(account: AccountConfig, name: str, default: float) -> float:
    value = account.option(name, default)
    if isinstance(value, bool):
        raise AccountsError(f"account {account.label}: option {name!r} must be a number")
    try:
        number = float(value)
    except ValueError:
        raise AccountsError(f"account {account.label}: option {name!r} must be a number") from None
    if not math.isfinite(number) or number < 0:
        raise AccountsError(f"account {account.label}: option {name!r} must be >= 0")
    return number


class GraphClient(PlatformClient):
    """One Graph node (a Page, an IG user) with its token, API version and error mapping."""

    token_name: ClassVar[str]
    node_option: ClassVar[str]

    def __init__(self, account: AccountConfig, ctx: PlatformContext) -> None:
        self._token = account.secret(self.token_name)
        self.node_id = account.str_option(self.node_option, "").strip()
        if not self.node_id or "/" in self.node_id or "?" in self.node_id:
            raise AccountsError(
                f"account {account.label}: option {self.node_option!r} is required "
                "(the numeric id Graph gives the object)"
            )
        self.api_version = account.str_option("api_version", DEFAULT_API_VERSION)
        if not _VERSION.match(self.api_version):
            raise AccountsError(
                f"account {account.label}: api_version {self.api_version!r} must look like "
                f"{DEFAULT_API_VERSION}"
            )
        self.reconcile_window_s = float_option(
            account, "reconcile_window_s", DEFAULT_RECONCILE_WINDOW_S
        )
        super().__init__(account, ctx)

    def path(self, *parts: str) -> str:
        return "/" + "/".join((self.api_version, *parts))

    async def call(
        self,
        t: Transcript,
        method: str,
        *parts: str,
        params: Mapping[str, str | int] | None = None,
        data: Mapping[str, str] | None = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
    ) -> dict[str, object]:
        """One Graph call; its JSON object, or the mapped error raised."""
        request = self.http.build_request(
            method,
            self.path(*parts),
            params=params,
            data=data,
            files=files,
            headers={"Authorization": f"Bearer {self._token.reveal()}"},
        )
        if files:
            request.read()  # a multipart body is a stream until read; the Transcript sizes it
        response = self.check(await self.send(t, request))
        return json_of(response)

    async def recent(
        self, t: Transcript, edge: str, fields: Sequence[str], **extra: str
    ) -> list[Mapping[str, object]]:
        """The newest items of one of the node's edges inside the reconcile window."""
        since = int(self.clock.now() - self.reconcile_window_s)
        params: dict[str, str | int] = {
            "fields": ",".join(fields),
            "since": since,
            "limit": RECONCILE_PAGE_SIZE,
            **extra,
        }
        body = await self.call(t, "GET", self.node_id, edge, params=params)
        data = body.get("data")
        items = (
            [item for item in data if isinstance(item, Mapping)] if isinstance(data, list) else []
        )
        return items

    async def check_login(self, t: Transcript) -> bool:
        try:
            await self.call(t, "GET", self.node_id, params={"fields": "id"})
        except AuthRequired:
            return False
        return True

    def error_for(self, response: httpx.Response) -> AdapterError:
        return graph_error_for(response, platform=self.platform, now=self.clock.now())


def newest(
    items: Sequence[Mapping[str, object]], *, text_field: str, time_field: str, text: str
) -> Mapping[str, object] | None:
    """The newest item whose text is `text` (the job's post, if it was made: Meta refuses the
    same text twice in a row on a Page, and a wider match would only find older posts)."""
    matches = [item for item in items if same_text(item.get(text_field), text)]
    if not matches:
        return None
    return max(matches, key=lambda item: graph_time(item.get(time_field)) or 0.0)
