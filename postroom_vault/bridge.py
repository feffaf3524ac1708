"""The bridge loop: `Approved/` files → approved, scheduled posts; progress → files.

One pass (`tick`) looks at every file in `Approved/`, in parallel up to `parallel` files at a
time (each file is handled by one thread per pass, so its file and its state have one writer):

1. a file that cannot be used gets a note beside it and is left alone;
2. a new file becomes a post: created (its id stored at once), submitted, approved, scheduled;
   a restarted bridge resumes from the post's status, so nothing is created twice;
3. a person's `status: retry_now` retries the unpublished platforms now (a closed rate-limit
   gate still holds, and the file says until when); `status: cancelled` cancels the post;
4. the post's progress is written into the file, audit lines go to `Logs/`, and a file whose
   platforms all succeeded moves to `Done/`.

The file-watcher wakes the loop on every change; a rescan every `rescan_s` is the safety net
(and what notices the coordinator's progress).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import watchfiles

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.client import CliError, PublishingClient
from postroom_vault import MalformedFile, VaultError
from postroom_vault import document as docs
from postroom_vault.config import PLATFORM_ALIASES, BridgeConfig
from postroom_vault.progress import Outcome, Tracking, apply, audit_lines, outcome
from postroom_vault.render import content_of, platform_label, rewrite
from postroom_vault.state import StateStore

_PERSON_STATUSES = ("retry_now", "cancelled")
log = logging.getLogger("postroom.vault")


class Bridge:
    def __init__(
        self,
        config: BridgeConfig,
        client: PublishingClient,
        *,
        approver: PublishingClient | None = None,
        clock: Callable[[], float] = time.time,
        before_replace: Callable[[Path], None] | None = None,
    ) -> None:
        self.config = config
        self.vault = config.vault.resolve()
        self.client = client
        self.approver = approver or client
        self.clock = clock
        self.before_replace = before_replace
        for folder in (docs.PENDING, docs.APPROVED, docs.DONE, docs.LOGS):
            (self.vault / folder).mkdir(parents=True, exist_ok=True)
        self.store = StateStore(self.vault)
        self._audit_lock = threading.Lock()
        self._notes: dict[str, str] = {}
        self.passes = 0  # passes started (tests wait on it instead of sleeping)
        self._pool = ThreadPoolExecutor(max_workers=config.parallel, thread_name_prefix="vault")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # ---- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set: a pass now, then one after every change and every `rescan_s`."""
        self.tick()
        for _changes in watchfiles.watch(
            self.vault,
            watch_filter=_interesting,
            stop_event=stop,
            debounce=100,
            step=20,
            rust_timeout=max(1, int(self.config.rescan_s * 1000)),
            yield_on_timeout=True,
            force_polling=self.config.force_polling or None,
            raise_interrupt=False,
        ):
            if stop.is_set():
                break
            self.tick()

    def tick(self) -> None:
        self.passes += 1
        approved = self.vault / docs.APPROVED
        approved.mkdir(parents=True, exist_ok=True)  # a person may have removed it
        paths = sorted(p for p in approved.iterdir() if docs.is_post_file(p))
        for future in [self._pool.submit(self._process_safely, p) for p in paths]:
            future.result()

    def _process_safely(self, path: Path) -> None:
        try:
            self.process(path)
        except FileNotFoundError:
            pass  # moved or deleted by a person meanwhile: the next pass sees where it went
        except VaultError as exc:  # MalformedFile, OutsideVault, a damaged record
            docs.write_error_note(path, str(exc))
        except CliError as exc:
            # The coordinator refused or is away: keep the file, say why, try again next pass.
            self._notes[path.stem] = f"the coordinator answered {exc.code}: {exc.message}"
            log.warning("vault: %s: %s: %s", path.name, exc.code, exc.message)
        except OSError as exc:
            # One file's trouble (a full disk, a permission) must not stop the others.
            log.warning("vault: %s: %s", path.name, exc)

    # ---- one file -------------------------------------------------------------------------

    def process(self, path: Path) -> None:
        docs.inside(self.vault, path)
        doc = docs.parse(path.read_bytes())
        docs.error_note_path(path).unlink(missing_ok=True)
        track = self.store.load(doc.id)
        if track is not None and track.finished:
            return
        if track is None or not track.post_id:
            track = self._start(path, doc, track)
        post = self._advance(track)
        handled = ""
        if doc.status == "retry_now" and post.status != pb.POST_STATUS_CANCELLED:
            self._retry_now(doc.id, post)
            handled = "retry_now"
            post = self.client.get_post(track.post_id)
        elif doc.status == "cancelled" and post.status != pb.POST_STATUS_CANCELLED:
            post = self.client.cancel_post(
                track.post_id, actor=self.config.actor, reason="status: cancelled in the vault"
            )
            handled = "cancelled"
        self._record(path, doc, track, post, handled)

    def targets_of(self, doc: docs.Document) -> tuple[list[pb.Target], dict[tuple[str, str], str]]:
        """The file's targets, and each target's platform name in the file."""
        platforms = doc.front["platforms"]
        names = list(platforms) if isinstance(platforms, dict) else [str(p) for p in platforms]
        targets: list[pb.Target] = []
        by_target: dict[tuple[str, str], str] = {}
        for name in names:
            key = name.lower()
            target = self.config.accounts.get(key) or self.config.accounts.get(
                PLATFORM_ALIASES.get(key, key)
            )
            if target is None:
                raise MalformedFile(
                    f"no account for platform {name!r}: start the bridge with "
                    f"--account {name}=ACCOUNT (or {name}=PLATFORM:ACCOUNT)"
                )
            targets.append(target)
            by_target[(target.platform, target.account)] = name
        return targets, by_target

    def _media(self, doc: docs.Document) -> list[str]:
        image = doc.front.get("image")
        if not image:
            return []
        path = docs.inside(self.vault, self.vault / str(image))
        if not path.is_file():
            raise MalformedFile(f"image {image!r} does not exist in the vault")
        return [path.name]

    def _start(self, path: Path, doc: docs.Document, track: Tracking | None) -> Tracking:
        text = content_of(doc.body)
        if not text:
            raise MalformedFile("the `## Content` section is empty: write the post's text there")
        targets, _ = self.targets_of(doc)
        media = self._media(doc)
        if track is None:
            # Stored before the post exists: after a crash in between, the next bridge adopts
            # the DRAFT it made (below) instead of making a second one.
            track = Tracking(file_id=doc.id, started_ms=int(self.clock() * 1000))
            self.store.save(track)
            post_id = ""
        else:
            post_id = self._orphan_draft(text, targets, media, track.started_ms)
        if not post_id:
            request = pub.CreatePostRequest(
                text=text, targets=targets, media=media, actor=self.config.actor
            )
            post_id = self.client.create_post(request).id
        track.post_id = post_id
        self.store.save(track)
        return track

    def _orphan_draft(
        self, text: str, targets: list[pb.Target], media: list[str], since_ms: int
    ) -> str:
        """A DRAFT this file's earlier attempt created but did not live to store, if any."""
        wanted = sorted((t.platform, t.account) for t in targets)
        token = ""
        while True:
            page = self.client.list_posts(
                pub.ListPostsRequest(status=pb.POST_STATUS_DRAFT, page_size=1000, page_token=token)
            )
            for post in page.posts:
                made_ms = post.created_at.seconds * 1000 + post.created_at.nanos // 1_000_000
                if (
                    post.text == text
                    and list(post.media) == media
                    and sorted((t.platform, t.account) for t in post.targets) == wanted
                    and made_ms >= since_ms - 1000
                ):
                    return post.id
            token = page.next_page_token
            if not token:
                return ""

    def _advance(self, track: Tracking) -> pb.Post:
        """Submit, approve and schedule as far as the post has not been yet (restart-safe)."""
        post = self.client.get_post(track.post_id)
        actor = self.config.actor
        if post.status == pb.POST_STATUS_DRAFT:
            post = self.client.submit_post(post.id, actor=actor)
        if post.status == pb.POST_STATUS_PENDING_APPROVAL:
            post = self.approver.approve_post(post.id, actor=actor, content_hash=post.content_hash)
        if post.status == pb.POST_STATUS_APPROVED:
            post = self.client.schedule_post(post.id, actor=actor)
        if not track.approved_at:
            track.approved_at = docs.utc_text(self._now())
            self.store.save(track)
        return post

    def _retry_now(self, file_id: str, post: pb.Post) -> None:
        closed = {
            (g.target.platform, g.target.account): g
            for g in self.client.list_rate_limits(closed_only=True).gates
            if g.closed
        }
        held: list[str] = []
        for state in post.target_states:
            if state.job_status in (pb.JOB_STATUS_SUCCEEDED, pb.JOB_STATUS_CANCELLED):
                continue
            if state.job_status in (pb.JOB_STATUS_CLAIMED, pb.JOB_STATUS_RUNNING):
                continue
            self.client.retry_job(state.job_id, actor=self.config.actor)
            gate = closed.get((state.target.platform, state.target.account))
            if gate is not None and gate.HasField("closed_until"):
                until = dt.datetime.fromtimestamp(gate.closed_until.seconds, dt.UTC)
                held.append(
                    f"{platform_label(state.target.platform)}'s rate-limit gate is closed until "
                    f"{docs.utc_text(until)}; the retry runs then"
                )
        self._notes[file_id] = (
            "; ".join(held) if held else "retried now, as asked by `status: retry_now`"
        )

    def _record(
        self, path: Path, doc: docs.Document, track: Tracking, post: pb.Post, handled: str
    ) -> None:
        _, names = self.targets_of(doc)
        now = self._now()
        result = outcome(post, names, now.timestamp())
        lines = audit_lines(
            doc.id,
            result,
            track,
            actor=self.config.actor,
            now=now,
            now_ms=int(self.clock() * 1000),
        )
        if result.status == "completed":
            self._notes.pop(doc.id, None)
        note = self._notes.get(doc.id, "")

        def transform(current: docs.Document) -> docs.Document | None:
            # A person's request the bridge has not acted on yet wins: it is handled next pass.
            pending_request = current.status in _PERSON_STATUSES and current.status != handled
            if pending_request and not (current.status == result.status == "cancelled"):
                return None
            return _updated(current, result, track, now, note)

        docs.update(path, transform, before_replace=self.before_replace)
        if lines:
            self._append_audit(lines, now)
        if result.status in ("completed", "cancelled"):
            track.finished = True
        self.store.save(track)
        if result.status == "completed":
            target = self.vault / docs.DONE / path.name
            os.replace(path, target)

    def _append_audit(self, lines: list[dict[str, Any]], now: dt.datetime) -> None:
        log = self.vault / docs.LOGS / f"{now:%Y-%m-%d}.json"
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        with self._audit_lock, open(log, "a", encoding="utf-8") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)


def _updated(
    current: docs.Document, result: Outcome, track: Tracking, now: dt.datetime, note: str
) -> docs.Document:
    front = dict(current.front)
    apply(front, result, track, now)
    # "retry in N minutes" counts from the attempt, so an unchanged file stays unchanged.
    since = (
        dt.datetime.fromtimestamp(track.last_attempt_epoch, dt.UTC)
        if track.last_attempt_epoch
        else now
    )
    body = rewrite(current.body, front, note=note, now=since)
    return docs.Document(front=front, body=body, extra_order=current.extra_order)


def _interesting(change: watchfiles.Change, path: str) -> bool:
    name = os.path.basename(path)
    return (
        f"{os.sep}.postroom{os.sep}" not in path
        and not name.startswith(docs.TMP_PREFIX)
        and name.endswith(".md")
    )


__all__ = ["Bridge", "VaultError"]
