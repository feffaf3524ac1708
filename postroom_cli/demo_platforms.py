"""The real platform software `postroom demo --platforms bluesky,mastodon` publishes to: the
Bluesky reference PDS and mastodon-mock, started on 127.0.0.1 (sandbox/local), each with one
demo account whose credentials reach the workers only through an accounts file and their
environment, as a user's would.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from postroom_cli.accountsfile import AccountEntry
from sandbox.local.mastodon import MastodonMock, mastodon_mock_missing
from sandbox.local.pds import PdsAccount, PdsServer, pds_missing

REAL_PLATFORMS = ("bluesky", "mastodon")
DEMO_ACCOUNT = "demo"
_MASTODON_TOKEN = "demo-mastodon-token"
_BLUESKY_HANDLE = "postroom-demo.test"


def missing(platforms: Sequence[str]) -> list[str]:
    """Why each asked-for platform's local server cannot run here (empty: all can)."""
    reasons = {"bluesky": pds_missing, "mastodon": mastodon_mock_missing}
    found = [(p, reasons[p]()) for p in platforms if p in reasons]
    return [f"{platform}: {why}" for platform, why in found if why]


class LocalPlatforms:
    """The local servers of `platforms` (a subset of REAL_PLATFORMS), started on enter."""

    def __init__(self, workdir: Path, platforms: Sequence[str]) -> None:
        self.workdir = workdir
        self.platforms = [p for p in REAL_PLATFORMS if p in platforms]
        self.urls: dict[str, str] = {}
        self._stack = contextlib.ExitStack()
        self._pds: PdsServer | None = None
        self._bluesky: PdsAccount | None = None
        self._mastodon: MastodonMock | None = None
        self._entries: list[AccountEntry] = []

    def __enter__(self) -> LocalPlatforms:
        try:
            if "bluesky" in self.platforms:
                self._pds = self._stack.enter_context(PdsServer(self.workdir / "pds"))
                self._bluesky = self._pds.create_account(_BLUESKY_HANDLE, "demo-main-password")
                credentials = {
                    "identifier": self._bluesky.handle,
                    "app_password": self._pds.create_app_password(self._bluesky),
                }
                self._entries.append(
                    AccountEntry("bluesky", DEMO_ACCOUNT, self._pds.url, credentials)
                )
                self.urls["bluesky"] = self._pds.url
            if "mastodon" in self.platforms:
                mock = MastodonMock(self.workdir / "mastodon", users={"demo": _MASTODON_TOKEN})
                self._mastodon = self._stack.enter_context(mock)
                credentials = {"access_token": _MASTODON_TOKEN}
                self._entries.append(
                    AccountEntry("mastodon", DEMO_ACCOUNT, self._mastodon.url, credentials)
                )
                self.urls["mastodon"] = self._mastodon.url
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()

    def accounts(self) -> list[AccountEntry]:
        return list(self._entries)

    def targets(self) -> list[str]:
        return [f"{platform}:{DEMO_ACCOUNT}" for platform in self.platforms]

    def inject_rate_limit(self, retry_after_s: float) -> str | None:
        """One 429 at the next status post, as Mastodon sends it; the target it hits, or None
        (the PDS takes no injected faults)."""
        if self._mastodon is None:
            return None
        reset = str(math.ceil(time.time() + retry_after_s))
        # mastodon-mock's own Retry-After is 300 s: say the demo's wait in both headers.
        headers = {"X-RateLimit-Reset": reset, "Retry-After": str(math.ceil(retry_after_s))}
        self._mastodon.fault("POST", "/api/v1/statuses", effect="ratelimit", headers=headers)
        return f"mastodon:{DEMO_ACCOUNT}"

    def posts_on_platform(self) -> dict[str, int]:
        """target -> how many posts the platform itself holds for the demo account."""
        counts: dict[str, int] = {}
        if self._pds is not None and self._bluesky is not None:
            counts[f"bluesky:{DEMO_ACCOUNT}"] = len(self._pds.list_records(self._bluesky.did))
        if self._mastodon is not None:
            counts[f"mastodon:{DEMO_ACCOUNT}"] = len(self._mastodon.statuses(_MASTODON_TOKEN))
        return counts
