"""InMemoryStore: the fake Store for unit tests, with the SQLite store's semantics.

Dicts of private deep copies. apply() works on a fork of the state and swaps it in only when the
whole batch succeeded, so a miss leaves nothing behind; it fails where SQLite fails (CAS misses,
clashing ids and idempotency keys, rows whose parent does not exist) with the same errors, and
numbers audit events 1, 2, 3... as SQLite's AUTOINCREMENT does. Pages follow SQL's LIMIT/OFFSET:
a negative limit means no limit, a negative offset counts as 0.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from anyio.lowlevel import checkpoint

from coordinator.access.records import DeviceEnrollment, OperatorToken
from coordinator.domain import (
    ACTIVE_JOB_STATUSES,
    AuditEvent,
    DeviceRecord,
    GateRecord,
    Job,
    JobStatus,
    Post,
    PostStatus,
    Run,
    ScreenshotRecord,
    StepLogEntry,
    Target,
)
from coordinator.errors import NotFound, StoreError
from coordinator.store import cas
from coordinator.store.base import Cursor, JobFilter, WriteBatch, refuse_post_tasks

T = TypeVar("T")


def _page(items: list[T], limit: int, offset: int) -> list[T]:
    start = max(offset, 0)
    return items[start:] if limit < 0 else items[start : start + limit]


@dataclass(slots=True)
class _State:
    posts: dict[str, Post] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    job_ids_by_key: dict[str, str] = field(default_factory=dict)
    # Runs are stored without their logs and screenshots, which are kept per run id as tuples so
    # that fork() can share them.
    runs: dict[str, Run] = field(default_factory=dict)
    logs: dict[str, tuple[StepLogEntry, ...]] = field(default_factory=dict)
    screenshots: dict[str, tuple[ScreenshotRecord, ...]] = field(default_factory=dict)
    audits: list[AuditEvent] = field(default_factory=list)
    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    gates: dict[Target, GateRecord] = field(default_factory=dict)
    operator_tokens: dict[str, OperatorToken] = field(default_factory=dict)
    enrollments: dict[str, DeviceEnrollment] = field(default_factory=dict)

    def fork(self) -> _State:
        # Stored values are never mutated in place, only replaced, so shallow copies suffice.
        return _State(
            dict(self.posts),
            dict(self.jobs),
            dict(self.job_ids_by_key),
            dict(self.runs),
            dict(self.logs),
            dict(self.screenshots),
            list(self.audits),
            dict(self.devices),
            dict(self.gates),
            dict(self.operator_tokens),
            dict(self.enrollments),
        )


class InMemoryStore:
    def __init__(self) -> None:
        self._state = _State()

    async def open(self) -> None:
        await checkpoint()

    async def close(self) -> None:
        await checkpoint()

    async def apply(self, batch: WriteBatch) -> None:
        await checkpoint()
        if not batch:
            return
        refuse_post_tasks(batch)
        st = self._state.fork()
        self._write_posts(st, batch)
        self._write_jobs(st, batch)
        self._write_runs(st, batch)
        seqs = self._write_audits(st, batch.audits)
        for device in batch.devices:
            st.devices[device.id] = copy.deepcopy(device)
        for gate in batch.gates:
            st.gates[gate.target] = copy.deepcopy(gate)
        self._write_access(st, batch)
        for post_id in batch.deleted_posts:
            _delete_post(st, post_id)
        self._state = st
        for event, seq in zip(batch.audits, seqs, strict=True):
            event.seq = seq

    @staticmethod
    def _write_posts(st: _State, batch: WriteBatch) -> None:
        for post in batch.new_posts:
            if post.id in st.posts:
                raise cas.post_exists(post)
            st.posts[post.id] = copy.deepcopy(post)
        for pw in batch.post_writes:
            stored = st.posts.get(pw.post.id)
            if stored is None or stored.status not in pw.expected_statuses:
                raise cas.post_moved(pw)
            st.posts[pw.post.id] = copy.deepcopy(pw.post)

    @staticmethod
    def _write_jobs(st: _State, batch: WriteBatch) -> None:
        for job in batch.new_jobs:
            if job.id in st.jobs:
                raise cas.job_exists(job)
            if job.idempotency_key in st.job_ids_by_key:
                raise cas.key_taken(job)
            _check_parent(st.posts, job.post_id, f"job {job.id}")
            st.jobs[job.id] = copy.deepcopy(job)
            st.job_ids_by_key[job.idempotency_key] = job.id
        for jw in batch.job_writes:
            job = jw.job
            stored = st.jobs.get(job.id)
            if stored is None or not cas.job_hits(jw, stored.status, stored.lease_epoch):
                raise cas.job_moved(jw)
            if st.job_ids_by_key.get(job.idempotency_key, job.id) != job.id:
                raise cas.key_taken(job)
            _check_parent(st.posts, job.post_id, f"job {job.id}")
            del st.job_ids_by_key[stored.idempotency_key]
            st.jobs[job.id] = copy.deepcopy(job)
            st.job_ids_by_key[job.idempotency_key] = job.id

    @staticmethod
    def _write_runs(st: _State, batch: WriteBatch) -> None:
        for run in batch.runs:
            _check_parent(st.jobs, run.job_id, f"run {run.id}")
            # The run's own fields only, as in SQL: its logs and screenshots arrive separately.
            st.runs[run.id] = copy.deepcopy(run)
            st.runs[run.id].logs = []
            st.runs[run.id].screenshots = []
        for run_id, entry in batch.logs:
            _check_parent(st.runs, run_id, "step log")
            st.logs[run_id] = (*st.logs.get(run_id, ()), copy.deepcopy(entry))
        for run_id, shot in batch.screenshots:
            _check_parent(st.runs, run_id, "screenshot")
            st.screenshots[run_id] = (*st.screenshots.get(run_id, ()), copy.deepcopy(shot))

    @staticmethod
    def _write_access(st: _State, batch: WriteBatch) -> None:
        # Frozen values: stored as they are. A hash is unique per table, as in SQL.
        for token in batch.operator_tokens:
            stored = st.operator_tokens.get(token.id)
            if stored is not None:  # as the SQL upsert: only the revocation changes
                token = dataclasses.replace(stored, revoked_at=token.revoked_at)
            elif any(t.token_hash == token.token_hash for t in st.operator_tokens.values()):
                raise StoreError(f"operator token {token.id}: its hash is taken")
            st.operator_tokens[token.id] = token
        for enrollment in batch.enrollments:
            if any(
                e.token_hash == enrollment.token_hash and e.name != enrollment.name
                for e in st.enrollments.values()
            ):
                raise StoreError(f"enrollment {enrollment.name}: its hash is taken")
            st.enrollments[enrollment.name] = enrollment

    @staticmethod
    def _write_audits(st: _State, events: list[AuditEvent]) -> list[int]:
        seqs: list[int] = []
        for event in events:
            stored = copy.deepcopy(event)
            # Through JSON, as SQL stores it: what cannot be serialised becomes its str().
            stored.details = json.loads(event.details_json())
            stored.seq = len(st.audits) + 1
            st.audits.append(stored)
            seqs.append(stored.seq)
        return seqs

    async def get_post(self, post_id: str) -> Post:
        await checkpoint()
        post = self._state.posts.get(post_id)
        if post is None:
            raise NotFound(f"post {post_id} not found")
        return copy.deepcopy(post)

    async def list_posts(
        self, *, status: PostStatus | None, limit: int, offset: int, before: Cursor | None = None
    ) -> list[Post]:
        await checkpoint()
        posts = [
            p
            for p in self._state.posts.values()
            if (status is None or p.status == status)
            and (before is None or (p.created_at, p.id) < before)
        ]
        posts.sort(key=lambda p: (p.created_at, p.id), reverse=True)
        return copy.deepcopy(_page(posts, limit, offset))

    async def get_job(self, job_id: str) -> Job:
        await checkpoint()
        job = self._state.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return copy.deepcopy(job)

    async def get_job_by_key(self, idempotency_key: str) -> Job | None:
        await checkpoint()
        job_id = self._state.job_ids_by_key.get(idempotency_key)
        return None if job_id is None else copy.deepcopy(self._state.jobs[job_id])

    async def jobs_for_post(self, post_id: str) -> list[Job]:
        await checkpoint()
        jobs = [j for j in self._state.jobs.values() if j.post_id == post_id]
        return copy.deepcopy(sorted(jobs, key=lambda j: (j.created_at, j.id)))

    async def jobs_for_posts(self, post_ids: Sequence[str]) -> list[Job]:
        await checkpoint()
        wanted = set(post_ids)
        jobs = [j for j in self._state.jobs.values() if j.post_id in wanted]
        return copy.deepcopy(sorted(jobs, key=lambda j: (j.created_at, j.id)))

    async def list_jobs(
        self, flt: JobFilter, *, limit: int, offset: int, before: Cursor | None = None
    ) -> list[Job]:
        await checkpoint()
        jobs = [
            j
            for j in self._state.jobs.values()
            if (flt.status is None or j.status == flt.status)
            and (not flt.platform or j.platform == flt.platform)
            and (not flt.account or j.account == flt.account)
            and (not flt.post_id or j.post_id == flt.post_id)
            and (not flt.device_id or j.device_id == flt.device_id)
            and (before is None or (j.created_at, j.id) < before)
        ]
        jobs.sort(key=lambda j: (j.created_at, j.id), reverse=True)
        return copy.deepcopy(_page(jobs, limit, offset))

    async def load_active_jobs(self) -> list[Job]:
        await checkpoint()
        jobs = [j for j in self._state.jobs.values() if j.status in ACTIVE_JOB_STATUSES]
        return copy.deepcopy(sorted(jobs, key=lambda j: (j.created_at, j.id)))

    async def get_runs(self, job_id: str) -> list[Run]:
        await checkpoint()
        st = self._state
        runs = [copy.deepcopy(r) for r in st.runs.values() if r.job_id == job_id]
        runs.sort(key=lambda r: r.started_at)  # stable: ties keep insertion order, like rowid
        for run in runs:
            run.logs = copy.deepcopy(list(st.logs.get(run.id, ())))
            run.screenshots = copy.deepcopy(list(st.screenshots.get(run.id, ())))
        return runs

    async def list_audit(
        self, *, since: float | None, subject_id: str, action: str, after_seq: int, limit: int
    ) -> list[AuditEvent]:
        await checkpoint()
        events = [
            e
            for e in self._state.audits
            if e.seq > after_seq
            and (since is None or e.at >= since)
            and (not subject_id or e.subject_id == subject_id)
            and (not action or e.action == action)
        ]
        return copy.deepcopy(_page(events, limit, 0))

    async def last_audit_seq(self) -> int:
        await checkpoint()
        return len(self._state.audits)

    async def list_devices(self) -> list[DeviceRecord]:
        await checkpoint()
        return copy.deepcopy(sorted(self._state.devices.values(), key=lambda d: d.id))

    async def list_gates(self) -> list[GateRecord]:
        await checkpoint()
        return copy.deepcopy(sorted(self._state.gates.values(), key=lambda g: g.target))

    async def count_jobs(self) -> Mapping[tuple[JobStatus, str], int]:
        await checkpoint()
        return dict(Counter((j.status, j.platform) for j in self._state.jobs.values()))

    async def count_commits_since(self, platform: str, account: str, since: float) -> int:
        """Runs granted a commit permit that started at or after `since` (see the SQL query)."""
        await checkpoint()
        jobs = self._state.jobs
        return sum(
            1
            for r in self._state.runs.values()
            if r.committed
            and r.started_at >= since
            and jobs[r.job_id].platform == platform
            and jobs[r.job_id].account == account
        )

    async def list_operator_tokens(self) -> list[OperatorToken]:
        await checkpoint()
        return sorted(self._state.operator_tokens.values(), key=lambda t: (t.created_at, t.id))

    async def list_enrollments(self) -> list[DeviceEnrollment]:
        await checkpoint()
        return sorted(self._state.enrollments.values(), key=lambda e: e.name)


def _check_parent(parents: Mapping[str, object], parent_id: str, what: str) -> None:
    # Mirrors SQLite's foreign keys (which the SQLite store reports as StoreError).
    if parent_id not in parents:
        raise StoreError(f"{what} refers to {parent_id!r}, which does not exist")


def _delete_post(st: _State, post_id: str) -> None:
    """The post, its jobs and their runs, logs and screenshots (as the SQL store's deletes)."""
    st.posts.pop(post_id, None)
    for job in [j for j in st.jobs.values() if j.post_id == post_id]:
        del st.jobs[job.id]
        st.job_ids_by_key.pop(job.idempotency_key, None)
        for run_id in [r.id for r in st.runs.values() if r.job_id == job.id]:
            del st.runs[run_id]
            st.logs.pop(run_id, None)
            st.screenshots.pop(run_id, None)
