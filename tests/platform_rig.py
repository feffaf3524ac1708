"""End-to-end rig for the real platform adapters: a coordinator process and worker processes that
publish to real accounts (an accounts file, credentials from env), plus the checks every
platform's tests share.

    rig = PlatformRig(tmp_path)
    rig.start(accounts=[Account("mastodon", "acme", base_url, {"access_token": TOKEN})])
    post_id = rig.publish("hello", ["mastodon:acme"])
    job = rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)
    rig.gate("mastodon", "acme")            # the (platform, account) rate-limit gate

Credentials are always passed the way users pass them: `env:NAME` references in the TOML, the
values in the worker's environment. `CANARY` is a credential value the canary tests grep for.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from polling import wait_until

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.accountsfile import AccountEntry, render_accounts
from postroom_cli.client import PublishingClient
from postroom_cli.cluster import Child, ClusterConfig, LocalCluster

# The tests' name for an account entry.
Account = AccountEntry

# Put into credential fields by the canary tests; must never appear in anything captured.
CANARY = "canary-5ecret-7f3a9c1e-do-not-leak"
TERMINAL = frozenset(
    {
        pb.JOB_STATUS_SUCCEEDED,
        pb.JOB_STATUS_FAILED,
        pb.JOB_STATUS_NEEDS_LOGIN,
        pb.JOB_STATUS_CANCELLED,
    }
)


class PlatformRig:
    """Coordinator + workers as separate processes; no sandbox."""

    def __init__(self, workdir: Path, config: ClusterConfig | None = None) -> None:
        self.workdir = workdir
        self.cluster = LocalCluster(
            workdir,
            config
            or ClusterConfig(
                heartbeat_interval_s=1.0,
                lease_ttl_s=3.0,
                retry_initial_s=0.3,
                coordinator_args=("--retry-max", "1"),
            ),
        )
        self.client: PublishingClient | None = None
        self.media_dir = workdir / "media"
        self.media_dir.mkdir(parents=True, exist_ok=True)
        self._accounts_file = workdir / "accounts.toml"
        self._env: dict[str, str] = {}

    # ---- processes -----------------------------------------------------------------------

    def start(
        self,
        accounts: Sequence[Account],
        *,
        workers: Sequence[str] = ("w1",),
        worker_args: Sequence[str] = (),
    ) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        text, self._env = render_accounts(accounts, env_prefix="POSTROOM_TEST")
        self._accounts_file.write_text(text)
        self.cluster.start_coordinator()
        self.client = self.cluster.client()
        for device in workers:
            self.start_worker(device, worker_args=worker_args)
        self.cluster.wait_online(workers)

    def start_worker(self, device: str, *, worker_args: Sequence[str] = ()) -> Child:
        return self.cluster.start_worker(
            device,
            platforms=(),
            accounts=self._accounts_file,
            media_dirs=(self.media_dir,),
            env=self._env,
            extra=worker_args,
        )

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.cluster.stop_all()
        self.cluster.kill_all()

    def __enter__(self) -> PlatformRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def api(self) -> PublishingClient:
        assert self.client is not None, "start() first"
        return self.client

    # ---- posts and jobs ------------------------------------------------------------------

    def publish(
        self, text: str, targets: Sequence[str], *, media: Sequence[str] = (), max_attempts: int = 0
    ) -> str:
        return self.cluster.publish(
            self.api, text, targets, media=list(media), max_attempts=max_attempts
        )

    def jobs(self, post_id: str) -> list[pb.Job]:
        post = self.api.get_post(post_id)
        return [self.api.get_job(t.job_id) for t in post.target_states]

    def job(self, post_id: str) -> pb.Job:
        (job,) = self.jobs(post_id)
        return job

    def wait_job(
        self, post_id: str, what: str, probe: Callable[[pb.Job], bool], timeout_s: float = 30.0
    ) -> pb.Job:
        def check() -> pb.Job | None:
            job = self.job(post_id)
            return job if probe(job) else None

        return wait_until(what, check, timeout_s)

    def wait_status(
        self, post_id: str, status: pb.JobStatus.ValueType, timeout_s: float = 30.0
    ) -> pb.Job:
        """Wait until the post's one job is in `status`; fail at once on another terminal one."""

        def check() -> pb.Job | None:
            job = self.job(post_id)
            if job.status == status:
                return job
            if job.status in TERMINAL:
                raise AssertionError(
                    f"job ended {pb.JobStatus.Name(job.status)}, not {pb.JobStatus.Name(status)}: "
                    f"{job.last_error}\n{self.step_logs(job)}"
                )
            return None

        return wait_until(f"job {pb.JobStatus.Name(status)}", check, timeout_s)

    @staticmethod
    def step_logs(job: pb.Job) -> str:
        return "\n".join(
            f"#{run.attempt} {line.step}: {line.message}" for run in job.runs for line in run.logs
        )

    def gate(self, platform: str, account: str) -> pb.RateLimitGate:
        for gate in self.api.list_rate_limits(closed_only=False).gates:
            if (gate.target.platform, gate.target.account) == (platform, account):
                return gate
        raise AssertionError(f"no gate for {platform}:{account}")

    def closed_gate(self, platform: str, account: str) -> pb.RateLimitGate | None:
        """The account's gate while it is closed, else None (a probe for wait_until)."""
        gate = self.gate(platform, account)
        return gate if gate.closed else None

    def success_details(self, job: pb.Job) -> dict[str, Any]:
        """The details of the job's JOB_SUCCEEDED audit entry (found_existing, post id, ...)."""
        for event in self.audit():
            if event["action"] == "JOB_SUCCEEDED" and event["subject"] == job.id:
                details: dict[str, Any] = json.loads(event["details"])
                return details
        raise AssertionError(f"no JOB_SUCCEEDED for {job.id}")

    def audit(self) -> list[dict[str, Any]]:
        events = self.api.list_audit_events(pub.ListAuditEventsRequest(page_size=1000)).events
        return [
            {"action": e.action, "subject": e.subject_id, "details": e.details_json} for e in events
        ]

    # ---- the never-twice scenario every platform runs -------------------------------------

    def kill_after_permit_then_reconcile(
        self,
        post_id: str,
        *,
        platform_has_post: Callable[[], bool],
        device: str = "w1",
        rescuer: str = "w2",
        timeout_s: float = 30.0,
    ) -> pb.Job:
        """The worker's create call reached the platform (the test's proxy holds the answer);
        SIGKILL the worker, start another, and wait for the job to succeed by reconciliation.
        Returns the SUCCEEDED job; the caller counts the posts on the platform."""
        wait_until("the post to exist on the platform", platform_has_post, timeout_s)
        self.cluster.workers[device].kill()
        self.start_worker(rescuer)
        job = self.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED, timeout_s)
        # The job's verify_first is cleared by the success; the rescuer's run shows it looked.
        rescue = job.runs[-1]
        assert rescue.device_id == rescuer and any(line.step == "verify" for line in rescue.logs), (
            f"the retry after a lost permit must look before posting:\n{self.step_logs(job)}"
        )
        return job

    def captured_output(self) -> str:
        """Everything the processes printed and everything the coordinator knows about jobs,
        posts and the audit trail: where a credential must never appear."""
        parts = [p.read_text(errors="replace") for p in self.workdir.glob("*.log")]
        posts = self.api.list_posts(pub.ListPostsRequest(page_size=1000)).posts
        for post in posts:
            parts.append(str(post))
            for state in post.target_states:
                parts.append(str(self.api.get_job(state.job_id)))
        parts += [json.dumps(e) for e in self.audit()]
        parts.append(str(self.api.list_devices()))
        return "\n".join(parts)


@contextlib.contextmanager
def running_rig(workdir: Path, accounts: Sequence[Account], **start: Any) -> Iterator[PlatformRig]:
    rig = PlatformRig(workdir)
    try:
        rig.start(accounts, **start)
        yield rig
    finally:
        rig.stop()


def wait_seconds_until(instant: float) -> float:
    return max(0.0, instant - time.time())
