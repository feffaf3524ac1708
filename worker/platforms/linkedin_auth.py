"""One LinkedIn account's OAuth 2.0 tokens: the access token every call carries, and its refresh
(https://learn.microsoft.com/en-us/linkedin/shared/authentication/programmatic-refresh-tokens).

    POST {oauth_url}   application/x-www-form-urlencoded
                       grant_type=refresh_token, refresh_token, client_id, client_secret
    -> 200 {access_token, expires_in, refresh_token, refresh_token_expires_in}
    -> 400 {error: "invalid_request", error_description: "… invalid, expired or revoked"}

`Tokens` is the one owner of the account's token secrets. One refresh at a time: jobs that got a
401 together queue on a lock, and those behind the first find the token already new. A new value
is registered with the redactor before anything can print it and stored with `Secret.rotate`
(written back when the credential came from `file:`). A refused refresh token is not offered
again for the same access token: every job on the account needs a login until one happens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from worker.accounts import AccountConfig, AccountsError, Secret
from worker.errors import AuthRequired, Transient
from worker.platforms.base import Transcript, json_of
from worker.redact import Redactor

if TYPE_CHECKING:
    from worker.platforms.base import PlatformClient


class Tokens:
    def __init__(self, account: AccountConfig, redactor: Redactor, *, oauth_url: str) -> None:
        self._redactor = redactor
        self.oauth_url = oauth_url
        self._access = account.secret("access_token")
        self._refresh = account.optional_secret("refresh_token")
        self._client_id = account.optional_secret("client_id")
        self._client_secret = account.optional_secret("client_secret")
        if self._refresh is not None and (self._client_id is None or self._client_secret is None):
            raise AccountsError(
                f"account {account.label}: refresh_token needs client_id and client_secret too "
                "(the app's credentials from the LinkedIn developer portal)"
            )
        self._lock = anyio.Lock()
        # The access token a refresh was refused for: no point asking again until it changes.
        self._refused_for: str | None = None

    @property
    def access(self) -> str:
        return self._access.reveal()

    async def refresh(self, stale: str, t: Transcript, client: PlatformClient) -> bool:
        """A new access token in place of `stale`: True when there is one (refreshed here or
        by a job that got there first), False when this account cannot refresh. Raises
        AuthRequired when LinkedIn refuses the refresh token, Transient when it cannot answer."""
        refresh, client_id, client_secret = self._refresh, self._client_id, self._client_secret
        if refresh is None or client_id is None or client_secret is None:
            return False
        async with self._lock:
            if self._access.reveal() != stale:
                return True
            if self._refused_for == stale:
                raise AuthRequired("linkedin: the refresh token was refused; log in again")
            t.note("access token refused (401): refreshing it")
            form = {
                "grant_type": "refresh_token",
                "refresh_token": refresh.reveal(),
                "client_id": client_id.reveal(),
                "client_secret": client_secret.reveal(),
            }
            request = client.http.build_request("POST", self.oauth_url, data=form)
            response = await client.send(t, request, sensitive=True)
            body = json_of(response)
            token = body.get("access_token")
            if response.status_code != 200 or not isinstance(token, str) or not token:
                if response.status_code >= 500 or response.status_code == 429:
                    raise Transient(
                        f"linkedin: token refresh failed: HTTP {response.status_code}",
                        http_status=response.status_code,
                    )
                self._refused_for = stale
                reason = body.get("error_description") or body.get("error") or "refused"
                raise AuthRequired(
                    f"linkedin: refreshing the access token failed: HTTP "
                    f"{response.status_code} {reason}; log in again",
                    http_status=401,
                )
            self._store(self._access, token)
            new_refresh = body.get("refresh_token")
            if isinstance(new_refresh, str) and new_refresh and new_refresh != refresh.reveal():
                self._store(refresh, new_refresh)
            t.note("access token refreshed")
            return True

    def _store(self, secret: Secret, value: str) -> None:
        self._redactor.add(value)  # before anything can print it
        secret.rotate(value)
