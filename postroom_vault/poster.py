"""`VaultPoster`: the field's Python API over the vault, publishing through a coordinator.

    from postroom_vault.poster import VaultPoster

    poster = VaultPoster(vault_path="~/Vault", accounts={"facebook": "acme", "twitter": "acme"})
    draft = poster.create_draft(content="Hello", platforms=["facebook", "twitter"])
    # a person moves the file from Pending_Approval/ into Approved/
    results = poster.execute_approved_draft(draft)        # {"facebook": {"success": True, …}}
    retry = poster.retry_failed_platform(draft, platform="instagram")

The file is written by the same code as the `postroom vault watch` bridge (document.py,
render.py, progress.py): the same frontmatter, body, audit lines in Logs/ and move to Done/.
Accounts come from `accounts=` (NAME → ACCOUNT or PLATFORM:ACCOUNT; twitter means postroom's x)
and from VAULT/.postroom.toml's [accounts] table.

Errors: `VaultError` (and its `MalformedFile`, `OutsideVault`) for the vault's side, saying what
to fix; `postroom.PostroomError` subclasses for the coordinator's (`DeadlineExceeded` when the
platforms did not answer within `timeout_s`; the post goes on, call again to keep waiting).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from postroom.client.errors import DeadlineExceeded
from postroom.client.sync import Client
from postroom.v1 import types_pb2 as pb
from postroom_vault import VaultError
from postroom_vault import document as docs
from postroom_vault.bridge import Bridge
from postroom_vault.cli import vault_accounts, write_draft
from postroom_vault.config import DEFAULT_ACTOR, PLATFORM_ALIASES, BridgeConfig, parse_account

DEFAULT_TIMEOUT_S = 300.0
_POLL_S = 0.2
_ROUND_OVER = ("partial_failure", "completed", "failed", "cancelled")
_JOB_SETTLED = (
    pb.JOB_STATUS_SUCCEEDED,
    pb.JOB_STATUS_FAILED,
    pb.JOB_STATUS_NEEDS_LOGIN,
    pb.JOB_STATUS_CANCELLED,
)


class PlatformResult(TypedDict, total=False):
    """One platform's result, in the field's shape: success, post_id, url, timestamp; or
    success False, error, error_code, retry_after; retry_attempt from the second attempt."""

    success: bool
    post_id: str
    url: str
    error: str
    error_code: int
    retry_after: int
    timestamp: str
    retry_attempt: int


class VaultPoster:
    """The field's `SocialMediaPoster`, backed by a postroom coordinator.

    `client` (default: `Client()` from POSTROOM_COORDINATOR/POSTROOM_TOKEN/POSTROOM_CA) creates,
    submits and schedules; `approver` approves (a second person's token where four eyes are on;
    default `client`). `timeout_s` bounds each wait for the platforms' answers.
    """

    def __init__(
        self,
        vault_path: str | Path,
        *,
        client: Client | None = None,
        approver: Client | None = None,
        accounts: Mapping[str, str] | None = None,
        actor: str = DEFAULT_ACTOR,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.vault = Path(vault_path).expanduser().resolve()
        self.client = client or Client()
        self.timeout_s = timeout_s
        specs = [*vault_accounts(self.vault), *(f"{n}={w}" for n, w in (accounts or {}).items())]
        config = BridgeConfig(
            vault=self.vault, accounts=dict(parse_account(s) for s in specs), actor=actor
        )
        self._bridge = Bridge(config, self.client, approver=approver, clock=time.time)

    def close(self) -> None:
        self._bridge.close()

    def __enter__(self) -> VaultPoster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_draft(
        self, content: str, platforms: Sequence[str], image_path: str | Path | None = None
    ) -> Path:
        """A new draft in Pending_Approval/ (a person approves by moving it into Approved/)."""
        image = Path(image_path).expanduser() if image_path is not None else None
        return write_draft(self.vault, content, list(platforms), image=image)

    def execute_approved_draft(self, draft_path: str | Path) -> dict[str, PlatformResult]:
        """Publish an approved draft and wait (up to `timeout_s`) until every platform answered;
        one result per platform. The file stays in Approved/ until all succeeded, then Done/."""
        path = self._find(draft_path, (docs.APPROVED, docs.DONE))
        deadline = time.monotonic() + self.timeout_s
        while True:
            self._bridge.process(path)
            current = self._find(path, (docs.APPROVED, docs.DONE))
            doc = docs.parse(current.read_bytes())
            if doc.status in _ROUND_OVER:
                return self._results(doc)
            if time.monotonic() > deadline:
                raise DeadlineExceeded(
                    "DEADLINE_EXCEEDED",
                    f"{path.name}: the platforms did not all answer within {self.timeout_s:g}s "
                    f"(status {doc.status}); call again to keep waiting",
                )
            time.sleep(_POLL_S)
            path = current

    def retry_failed_platform(self, draft_path: str | Path, platform: str) -> PlatformResult:
        """Retry one platform now (a closed rate-limit gate still holds it until it opens) and
        wait for its answer. A platform that already succeeded (the coordinator retries by
        itself after `retry_after`) returns that result."""
        path = self._find(draft_path, (docs.APPROVED, docs.DONE))
        doc = docs.parse(path.read_bytes())
        track = self._bridge.store.load(doc.id)
        if track is None or not track.post_id:
            raise VaultError(f"{path.name} was not executed yet: call execute_approved_draft")
        name = self._platform_name(doc, platform)
        job_id = self._job_of(track.post_id, doc, name)
        job = self.client.get_job(job_id)
        if job.status != pb.JOB_STATUS_SUCCEEDED and job.status in (
            *_JOB_SETTLED,
            pb.JOB_STATUS_QUEUED,
        ):
            started = job.attempt
            self.client.retry_job(job_id, actor=self._bridge.config.actor)
            self._wait_job(job_id, started)
        self._bridge.process(path)
        now = docs.parse(self._find(path, (docs.APPROVED, docs.DONE)).read_bytes())
        return self._results(now)[name]

    # ---- helpers ---------------------------------------------------------------------------

    def _find(self, given: str | Path, folders: Sequence[str]) -> Path:
        """The file now: where it was given, else by name in `folders` (a person moved it)."""
        path = Path(given).expanduser()
        if path.exists() and path.parent.name in folders:
            return docs.inside(self.vault, path)
        for folder in folders:
            candidate = self.vault / folder / path.name
            if candidate.exists():
                return candidate
        if (self.vault / docs.PENDING / path.name).exists():
            raise VaultError(
                f"{path.name} is not approved yet: a person moves it from "
                f"{docs.PENDING}/ into {docs.APPROVED}/"
            )
        raise VaultError(f"{path.name} is not in {' or '.join(f + '/' for f in folders)}")

    def _platform_name(self, doc: docs.Document, platform: str) -> str:
        names = [str(n) for n in doc.front.get("platforms") or []]
        wanted = platform.strip().lower()
        for name in names:
            if wanted in (name, PLATFORM_ALIASES.get(name, name)) or name == PLATFORM_ALIASES.get(
                wanted
            ):
                return name
        raise VaultError(f"{platform!r} is not one of this post's platforms ({', '.join(names)})")

    def _job_of(self, post_id: str, doc: docs.Document, name: str) -> str:
        _, by_target = self._bridge.targets_of(doc)
        post = self.client.get_post(post_id)
        for state in post.target_states:
            if by_target.get((state.target.platform, state.target.account)) == name:
                return state.job_id
        raise VaultError(f"post {post_id} has no job for {name} (was it scheduled?)")

    def _wait_job(self, job_id: str, started_attempt: int) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            job = self.client.get_job(job_id)
            if job.status in _JOB_SETTLED:
                return
            failed_again = job.attempt > started_attempt and job.status == pb.JOB_STATUS_QUEUED
            if failed_again and job.last_error:
                return
            if time.monotonic() > deadline:
                raise DeadlineExceeded(
                    "DEADLINE_EXCEEDED",
                    f"job {job_id} did not finish within {self.timeout_s:g}s; "
                    "it goes on: call again, or follow it with `postroom job watch`",
                )
            time.sleep(_POLL_S)

    def _answered_at(self, doc: docs.Document) -> dict[str, str]:
        """Per platform name: when its latest attempt ended (the job's last change without one)."""
        track = self._bridge.store.load(doc.id)
        if track is None or not track.post_id:
            return {}
        _, by_target = self._bridge.targets_of(doc)
        stamps: dict[str, str] = {}
        for state in self.client.get_post(track.post_id).target_states:
            name = by_target.get((state.target.platform, state.target.account))
            if name is None:
                continue
            job = self.client.get_job(state.job_id)
            ended = job.runs[-1].ended_at if job.runs else job.updated_at
            when = ended if ended.seconds else job.updated_at
            stamps[name] = docs.utc_text(when.ToDatetime(tzinfo=dt.UTC))
        return stamps

    def _results(self, doc: docs.Document) -> dict[str, PlatformResult]:
        stamps = self._answered_at(doc)
        fallback = docs.utc_text(dt.datetime.now(dt.UTC))
        platforms = doc.front.get("platforms")
        results: dict[str, PlatformResult] = {}
        for name, entry in platforms.items() if isinstance(platforms, dict) else []:
            result: dict[str, Any] = {
                k: v for k, v in dict(entry or {}).items() if k != "retry_attempt"
            }
            result["timestamp"] = stamps.get(str(name), fallback)
            if isinstance(entry, dict) and "retry_attempt" in entry:
                result["retry_attempt"] = entry["retry_attempt"]
            results[str(name)] = PlatformResult(**result)  # type: ignore[typeddict-item]
        return results
