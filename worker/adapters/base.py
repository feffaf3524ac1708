"""The platform adapter interface, shared by API adapters (HTTP) and browser adapters (Chromium).

One adapter instance serves one job: the registry makes a fresh one per job from the platform's
factory (a browser adapter holds one page; the sandbox adapter remembers its last exchange for the
proof screenshot), and the runtime closes it when the job ends. The runtime calls, in order:

    verify(job)            only when job.verify_first: found -> success, nothing is posted
    prepare(job)           safe to repeat: validate, upload media, build the request / fill the form
    screenshot(label)      "before_confirm", "after_publish", "on_failure"; None when it cannot
    commit(job, prepared)  the one irreversible call, only after the coordinator's commit permit;
                           it sends job.platform_key so a repeated call cannot post twice
    close()

`check_login(account)` answers the coordinator's LoginCheck on an adapter made just for it.
Adapters raise only `worker.errors.AdapterError` subclasses; they translate their library's errors
once, at their boundary (see worker/adapters/http.py for HTTP).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from worker.errors import Transient

# Labels of proof screenshots (design.md, "Run").
BEFORE_CONFIRM = "before_confirm"
AFTER_PUBLISH = "after_publish"
ON_FAILURE = "on_failure"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """What one attempt must publish; built from the coordinator's Assign."""

    job_id: str
    platform: str
    account: str
    text: str
    media: tuple[str, ...] = ()
    content_hash: str = ""
    # Derived from (post, platform, account, content hash); the same on every attempt.
    platform_key: str = ""
    attempt: int = 1
    verify_first: bool = False
    # Look for the post only; never publish (the coordinator's attempts are used up).
    verify_only: bool = False
    require_confirm: bool = False
    post_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    """The result of `prepare`: whatever `commit` needs (API: the request body), and a one-line
    description for the step log."""

    payload: Mapping[str, object] = field(default_factory=dict)
    summary: str = ""


@dataclass(frozen=True, slots=True)
class Published:
    """A post that exists on the platform."""

    post_id: str
    url: str


class PlatformAdapter(Protocol):
    async def prepare(self, job: JobSpec) -> Prepared: ...

    async def screenshot(self, label: str) -> bytes | None:
        """A PNG showing the adapter's current state, or None when it has nothing to show."""
        ...

    async def commit(self, job: JobSpec, prepared: Prepared) -> Published: ...

    async def verify(self, job: JobSpec) -> Published | None:
        """The post this job may already have made (by platform key or content), else None."""
        ...

    async def check_login(self, account: str) -> bool: ...

    async def close(self) -> None: ...


# Called with the platform name; returns a fresh adapter for one job or one login check.
AdapterFactory = Callable[[str], PlatformAdapter]


class UnknownPlatform(Transient):
    """No adapter for this platform here; the coordinator should not have sent the job, and
    another worker may well serve it, hence Transient."""


class AdapterRegistry:
    """Platform name -> adapter factory."""

    def __init__(self, factories: Mapping[str, AdapterFactory] | None = None) -> None:
        self._factories: dict[str, AdapterFactory] = dict(factories or {})

    def register(self, platform: str, factory: AdapterFactory) -> None:
        self._factories[platform] = factory

    def platforms(self) -> tuple[str, ...]:
        return tuple(self._factories)

    def create(self, platform: str) -> PlatformAdapter:
        factory = self._factories.get(platform)
        if factory is None:
            raise UnknownPlatform(f"this worker has no adapter for platform {platform!r}")
        return factory(platform)
